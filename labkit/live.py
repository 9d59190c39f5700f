"""Live widgets: a Secret, a lease, the whole sync pipeline and a timeline, updating in JupyterLab.

Each view polls in one daemon thread for a bounded time: ``view.run(seconds)`` returns at once and
returns the view (so ``SecretView(lab).run(60)`` as a cell's last line shows it), ``stop()`` ends it
early, ``join()`` waits for it. The thread only sets widget values; it never prints. What a view
shows comes from a pure model in :mod:`labkit._livemodel`. Secret values stay masked unless the
learner clicks Reveal, which works only with ``interactive=True`` (papermill runs never reveal).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import requests

from . import k8s, pg, vso
from ._certview import CertView  # notebook 08's view, in a module of its own
from ._livebase import COLORS, LH, VSO_KINDS, _light, _Live, e
from ._livemodel import (
    FAIL,
    LANES,
    OK,
    UNKNOWN,
    LeaseModel,
    PipelineModel,
    PipelineObservation,
    SecretModel,
    StaticCredsModel,
    TimelineModel,
    ago,
    parse_time,
)
from .backends.contract import Lab

if TYPE_CHECKING:
    from ._livemodel import Link

__all__ = ["CertView", "LeaseView", "PipelineView", "SecretView", "Timeline"]


class SecretView(_Live):
    """A Kubernetes Secret watched live: keys, masked values, resourceVersion, last change, its VSO owner's conditions."""

    css, max_width = "vsolab-secretview", "900px"

    def __init__(self, lab: Lab, name: str | None = None, namespace: str | None = None, *, owner: tuple[str, str] | None = None,
                 interactive: bool = False, interval: float = 1.0, highlight_seconds: float = 5.0, refresh: bool = True) -> None:
        self.name, self.namespace = name or lab.names.dynamic_secret, namespace or lab.names.dynamic_ns
        self.owner_ref, self.revealed = owner, False
        self.model = SecretModel(highlight_seconds=highlight_seconds)
        self.reveal_button = widgets.ToggleButton(
            description="Reveal", icon="eye", disabled=not interactive,
            tooltip="show the values" if interactive else "reveal is off: this run is not interactive (INTERACTIVE=False)")
        self.reveal_button.add_class("vsolab-reveal")
        self.reveal_button.observe(self._on_reveal, names="value")
        self.view = widgets.HTML()
        super().__init__(lab, [self.view, self.reveal_button], interval=interval, interactive=interactive, refresh=refresh)

    def _secrets(self) -> list[str]:
        return list(self.model._values.values())

    def _on_reveal(self, change: dict) -> None:
        with self._lock:
            self.revealed = bool(change["new"]) and self.interactive
            self.reveal_button.description = "Hide" if self.revealed else "Reveal"
            self._draw(self.model.state(time.time(), self.revealed))

    def observe(self) -> tuple[dict | None, dict | None]:
        secret = k8s.get(self.lab.kube, "v1", "Secret", self.name, self.namespace)
        ref = self.owner_ref
        if ref is None:
            refs = [o for o in ((secret or {}).get("metadata") or {}).get("ownerReferences") or [] if o.get("kind") in VSO_KINDS]
            ref = (refs[0]["kind"], refs[0]["name"]) if refs else None
        return secret, (vso.get(self.lab, ref[0], ref[1], self.namespace) if ref else None)

    def apply(self, now: float, observed: tuple[dict | None, dict | None]) -> None:
        self._draw(self.model.update(now, observed[0], observed[1], reveal=self.revealed))

    def _draw(self, st: Any) -> None:
        title = f"<b>Secret {e(self.namespace)}/{e(self.name)}</b>"
        head = (f"{title} · resourceVersion <code>{e(st.resource_version)}</code> · last change "
                f"{ago(None if st.last_change is None else time.time() - st.last_change)} · changes seen: {st.changes}"
                if st.exists else f"{title}: does not exist (yet)")
        rows = "".join(f"<tr class='vsolab-row{' vsolab-changed' if ch else ''}' style='background:{'#fff59d' if ch else 'none'}'>"
                       f"<td><code>{e(k)}</code></td><td class='vsolab-value' data-key='{e(k)}'><code>"
                       f"{e(v if len(v) < 200 else v[:200] + '…')}</code></td></tr>" for k, v, ch in st.rows)
        conds = " ".join(_light(OK if s == "True" else FAIL if s == "False" else UNKNOWN, short, cond=short, status=s)
                         for short, (s, _) in st.owner_conditions.items())
        owner = f"owned by {e(st.owner)}: {conds}" if st.owner else "no VSO owner found"
        self.view.value = (f"<div class='vsolab-secret' data-rv='{e(st.resource_version)}' data-changes='{st.changes}' "
                           f"data-revealed='{int(self.revealed)}' {LH}>{head}<table style='margin:4px 0'>{rows}</table>{owner}</div>")


