"""How labkit shows results: masked secrets, and "what I did + the command" records."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

MASK = "••••••••"


def mask(value: Any, reveal: bool = False) -> str:
    """Hide a secret value; show its length only. ``reveal=True`` shows it."""
    s = "" if value is None else str(value)
    if reveal:
        return s
    return f"{MASK} ({len(s)} chars)" if s else "(empty)"


def mask_mapping(data: dict[str, Any], reveal: bool = False, keep: tuple[str, ...] = ()) -> dict[str, str]:
    """Mask every value of ``data`` except the keys in ``keep``."""
    return {k: (str(v) if k in keep else mask(v, reveal)) for k, v in data.items()}


@dataclass
class Done:
    """What a labkit step did, and the CLI command that does the same."""

    what: str
    command: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"✔ {self.what}"]
        for k, v in self.details.items():
            lines.append(f"    {k}: {v}")
        if self.command:
            lines += [f"  $ {line}" for line in self.command.splitlines()]
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        det = "".join(f"<div style='margin-left:1.2em'>{html.escape(str(k))}: <code>{html.escape(str(v))}</code></div>"
                      for k, v in self.details.items())
        cmd = (f"<pre style='margin:2px 0 0 1.2em;padding:4px 6px;background:#f4f4f4;border-left:3px solid #1563ff'>"
               f"$ {html.escape(self.command)}</pre>") if self.command else ""
        return f"<div><span style='color:#2e7d32'>✔</span> {html.escape(self.what)}{det}{cmd}</div>"


@dataclass
class Steps:
    """Several :class:`Done` records shown together."""

    items: list[Done]

    def __str__(self) -> str:
        return "\n".join(str(i) for i in self.items)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return "".join(i._repr_html_() for i in self.items)


@dataclass
class Check:
    """The result of a "check your work" cell."""

    title: str
    results: list[tuple[str, bool, str]]  # (what was checked, passed, hint when failed)

    @property
    def passed(self) -> bool:
        return all(ok for _, ok, _ in self.results)

    def require(self) -> Check:
        """Return self when every item passed; otherwise raise CheckFailed with the hints."""
        if not self.passed:
            from .errors import CheckFailed

            raise CheckFailed(str(self), ["Follow the hint next to each unchecked item.",
                                          "Re-run the cells above this check, in order.",
                                          "Or reset this stage: `labkit stage N` for this notebook's number N."])
        return self

    def __str__(self) -> str:
        lines = [f"{'PASS' if self.passed else 'FAIL'}: {self.title}"]
        for what, ok, hint in self.results:
            lines.append(f"  [{'x' if ok else ' '}] {what}")
            if not ok and hint:
                lines.append(f"      hint: {hint}")
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        color = "#2e7d32" if self.passed else "#c62828"
        rows = "".join(
            f"<li>{'✅' if ok else '❌'} {html.escape(w)}"
            + ("" if ok or not h else f"<br><small><b>hint:</b> {html.escape(h)}</small>") + "</li>"
            for w, ok, h in self.results
        )
        return (f"<div style='border:2px solid {color};padding:6px;border-radius:4px'><b style='color:{color}'>"
                f"{'PASS' if self.passed else 'FAIL'}: {html.escape(self.title)}</b><ul style='margin:4px 0'>{rows}</ul></div>")
