"""The one error family of labkit.

Every error a learner can meet says what was checked and how to fix it, in a
short paragraph, so a notebook cell or the CLI can show it without a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence


class LabkitError(Exception):
    """Root of every error labkit raises on purpose."""

    __test__ = False  # keep pytest from collecting it

    def __init__(self, checked: str, fixes: Sequence[str] = (), *, detail: str = "") -> None:
        self.checked = checked
        self.fixes = list(fixes)
        self.detail = detail
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = [self.checked]
        if self.detail:
            lines.append(self.detail)
        if self.fixes:
            lines.append("To fix it:")
            lines += [f"  {i}. {fix}" for i, fix in enumerate(self.fixes, 1)]
        return "\n".join(lines)


class MissingTool(LabkitError):
    """A program the lab needs is not installed."""


class BuildError(LabkitError):
    """Building or fetching a lab binary failed."""


class DownloadError(BuildError):
    """A release archive or checksum file could not be downloaded."""


class ChecksumMismatch(BuildError):
    """A download does not match its published checksum; it is refused."""


class PortTaken(LabkitError):
    """A port the lab wants is held by another process."""


class StateError(LabkitError):
    """The state directory is unusable: not writable, stale or damaged."""


class ComponentError(LabkitError):
    """A lab component did not start or did not become healthy."""


class NotRunning(LabkitError):
    """The lab, or a part of it, is not running."""


class VaultError(LabkitError):
    """Vault refused a request or could not be reached."""


class SyncError(LabkitError):
    """A VSO resource did not reach the state the lab waited for."""


class CheckFailed(LabkitError):
    """A "check your work" cell found the lab in the wrong state."""


class ParameterError(LabkitError):
    """A notebook parameter or CLI option has the wrong value or type."""


class UntrustedPath(StateError):
    """A path the lab would use could have been created or changed by another user."""


class LabBusy(StateError):
    """Another labkit process holds the lab's lock for longer than the wait allows."""


class LostConnection(NotRunning):
    """A lab component stopped answering in the middle of a command."""


class DiskFull(ComponentError):
    """Too little free disk space for the lab's data."""