class LeaseView(_Live):
    """The Vault lease behind a VaultDynamicSecret: TTL counting down, next renewal, ``max_ttl`` horizon, renewals, rotations.

    With ``allowStaticCreds`` (a database static role) there is no lease: the view shows Vault's last rotation, the
    time left until the next one, when VSO reads again, and each rotation VSO picked up (:class:`StaticCredsModel`).
    """

    css, max_width = "vsolab-leaseview", "900px"

    def __init__(self, lab: Lab, name: str | None = None, namespace: str | None = None, *, max_ttl: float | None = None,
                 interval: float = 1.0, refresh: bool = True) -> None:
        self.name, self.namespace = name or lab.names.dynamic_vds, namespace or lab.names.dynamic_ns
        self.model, self._max_ttl_known = LeaseModel(max_ttl=max_ttl), max_ttl is not None
        self._lookups: dict[str, tuple[float | None, float | None]] = {}
        self.static = StaticCredsModel()
        self._stop_after_rotations: int | None = None
        self.bar = widgets.FloatProgress(value=0, min=0, max=1, description="TTL", layout=widgets.Layout(width="440px"))
        self.view = widgets.HTML()
        super().__init__(lab, [self.bar, self.view], interval=interval, refresh=refresh)

    def _role(self, mount: str, role: str) -> dict:
        """GET /:mount/roles/:role (the database role: default_ttl, max_ttl)."""
        return (self._vault().read(f"{mount}/roles/{role}") or {}).get("data") or {}

    def _lookup(self, lease_id: str) -> tuple[float | None, float | None]:
        """PUT /sys/leases/lookup: when Vault issued the lease (the max_ttl horizon counts from it) and last renewed it
        (a renewal before the widget saw the lease counts, as in ``rotation.observe``)."""
        data = self._vault().sys.read_lease(lease_id)["data"]
        return parse_time(data.get("issue_time")), parse_time(data.get("last_renewal"))

    def observe(self) -> tuple[dict | None, tuple[float | None, float | None]]:
        vds = vso.get(self.lab, "VaultDynamicSecret", self.name, self.namespace)
        spec = (vds or {}).get("spec") or {}
        if not self._max_ttl_known and str(spec.get("path", "")).startswith("creds/"):
            self.model.max_ttl = float(self._role(spec["mount"], spec["path"].split("/", 1)[1]).get("max_ttl") or 0) or None
            self._max_ttl_known = True
        lease_id = str((((vds or {}).get("status") or {}).get("secretLease") or {}).get("id") or "")
        if lease_id and lease_id not in self._lookups:
            try:
                self._lookups = {lease_id: self._lookup(lease_id)}
            except Exception:  # without it the horizon counts from when the lease was first seen
                self._lookups = {lease_id: (None, None)}
        return vds, self._lookups.get(lease_id, (None, None))

    def run_until_rotation(self, seconds: float) -> LeaseView:
        """Poll until a rotation of static credentials is seen, or for ``seconds`` at most; returns at once."""
        with self._lock:
            self._stop_after_rotations = len(self.static.rotations) + 1
        self.run(seconds)
        return self

    def _apply_static(self, now: float, vds: dict) -> None:
        st = self.static.update(now, vds)
        if self._stop_after_rotations is not None and len(st.rotations) >= self._stop_after_rotations:
            self._stop_after_rotations = None
            self.stop()
        self.bar.max = max(st.period, 1.0)
        self.bar.value = min(st.ttl, self.bar.max)
        self.bar.bar_style = "warning" if st.ttl <= 0 else "success"
        self.bar.description = f"next {st.ttl:.0f}s"
        clock = lambda t: time.strftime("%H:%M:%S", time.localtime(t)) if t else "not yet"
        read = ("VSO has not synced yet" if st.next_read_in is None
                else f"VSO reads again in {st.next_read_in:.1f}s (ttl + 0.5 s after its last sync)" if st.next_read_in > 0
                else f"VSO's read is due: it retries up to 10 s until Vault has rotated ({-st.next_read_in:.1f}s so far)")
        marks = " ".join(f"<span class='vsolab-rotation'>↻ {clock(t)}</span>" for t in st.rotations[-5:])
        self.view.value = (
            f"<div class='vsolab-lease vsolab-static' data-ttl='{st.ttl:.2f}' data-rotations='{len(st.rotations)}' "
            f"data-last-rotation='{int(st.last_rotation or 0)}' {LH}><b>VaultDynamicSecret {e(self.namespace)}/{e(self.name)}</b>"
            f" · static credentials, no lease<br>Vault's last rotation <b>{clock(st.last_rotation)}</b> · next in "
            f"<b class='vsolab-ttl'>{st.ttl:.1f}s</b> of a {st.period:.0f}s rotation_period · {read}"
            f"<br>rotations VSO picked up: {len(st.rotations)} {marks}</div>")

    def apply(self, now: float, observed: tuple[dict | None, tuple[float | None, float | None]]) -> None:
        vds, (issued, renewed) = observed
        if vds and (vds.get("spec") or {}).get("allowStaticCreds"):
            self._apply_static(now, vds)
            return
        st = self.model.update(now, vds, issued_at=issued, vault_renewed_at=renewed)
        end = st.renewal_window_end_in
        opened = st.next_renewal_in is not None and st.next_renewal_in <= 0
        over = end is not None and end < 0
        self.bar.max = max(st.duration, 1.0)
        self.bar.value = min(st.ttl, self.bar.max)
        self.bar.bar_style = "danger" if st.fraction < 0.1 else "warning" if over else "success"
        self.bar.description = f"TTL {st.ttl:.0f}s"
        span = f"{st.renewal_percent}–{min(st.renewal_percent + 10, 100)}% of {st.duration:.0f}s, VSO's jitter"
        nxt = ("no lease yet" if st.next_renewal_in is None or end is None
               else f"renewal overdue by {-end:.1f}s ({span})" if over
               else f"renewal window open: VSO renews within {end:.1f}s ({span})" if opened
               else f"next renewal in {st.next_renewal_in:.1f}–{end:.1f}s ({span})")
        hz = "max_ttl unknown" if st.horizon_in is None else f"max_ttl ends this lease in {max(0.0, st.horizon_in):.1f}s"
        marks = " ".join(f"<span class='vsolab-rotation'>↻ {time.strftime('%H:%M:%S', time.localtime(t))}</span>"
                         for t in st.rotations[-5:])
        self.view.value = (
            f"<div class='vsolab-lease' data-ttl='{st.ttl:.2f}' data-lease='{e(st.short_id)}' data-renewals='{st.total_renewals}' "
            f"data-rotations='{len(st.rotations)}' {LH}><b>VaultDynamicSecret {e(self.namespace)}/{e(self.name)}</b> · lease "
            f"<code>{e(st.short_id)}</code><br><b class='vsolab-ttl'>{st.ttl:.1f}s</b> of {st.duration:.0f}s left · {nxt} · {hz}"
            f"<br>renewals: {st.renewals} of this lease, {st.total_renewals} in all · new credentials: {len(st.rotations)} {marks}</div>")


