"""Driving JupyterLab in headless Chromium: shared by the widget test and the main-command test."""

from __future__ import annotations

from typing import Any

import pytest


def run_all(page: Any) -> None:
    """Run > Run All Cells, again if the first click went nowhere (the kernel was not attached yet)."""
    for _ in range(3):
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        try:
            page.wait_for_function("() => [...document.querySelectorAll('.jp-InputArea-prompt')]"
                                   ".some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))", timeout=20_000)
            return
        except Exception:  # noqa: BLE001 - nothing started: click again
            page.keyboard.press("Escape")
    pytest.fail("Run All Cells never started the notebook's cells")
