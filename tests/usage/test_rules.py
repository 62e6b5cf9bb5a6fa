"""The prober's pure scheduling rule, exhaustively (hypothesis) and by example."""

from __future__ import annotations

import math

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from accounts.model import Account, Kind, Platform, QuotaPolicy, QuotaWindow, Window
from accounts.rules import quota_pause
from scheduler.usage import rules
from scheduler.usage.rules import ProbeRecord, backoff_s, failure, jittered, next_probe
from snapshot.settings import UsageSettings

NOW = 1_800_000_000.0
CFG = UsageSettings()
POLICY = QuotaPolicy(default_5h_threshold=0.9, default_7d_threshold=0.95)
ACCOUNT = Account(
    id="00000000-0000-0000-0000-000000000001",
    name="a",
    platform=Platform.ANTHROPIC,
    kind=Kind.OAUTH,
    groups=("g",),
)

times = st.floats(min_value=NOW - 3 * 86400, max_value=NOW + 3 * 86400)
ratios = st.floats(min_value=0.0, max_value=1.5)


@st.composite
def readings(draw: st.DrawFn) -> QuotaWindow:
    observed = draw(st.floats(min_value=NOW - 10 * 86400, max_value=NOW))
    reset = draw(
        st.one_of(st.none(), st.floats(min_value=observed - 3600, max_value=NOW + 8 * 86400))
    )
    return QuotaWindow(
        window=draw(st.sampled_from(list(Window))),
        used_ratio=draw(ratios),
        observed_at=observed,
        reset_at=reset,
        window_s=draw(st.sampled_from([None, 18000.0, 604800.0])),
    )


@st.composite
def records(draw: st.DrawFn) -> ProbeRecord:
    last = draw(st.one_of(st.none(), st.floats(min_value=NOW - 10 * 86400, max_value=NOW)))
    return ProbeRecord(
        last_at=last,
        fails=draw(st.integers(min_value=0, max_value=80)),
        not_before=draw(st.one_of(st.none(), times)),
    )


@st.composite
def usage_settings(draw: st.DrawFn) -> UsageSettings:
    base = draw(st.floats(min_value=1, max_value=3600))
    return UsageSettings(
        after_reset_s=draw(st.floats(min_value=0, max_value=3600)),
        paused_interval_s=draw(st.floats(min_value=1, max_value=86400)),
        near_margin=draw(st.floats(min_value=0, max_value=1)),
        near_interval_s=draw(st.floats(min_value=1, max_value=86400)),
        idle_interval_s=draw(st.floats(min_value=1, max_value=86400)),
        min_interval_s=draw(st.floats(min_value=0, max_value=3600)),
        failure_backoff_s=base,
        failure_backoff_max_s=base * draw(st.floats(min_value=1, max_value=1000)),
        jitter=draw(st.floats(min_value=0, max_value=1)),
    )


@settings(max_examples=100, deadline=None)
@given(st.lists(readings(), max_size=4), records(), usage_settings())
def test_floors_always_hold(
    windows: list[QuotaWindow], record: ProbeRecord, cfg: UsageSettings
) -> None:
    """Never sooner than min_interval after the last probe, never before not_before."""
    due = next_probe(ACCOUNT, windows, record, POLICY, cfg, NOW)
    assert math.isfinite(due.at)
    if record.last_at is not None:
        assert due.at >= record.last_at + cfg.min_interval_s
    if record.not_before is not None:
        assert due.at >= record.not_before
    assert due.spread_s >= 0


@settings(max_examples=100, deadline=None)
@given(st.lists(readings(), min_size=1, max_size=4), usage_settings())
def test_a_paused_account_is_looked_at_by_its_reset_and_well_before_staleness(
    windows: list[QuotaWindow], cfg: UsageSettings
) -> None:
    """Paused now: due no later than reset + after_reset_s (when the reset is known and after
    the reading) and no later than paused_interval_s after the newest reading."""
    decision = quota_pause(ACCOUNT, windows, POLICY, NOW)
    if not decision.paused:
        return
    due = next_probe(ACCOUNT, windows, rules.NO_RECORD, POLICY, cfg, NOW)
    newest = max(w.observed_at for w in windows)
    assert due.at <= newest + cfg.paused_interval_s
    pausing = max((w for w in windows if w.window == decision.window), key=lambda w: w.observed_at)
    resets = pausing.resets_at()
    if resets is not None and pausing.observed_at < resets:
        assert due.at <= resets + cfg.after_reset_s


@settings(max_examples=100, deadline=None)
@given(readings(), ratios, ratios, records(), usage_settings())
def test_more_used_is_never_looked_at_later(
    reading: QuotaWindow, a: float, b: float, record: ProbeRecord, cfg: UsageSettings
) -> None:
    """Near-threshold accounts are probed more often: due time is monotone in usage."""
    low, high = sorted((a, b))
    due_low = next_probe(
        ACCOUNT, [msgspec.structs.replace(reading, used_ratio=low)], record, POLICY, cfg, NOW
    )
    due_high = next_probe(
        ACCOUNT, [msgspec.structs.replace(reading, used_ratio=high)], record, POLICY, cfg, NOW
    )
    assert due_high.at <= due_low.at