class _Chain(_Live):
    """A VSO resource, its Secret and the Deployment it restarts: what the pipeline and the timeline read."""

    def __init__(self, lab: Lab, children: list[widgets.Widget], kind: str, name: str | None, namespace: str | None,
                 deployment: str | None, **kw: Any) -> None:
        static = kind == "VaultStaticSecret"
        self.kind, self.deployment = kind, deployment
        self.name = name or (lab.names.static_vss if static else lab.names.dynamic_vds)
        self.namespace = namespace or (lab.names.static_ns if static else lab.names.dynamic_ns)
        super().__init__(lab, children, **kw)

    def _read(self) -> tuple[dict | None, dict | None, str, list[dict], int]:
        res = vso.get(self.lab, self.kind, self.name, self.namespace)
        spec = (res or {}).get("spec") or {}
        secret_name = (spec.get("destination") or {}).get("name") or ""
        secret = k8s.get(self.lab.kube, "v1", "Secret", secret_name, self.namespace) if secret_name else None
        targets = [t["name"] for t in spec.get("rolloutRestartTargets") or [] if t.get("kind") == "Deployment"]
        dep_name = self.deployment or (targets[0] if targets else self.lab.names.app)
        dep = k8s.get(self.lab.kube, "apps/v1", "Deployment", dep_name, self.namespace) or {}
        labels = ((dep.get("spec") or {}).get("selector") or {}).get("matchLabels") or {"app": dep_name}
        pods = [self.lab.kube.sanitize_for_serialization(p) for p in
                k8s.pods(self.lab.kube, self.namespace, ",".join(f"{k}={v}" for k, v in labels.items()))] if dep else []
        return res, secret, dep_name, pods, int((dep.get("spec") or {}).get("replicas") or 1)


