"""The minikube backend: the tutorial's own setup, without its tunnel.

``plan.py`` is what ``up`` does, as data (pure, unit-tested without Docker); ``lab.py`` executes it
(:class:`MinikubeLab`); ``doctor.py`` checks the tools it needs.
"""

from __future__ import annotations

from .doctor import doctor_checks
from .lab import MinikubeLab
from .plan import Settings

__all__ = ["MinikubeLab", "Settings", "doctor_checks"]
