"""The live view of notebook 08: a TLS Secret's certificate (:class:`CertView`, exported by :mod:`labkit.live`)."""

from __future__ import annotations

import time
from typing import Any

import ipywidgets as widgets
import requests

from . import k8s, vso
from ._livebase import LH, VSO_KINDS, _Live, e
from .backends.contract import Lab


class CertView(_Live):
    """A TLS Secret's certificate, live: serial, notAfter, time left, VSO's next renewal, rotations, and the serial the
    app started with. With ``until_rotation`` it stops by itself once it saw a rotation and the app runs the new one."""

    css, max_width = "vsolab-certview", "900px"

    def __init__(self, lab: Lab, name: str | None = None, namespace: str | None = None, *, deployment: str | None = None,
                 until_rotation: bool = True, interval: float = 1.0, refresh: bool = True) -> None:
        from ._certmodel import CertModel

        self.name, self.namespace = name or lab.names.pki_secret, namespace or lab.names.pki_ns
        self.deployment, self.until_rotation, self.model = deployment or lab.names.app, until_rotation, CertModel()
        self.bar = widgets.FloatProgress(value=0, min=0, max=1, description="left", layout=widgets.Layout(width="440px"))
        self.view = widgets.HTML()
        super().__init__(lab, [self.bar, self.view], interval=interval, refresh=refresh)

    def observe(self) -> tuple[Any, tuple[float, float] | None, str | None]:
        from ._certmodel import parse_pem, pki_renewal, vds_renewal
        from ._duration import duration_seconds
        from ._livemodel import decode_data

        secret = k8s.get(self.lab.kube, "v1", "Secret", self.name, self.namespace)
        cert = parse_pem(decode_data(secret).get("tls.crt", "")) if secret else None
        refs = [o for o in ((secret or {}).get("metadata") or {}).get("ownerReferences") or [] if o.get("kind") in VSO_KINDS]
        owner = vso.get(self.lab, refs[0]["kind"], refs[0]["name"], self.namespace) if refs else None
        spec, status = (owner or {}).get("spec") or {}, (owner or {}).get("status") or {}
        renewal = None
        if owner and owner.get("kind") == "VaultDynamicSecret" and spec.get("refreshAfter") and status.get("lastRenewalTime"):
            renewal = vds_renewal(float(status["lastRenewalTime"]), duration_seconds(spec["refreshAfter"]),
                                  int(spec.get("renewalPercent") or 67))
        elif owner and owner.get("kind") == "VaultPKISecret" and status.get("expiration"):
            renewal = pki_renewal(float(status["expiration"]), duration_seconds(spec.get("expiryOffset") or "0s"))
        try:
            r = requests.get(self.lab.app_url(self.namespace, self.deployment) + "/cert", timeout=3)
            app = str(r.json().get("serial_number") or "") if r.status_code == 200 else ""
        except Exception:  # the app between two pods: keep the last answer
            app = None
        return cert, renewal, app

    def apply(self, now: float, observed: tuple[Any, tuple[float, float] | None, str | None]) -> None:
        from ._certmodel import short_serial

        st = self.model.update(now, *observed)
        self.bar.max = max(st.lifetime, 1.0)
        self.bar.value = min(st.left, self.bar.max)
        self.bar.bar_style = "danger" if st.left < 0.1 * st.lifetime else "success"
        self.bar.description = f"left {st.left:.0f}s"
        c = st.cert
        if st.renew_in is None:
            nxt = "next renewal: unknown"
        elif st.renew_in[1] < 0:
            nxt = f"renewal overdue by {-st.renew_in[1]:.1f}s"
        else:
            nxt = f"VSO renews in {max(0.0, st.renew_in[0]):.1f}–{st.renew_in[1]:.1f}s"
        at = (lambda t: time.strftime("%H:%M:%S", time.localtime(t)))
        rows = "".join(f"<li class='vsolab-rotation' data-early='{r.early_by:.1f}'>↻ {at(r.time)}: <code>{e(r.old.short)}</code> → "
                       f"<code>{e(r.new.short)}</code>, {abs(r.early_by):.1f}s {'before' if r.early_by >= 0 else 'after'} "
                       f"the old one expired</li>" for r in st.rotations[-5:])
        app = (f"the app started with <code>{e(short_serial(st.app_serial))}</code>"
               + (" (the current one)" if st.app_on_current else " (not the current one)") if st.app_serial else "the app: no answer yet")
        head = (f"serial <code>{e(c.short)}</code> · notAfter {at(c.not_after)} · <b class='vsolab-left'>{st.left:.1f}s</b> "
                f"of {st.lifetime:.0f}s left · {nxt}" if c else "no certificate in the Secret (yet)")
        self.view.value = (f"<div class='vsolab-cert' data-serial='{e(c.serial if c else '')}' data-rotations='{len(st.rotations)}' "
                           f"data-app-current='{int(st.app_on_current)}' {LH}><b>Secret {e(self.namespace)}/{e(self.name)}</b> · "
                           f"{head}<br>{app} · rotations seen: {len(st.rotations)}<ul style='margin:2px 0'>{rows}</ul></div>")
        if self.until_rotation and st.done:
            self.stop()