class PipelineView(_Chain):
    """Vault path → VSO resource → Kubernetes Secret → Deployment pods → app endpoint, with a status light on each link."""

    css = "vsolab-pipelineview"

    def __init__(self, lab: Lab, kind: str = "VaultDynamicSecret", name: str | None = None, namespace: str | None = None, *,
                 deployment: str | None = None, app_path: str = "/status", interval: float = 2.0, refresh: bool = True) -> None:
        self.app_path, self.model = app_path, PipelineModel()
        self.links: tuple[Link, ...] = ()
        self.view = widgets.HTML()
        super().__init__(lab, [self.view], kind, name, namespace, deployment, interval=interval, refresh=refresh)

    def _secrets(self) -> list[str]:
        return list(self.model.secret._values.values())

    def _vault_path(self, spec: dict) -> tuple[str, bool | None, str]:
        """Probe the Vault side without reading a secret: the database role, or the KV v2 metadata."""
        mount, path = str(spec.get("mount", "")), str(spec.get("path", ""))
        if self.kind == "VaultDynamicSecret" and path.startswith("creds/"):
            probe, what = f"{mount}/roles/{path.split('/', 1)[1]}", "the database role exists"
        elif self.kind == "VaultStaticSecret" and spec.get("type", "kv-v2") == "kv-v2":
            probe, what = f"{mount}/metadata/{path}", "the KV v2 secret exists (metadata read, not the values)"
        else:
            return f"{mount}/{path}", None, "not probed"
        ok = self._vault().read(probe) is not None
        return f"{mount}/{path}", ok, what if ok else f"{probe} not found"

    def observe(self) -> PipelineObservation:
        res, secret, dep, pods, replicas = self._read()
        vpath, vok, vdetail = self._vault_path((res or {}).get("spec") or {}) if res else ("?", None, "no VSO resource")
        app, err = None, ""
        try:
            r = requests.get(self.lab.app_url(self.namespace, dep) + self.app_path, timeout=4)
            app = (r.status_code, r.json() if "json" in r.headers.get("content-type", "") else {})
        except Exception as exc:  # an app that does not answer is a red light
            err = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"[:200]
        return PipelineObservation(vpath, vok, res, secret, pods, replicas, app, err, vdetail, dep, self.app_path)

    def apply(self, now: float, observed: PipelineObservation) -> None:
        self.links = self.model.update(now, observed)
        cards = "<span style='font-size:1.4em;color:#777'>→</span>".join(
            f"<div class='vsolab-link' data-link='{ln.name}' data-light='{ln.light}' style='border:2px solid {COLORS[ln.light]};"
            f"border-radius:6px;padding:4px 6px;flex:1;font-size:0.85em'>{_light(ln.light, ln.title, link=ln.name)}"
            f"<div style='color:#555'>{e(ln.detail)}</div></div>" for ln in self.links)
        ok = sum(1 for ln in self.links if ln.light == OK)
        self.view.value = (f"<div class='vsolab-pipeline' data-ok='{ok}' data-links='{len(self.links)}' {LH}><b>sync pipeline</b> "
                           f"({ok}/{len(self.links)} green)<div style='display:flex;align-items:stretch;gap:4px'>{cards}</div></div>")


