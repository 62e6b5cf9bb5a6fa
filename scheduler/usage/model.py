"""What a usage read returns: readings for the runtime state, plus windows only shown."""

from __future__ import annotations

import msgspec

from accounts.model import QuotaWindow


class ExtraWindow(msgspec.Struct, frozen=True, kw_only=True):
    """A window the selection rules do not use (model-specific weekly, code review...).

    Shown to operators (probe answers), never written to the runtime state: no
    rule pauses an account per model, and a Sonnet request must not be refused
    because the Opus week is used up.
    """

    name: str
    used_ratio: float
    reset_at: float | None = None
    window_s: float | None = None


class UsageReport(msgspec.Struct, frozen=True, kw_only=True):
    """One usage read: ``windows`` (5h / 7d) go to the runtime state as passive readings do."""

    windows: tuple[QuotaWindow, ...] = ()
    extra: tuple[ExtraWindow, ...] = ()
    observed_at: float
