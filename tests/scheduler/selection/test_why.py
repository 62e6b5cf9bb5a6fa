"""Explain's ``why``: the real reason of every verdict, with its deadline."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from accounts.model import QuotaPolicy, QuotaWindow, Status, Window
from accounts.rules import Reason
from scheduler.selection._why import why
from scheduler.selection.store import RuntimeState
from snapshot.settings import Settings

from .selectkit import make_account

NOW = 1_800_000_000.0
IN_90 = datetime.fromtimestamp(NOW + 90, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
CFG = Settings(quota=QuotaPolicy(default_5h_threshold=0.8))

STATE = RuntimeState(
    leases=3,
    rate_limited_until=NOW + 90,
    overloaded_until=NOW + 90,
    unschedulable_until=NOW + 90,
    unschedulable_reason="upstream answered 401",
    ttft_ms=25_000,
    windows=(
        QuotaWindow(window=Window.FIVE_HOURS, used_ratio=0.95, observed_at=NOW, reset_at=NOW + 90),
    ),
)
ACCOUNT = make_account(
    "w",
    concurrency=3,
    models=("gpt-4o*",),
    status=Status.ERROR,
    error_reason="upstream answered 401",
    expires_at=datetime.fromtimestamp(NOW - 60, UTC),
)

EXPECTED = {
    Reason.RATE_LIMITED: f"rate-limited until {IN_90} (in 90 s)",
    Reason.OVERLOADED: f"overloaded until {IN_90} (in 90 s)",
    Reason.TEMP_UNSCHEDULABLE: (
        f"temporarily unschedulable until {IN_90} (in 90 s): upstream answered 401"
    ),
    Reason.QUOTA_PAUSED_5H: f"until {IN_90}",
    Reason.MODEL_UNSUPPORTED: "does not serve model 'claude-3' (serves: gpt-4o*)",
    Reason.DISABLED: "status disabled",
    Reason.ERROR: "status error: upstream answered 401",
    Reason.NOT_SCHEDULABLE: "schedulable is off",
    Reason.EXPIRED: "expired at ",
    Reason.EXCLUDED_BY_REQUEST: "exclude list",
    Reason.FULL: "full: 3 of 3 slots leased",
    Reason.SLOW: "time to first token 25000 ms over sticky.slow_ttft_ms 20000",
}


@pytest.mark.parametrize("reason", list(Reason))
def test_every_reason_says_what_holds_the_account(reason: Reason) -> None:
    text = why(reason, ACCOUNT, STATE, "claude-3", CFG, NOW)
    expected = EXPECTED.get(reason, "quota paused" if reason is Reason.QUOTA_PAUSED_7D else None)
    assert expected is not None, f"no expectation for {reason}"
    assert expected in text, text
    if reason not in (Reason.QUOTA_PAUSED_5H, Reason.QUOTA_PAUSED_7D):
        assert "threshold" not in text  # not the quota rule's text (the complaint)


def test_eligible_and_a_missing_deadline() -> None:
    assert why(None, ACCOUNT, STATE, "gpt-4o", CFG, NOW) == "eligible: 3 of 3 slots leased"
    text = why(Reason.RATE_LIMITED, ACCOUNT, RuntimeState(), "gpt-4o", CFG, NOW)
    assert text == "rate-limited (no deadline recorded)"