class Timeline(_Chain):
    """A plotly chart that fills in while it runs: PostgreSQL roles created and dropped, renewals, Secret changes, pod restarts."""

    css = "vsolab-timeline"
    SYMBOLS = ("triangle-up", "triangle-down", "circle", "star", "diamond", "square", "x", "cross")

    def __init__(self, lab: Lab, kind: str = "VaultDynamicSecret", name: str | None = None, namespace: str | None = None, *,
                 deployment: str | None = None, interval: float = 2.0, refresh: bool = True) -> None:
        self.model = TimelineModel()
        # plotly's FigureWidget needs anywidget; an Output widget with plotly's mimetype needs only jupyterlab-plotly.
        self.out, self.caption = widgets.Output(layout=widgets.Layout(min_height="320px")), widgets.HTML()
        super().__init__(lab, [self.out, self.caption], kind, name, namespace, deployment, interval=interval, refresh=refresh)

    def observe(self) -> dict[str, Any]:
        res, secret, _, pods, _ = self._read()
        dynamic = self.kind == "VaultDynamicSecret"
        return {"roles": [r["role"] for r in pg.lab_roles(self.lab)] if dynamic else None, "vds": res if dynamic else None,
                "secret": secret, "pods": pods}

    def apply(self, now: float, observed: dict[str, Any]) -> None:
        self.model.update(now, **observed)
        fig = json.loads(self.figure(now).to_json())
        # Output.outputs is a synced trait: setting it from a thread is safe, unlike print() or display().
        self.out.outputs = ({"output_type": "display_data", "metadata": {}, "data": {
            "application/vnd.plotly.v1+json": {**fig, "config": {"displaylogo": False}},
            "text/plain": f"<Timeline: {len(self.model.events)} events>"}},)
        counts = {lane: sum(1 for _, ln, _ in self.model.events if ln == lane) for lane in LANES}
        self.caption.value = (f"<small class='vsolab-events' data-events='{len(self.model.events)}' "
                              f"data-rotations='{counts['new credentials']}'>"
                              + " · ".join(f"{e(k)}: {v}" for k, v in counts.items()) + "</small>")

    def figure(self, now: float | None = None) -> Any:
        """The timeline as a plotly Figure; x is seconds since the timeline started."""
        import plotly.graph_objects as go

        now = now or time.time()
        start = self.model.start or now
        fig = go.Figure()
        for i, lane in enumerate(LANES):
            pts = [(round(t - start, 1), label) for t, ln, label in self.model.events if ln == lane]
            xs: list[float | None] = [x for x, _ in pts] or [None]
            fig.add_trace(go.Scatter(x=xs, y=[lane] * max(1, len(pts)), mode="markers", name=lane,
                                     text=[label for _, label in pts], hovertemplate="%{y}: %{text} at %{x}s<extra></extra>",
                                     marker={"symbol": self.SYMBOLS[i % len(self.SYMBOLS)], "size": 11}))
        fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 30, "b": 30}, showlegend=False,
                          title={"text": f"{self.namespace}: credentials, leases, Secret and pods over time", "font": {"size": 13}},
                          xaxis={"title": {"text": "seconds since the timeline started"}, "range": [0, max(10.0, now - start + 1)]},
                          yaxis={"type": "category", "categoryorder": "array", "categoryarray": list(reversed(LANES))})
        return fig
