"""What every live view shares (:mod:`labkit.live`): the traffic lights, and ``_Live``, the box of widgets one daemon
thread redraws."""

from __future__ import annotations

import html
import threading
import time
from typing import Any

import ipywidgets as widgets

from . import vault
from ._livemodel import FAIL, OK, UNKNOWN, WARN, redact
from .backends.contract import Lab

COLORS = {OK: "#2e7d32", WARN: "#f9a825", FAIL: "#c62828", UNKNOWN: "#9e9e9e"}
LH = "style='line-height:1.55'"
VSO_KINDS = ("VaultDynamicSecret", "VaultStaticSecret", "VaultPKISecret")
e = html.escape


def _light(light: str, text: str, **data: Any) -> str:
    attrs = "".join(f" data-{k}='{e(str(v))}'" for k, v in data.items())
    return (f"<span class='vsolab-light vsolab-light-{light}' data-light='{light}'{attrs}>"
            f"<span style='color:{COLORS[light]};font-size:1.2em'>●</span> {e(text)}</span>")


class _Live:
    """A box of widgets redrawn by :meth:`refresh`, which one daemon thread calls every ``interval`` seconds."""

    css, max_width = "vsolab-live", "none"

    def __init__(self, lab: Lab, children: list[widgets.Widget], *, interval: float, interactive: bool = False,
                 refresh: bool = True) -> None:
        self.lab, self.interval, self.interactive, self.error = lab, interval, bool(interactive), ""
        self._stop, self._lock = threading.Event(), threading.RLock()
        self._thread: threading.Thread | None = None
        self._until = 0.0
        self._hvac: Any = None
        self.status = widgets.HTML()
        self.box = widgets.VBox([*children, self.status], layout=widgets.Layout(max_width=self.max_width))
        for css in ("vsolab-live", self.css):
            self.box.add_class(css)
        if refresh:
            self.refresh()

    def observe(self) -> Any:
        """Read the cluster (the only I/O)."""
        raise NotImplementedError

    def apply(self, now: float, observed: Any) -> None:
        """Update the model with what was read, and draw it."""
        raise NotImplementedError

    def _secrets(self) -> list[str]:
        return []

    def _vault(self) -> Any:
        if self._hvac is None:
            self._hvac = vault.client(self.lab)
        return self._hvac

    def refresh(self) -> None:
        """Read once and redraw: what each tick of the thread does. Errors are shown, never raised."""
        try:
            observed = self.observe()  # outside the lock: a Reveal click never waits for the cluster
            with self._lock:
                self.apply(time.time(), observed)
            self.error = ""
        except Exception as exc:  # a failed read is shown in the widget
            first = (str(exc).strip().splitlines() or [""])[0]
            self.error = redact(f"{type(exc).__name__}: {first}"[:300], self._secrets())
        with self._lock:
            self._draw_status()

    def _draw_status(self) -> None:
        left = max(0.0, self._until - time.monotonic())
        run = (f"<span style='color:{COLORS[OK]}'>●</span> live, every {self.interval:g}s, stops in {left:.0f}s" if self.running
               else "○ not polling: <code>.run(seconds)</code> watches again")
        err = f" · <span style='color:{COLORS[FAIL]}'>last read failed: {e(self.error)}</span>" if self.error else ""
        self.status.value = f"<small class='vsolab-run' data-running='{int(self.running)}'>{run}{err}</small>"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def run(self, seconds: float = 60.0) -> _Live:
        """Poll for ``seconds`` in a background daemon thread; returns at once. Calling it again extends the run."""
        self._until = time.monotonic() + max(0.0, float(seconds))
        if not self.running:
            self.join()  # a stopped thread ends within one interval
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name=f"labkit-{type(self).__name__}", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._until:
            self.refresh()
            self._stop.wait(self.interval)
        self._stop.set()
        with self._lock:
            self._draw_status()

    def stop(self) -> None:
        """Stop polling; the thread ends within one interval."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the run to end; True when it has."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not (self._thread is not None and self._thread.is_alive())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {getattr(self, 'namespace', '')}/{getattr(self, 'name', '')}>"

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        data = self.box._repr_mimebundle_(**kwargs)
        data["text/plain"] = repr(self)  # not the VBox repr, which spells out every child's value
        return data