@settings(max_examples=100, deadline=None)
@given(readings(), records(), usage_settings())
def test_a_fresher_reading_never_brings_the_look_forward(
    reading: QuotaWindow, record: ProbeRecord, cfg: UsageSettings
) -> None:
    """Traffic keeps readings fresh: a newer reading of the same usage never makes a probe sooner
    (so busy accounts are not probed)."""
    older = next_probe(ACCOUNT, [reading], record, POLICY, cfg, NOW)
    newer = msgspec.structs.replace(reading, observed_at=min(NOW, reading.observed_at + 600))
    if newer.resets_at() is not None and newer.observed_at >= (newer.resets_at() or 0):
        return  # the newer reading is after the reset: a different window, not the same usage
    assert next_probe(ACCOUNT, [newer], record, POLICY, cfg, NOW).at >= older.at


@given(st.lists(readings(), max_size=3), records(), usage_settings(), st.floats(0, 1))
def test_jitter_only_delays_within_the_spread(
    windows: list[QuotaWindow], record: ProbeRecord, cfg: UsageSettings, u: float
) -> None:
    due = next_probe(ACCOUNT, windows, record, POLICY, cfg, NOW)
    at = jittered(due, u)
    assert due.at <= at <= due.at + due.spread_s


@given(st.integers(0, 10_000), st.integers(0, 10_000), usage_settings())
def test_backoff_grows_and_is_capped(a: int, b: int, cfg: UsageSettings) -> None:
    lo, hi = sorted((a, b))
    assert backoff_s(lo, cfg) <= backoff_s(hi, cfg) <= cfg.failure_backoff_max_s
    assert backoff_s(1, cfg) == cfg.failure_backoff_s


@given(
    st.integers(0, 100),
    st.sampled_from(["failed", "rate_limited", "auth_failed", "cannot_probe"]),
    st.one_of(st.none(), st.floats(0, 1e6)),
    usage_settings(),
)
def test_failures_count_and_wait(
    fails: int, result: str, retry_after: float | None, cfg: UsageSettings
) -> None:
    count, wait = failure(fails, result, cfg, retry_after)
    if result == "cannot_probe":
        assert (count, wait) == (fails, cfg.cannot_probe_retry_s)
        return
    assert count == fails + 1
    assert cfg.failure_backoff_s <= wait <= cfg.failure_backoff_max_s
    if retry_after is not None:
        assert wait >= min(retry_after, cfg.failure_backoff_max_s)


# --- by example -------------------------------------------------------------------------


def r5(used: float, observed: float, reset: float | None = None) -> QuotaWindow:
    return QuotaWindow(
        window=Window.FIVE_HOURS, used_ratio=used, observed_at=observed, reset_at=reset
    )


def test_never_seen_is_due_now_spread_over_the_start_window() -> None:
    due = next_probe(ACCOUNT, [], rules.NO_RECORD, POLICY, CFG, NOW)
    assert (due.at, due.why, due.spread_s) == (NOW, rules.FIRST, CFG.start_spread_s)


def test_paused_with_a_known_reset_is_looked_at_just_after_it() -> None:
    due = next_probe(ACCOUNT, [r5(0.97, NOW - 60, NOW + 100)], rules.NO_RECORD, POLICY, CFG, NOW)
    assert (due.at, due.why) == (NOW + 100 + CFG.after_reset_s, rules.AFTER_RESET)


def test_paused_with_an_unknown_reset_is_looked_at_every_paused_interval() -> None:
    due = next_probe(ACCOUNT, [r5(0.97, NOW - 60)], rules.NO_RECORD, POLICY, CFG, NOW)
    assert (due.at, due.why) == (NOW - 60 + CFG.paused_interval_s, rules.PAUSED)
    assert due.at < NOW - 60 + POLICY.stale_after_s


def test_near_then_idle() -> None:
    near = next_probe(ACCOUNT, [r5(0.85, NOW)], rules.NO_RECORD, POLICY, CFG, NOW)
    idle = next_probe(ACCOUNT, [r5(0.10, NOW)], rules.NO_RECORD, POLICY, CFG, NOW)
    assert (near.at, near.why) == (NOW + CFG.near_interval_s, rules.NEAR)
    assert (idle.at, idle.why) == (NOW + CFG.idle_interval_s, rules.IDLE)


def test_no_threshold_means_idle_reads_only() -> None:
    due = next_probe(ACCOUNT, [r5(1.0, NOW, NOW + 60)], rules.NO_RECORD, QuotaPolicy(), CFG, NOW)
    assert due.why == rules.IDLE
    disabled = msgspec.structs.replace(ACCOUNT, auto_pause_5h_disabled=True)
    assert next_probe(disabled, [r5(1.0, NOW)], rules.NO_RECORD, POLICY, CFG, NOW).why == rules.IDLE


def test_backoff_wins_over_the_reset() -> None:
    record = ProbeRecord(last_at=NOW, fails=3, not_before=NOW + 500)
    due = next_probe(ACCOUNT, [r5(0.97, NOW - 60, NOW + 10)], record, POLICY, CFG, NOW)
    assert (due.at, due.why) == (NOW + 500, rules.BACKOFF)
