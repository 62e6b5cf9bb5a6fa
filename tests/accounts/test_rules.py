"""The pure rules: quota auto-pause, schedulable, and the combined hot-path check.

Property tests (hypothesis) drive random accounts, policies and readings; the
examples pin the boundaries the issue names. No servers, no clock: ``now`` is
always passed in.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accounts.model import Account, Kind, Platform, QuotaPolicy, QuotaWindow, Status, Window
from accounts.rules import (
    HARD_REASONS,
    NOT_PAUSED,
    AccountRuntime,
    PauseDecision,
    Reason,
    check,
    is_hard,
    quota_pause,
)

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = 1_790_000_000.0
H5, D7 = Window.FIVE_HOURS, Window.SEVEN_DAYS
UTC_PLUS_8 = timezone(timedelta(hours=8))

thresholds = st.floats(min_value=0.01, max_value=1.0)
maybe_threshold = st.none() | thresholds
times = st.floats(min_value=1.7e9, max_value=1.9e9)


def make_account(**kw: object) -> Account:
    base: dict[str, object] = {
        "id": "a1",
        "name": "acct",
        "platform": Platform.OPENAI,
        "kind": Kind.OAUTH,
        "groups": ("default",),
    }
    base.update(kw)
    return Account(**base)  # type: ignore[arg-type]  # test helper: fields vary per test


def fresh(window: Window, used: float, *, now: float = NOW, **kw: object) -> QuotaWindow:
    """A reading observed a minute ago whose window resets in an hour."""
    args: dict[str, object] = {"observed_at": now - 60, "reset_at": now + 3600}
    args.update(kw)
    return QuotaWindow(window=window, used_ratio=used, **args)  # type: ignore[arg-type]


@st.composite
def accounts(draw: st.DrawFn) -> Account:
    return make_account(
        auto_pause_5h_threshold=draw(maybe_threshold),
        auto_pause_7d_threshold=draw(maybe_threshold),
        auto_pause_5h_disabled=draw(st.booleans()),
        auto_pause_7d_disabled=draw(st.booleans()),
    )


@st.composite
def policies(draw: st.DrawFn) -> QuotaPolicy:
    return QuotaPolicy(
        default_5h_threshold=draw(maybe_threshold),
        default_7d_threshold=draw(maybe_threshold),
        stale_after_s=draw(st.floats(min_value=60, max_value=86400)),
    )


@st.composite
def readings(draw: st.DrawFn, now: float = NOW) -> QuotaWindow:
    """Any reading: fresh or stale, reset or not (both reset forms), used or not."""
    observed = now - draw(st.floats(min_value=-30, max_value=3 * 86400))
    form = draw(st.sampled_from(["at", "after", "none", "both"]))
    reset_at = observed + draw(st.floats(min_value=0, max_value=8 * 86400))
    after = draw(st.floats(min_value=0, max_value=8 * 86400))
    return QuotaWindow(
        window=draw(st.sampled_from([H5, D7])),
        used_ratio=draw(st.floats(min_value=0, max_value=1.5) | st.just(0.0)),
        observed_at=observed,
        reset_at=reset_at if form in ("at", "both") else None,
        reset_after_s=after if form in ("after", "both") else None,
    )


def counts(reading: QuotaWindow, policy: QuotaPolicy, now: float) -> bool:
    """The issue's "a reading counts" condition, stated independently of the code."""
    resets = reading.resets_at()
    return (
        reading.used_ratio > 0
        and (resets is None or now < resets)
        and now < reading.observed_at + policy.stale_after_s
    )


# --------------------------------------------------------------------------- quota_pause


def schedulable(account: Account, runtime: AccountRuntime | None, now: float) -> Reason | None:
    """Oracle: ``check`` with the model and quota rules taken out (own state + deadlines)."""
    bare = msgspec.structs.replace(account, models=())
    rt = None if runtime is None else msgspec.structs.replace(runtime, windows=())
    return check(bare, rt, "any-model", QuotaPolicy(), now)


@PROPS
@given(accounts(), policies(), st.lists(readings(), max_size=4))
def test_a_pause_always_has_its_evidence(
    account: Account, policy: QuotaPolicy, ws: list[QuotaWindow]
) -> None:
    """Whatever the inputs, a pause names a window that is enabled, has a threshold, and
    whose latest reading counts and is at or over that threshold; the pause lifts later."""
    d = quota_pause(account, ws, policy, NOW)
    if not d.paused:
        assert d.reason is None and d.window is None
        return
    assert d.window is not None and d.threshold is not None and d.utilisation is not None
    assert d.reason == (Reason.QUOTA_PAUSED_5H if d.window is H5 else Reason.QUOTA_PAUSED_7D)
    disabled = account.auto_pause_5h_disabled if d.window is H5 else account.auto_pause_7d_disabled
    assert not disabled
    mine = [w for w in ws if w.window == d.window]
    # The latest observation counts; on a tie, the one given last (the newer write).
    latest = max(reversed(mine), key=lambda w: w.observed_at)
    assert counts(latest, policy, NOW)
    assert d.utilisation == latest.used_ratio >= d.threshold
    assert d.until is not None and d.until > NOW


@PROPS
@given(accounts(), policies(), st.lists(readings(), max_size=4), st.sampled_from([H5, D7]))
def test_a_disabled_window_never_pauses_and_leaves_the_other_alone(
    account: Account, policy: QuotaPolicy, ws: list[QuotaWindow], window: Window
) -> None:
    """Disabling one window: it never pauses; the other window decides exactly as it did
    with the disabled window's readings removed."""
    flag = "auto_pause_5h_disabled" if window is H5 else "auto_pause_7d_disabled"
    off = make_account(**{**_fields(account), flag: True})
    d = quota_pause(off, ws, policy, NOW)
    assert d.window is not window
    without = [w for w in ws if w.window != window]
    assert d.paused == quota_pause(off, without, policy, NOW).paused


def _fields(account: Account) -> dict[str, object]:
    return {f: getattr(account, f) for f in account.__struct_fields__}


@PROPS
@given(st.sampled_from([H5, D7]), maybe_threshold, maybe_threshold, st.floats(0.01, 1.5))
def test_threshold_is_the_accounts_else_the_default_else_never(
    window: Window, own: float | None, default: float | None, used: float
) -> None:
    """Account threshold wins over the global default; neither set means never paused."""
    tag = "5h" if window is H5 else "7d"
    account = make_account(**{f"auto_pause_{tag}_threshold": own})
    policy = QuotaPolicy(**{f"default_{tag}_threshold": default})  # type: ignore[arg-type]
    d = quota_pause(account, [fresh(window, used)], policy, NOW)
    expected = own if own is not None else default
    if expected is None:
        assert not d.paused
    else:
        assert d.paused == (used >= expected)
        if d.paused:
            assert d.threshold == expected


@PROPS
@given(st.sampled_from([H5, D7]), thresholds, st.floats(0, 8 * 86400), st.booleans())
def test_a_window_that_already_reset_does_not_pause(
    window: Window, threshold: float, since_reset: float, after_form: bool
) -> None:
    """Reset in the past or exactly now, given as reset_at or as reset_after from the
    observation time: the reading no longer counts, however high it is."""
    observed = NOW - 600
    resets = NOW - since_reset
    kw = (
        {"reset_after_s": max(resets - observed, 0.0), "reset_at": None}
        if after_form
        else {"reset_at": resets}
    )
    if after_form and resets < observed:
        return  # a reset_after cannot point before its own observation
    reading = fresh(window, 1.0, observed_at=observed, **kw)
    policy = QuotaPolicy(default_5h_threshold=threshold, default_7d_threshold=threshold)
    assert not quota_pause(make_account(), [reading], policy, NOW).paused


@PROPS
# Whole seconds keep `now - observed_at` exact, so the boundary is tested, not rounding.
@given(st.sampled_from([H5, D7]), st.integers(60, 86400), st.floats(0.001, 86400))
def test_a_stale_reading_does_not_pause(window: Window, stale_after: int, extra: float) -> None:
    """A reading stale_after_s old or older does not count (the limit itself included,
    like a reset: the pause lifts at ``until``); a moment younger it does."""
    policy = QuotaPolicy(
        default_5h_threshold=0.5, default_7d_threshold=0.5, stale_after_s=stale_after
    )
    far = NOW + 30 * 86400
    old = fresh(window, 0.99, observed_at=NOW - stale_after - extra, reset_at=far)
    assert not quota_pause(make_account(), [old], policy, NOW).paused
    edge = fresh(window, 0.99, observed_at=NOW - stale_after, reset_at=far)
    assert not quota_pause(make_account(), [edge], policy, NOW).paused
    young = fresh(window, 0.99, observed_at=NOW - stale_after + 1, reset_at=far)
    d = quota_pause(make_account(), [young], policy, NOW)
    assert d.paused and d.until == NOW + 1


@PROPS
@given(st.sampled_from([H5, D7]), thresholds)
def test_exactly_at_the_threshold_pauses_and_just_below_does_not(
    window: Window, threshold: float
) -> None:
    policy = QuotaPolicy(default_5h_threshold=threshold, default_7d_threshold=threshold)
    at = quota_pause(make_account(), [fresh(window, threshold)], policy, NOW)
    assert at.paused and at.utilisation == threshold == at.threshold
    below = math.nextafter(threshold, 0.0)
    assert not quota_pause(make_account(), [fresh(window, below)], policy, NOW).paused


@PROPS
@given(thresholds, thresholds, st.floats(0, 1.5), st.floats(0, 1.5))
def test_5h_and_7d_are_independent(t5: float, t7: float, u5: float, u7: float) -> None:
    """Each window pauses on its own reading and threshold; 5h can pause while 7d does not
    and the reverse, and the reported window is one that is over."""
    policy = QuotaPolicy(default_5h_threshold=t5, default_7d_threshold=t7)
    d = quota_pause(make_account(), [fresh(H5, u5), fresh(D7, u7)], policy, NOW)
    over5, over7 = u5 > 0 and u5 >= t5, u7 > 0 and u7 >= t7
    assert d.paused == (over5 or over7)
    if over5 and not over7:
        assert d.reason is Reason.QUOTA_PAUSED_5H
    if over7 and not over5:
        assert d.reason is Reason.QUOTA_PAUSED_7D


@PROPS
@given(accounts(), policies(), st.lists(readings(), max_size=4))
def test_zero_usage_never_pauses(
    account: Account, policy: QuotaPolicy, ws: list[QuotaWindow]
) -> None:
    zeroed = [QuotaWindow(**{**_fields_w(w), "used_ratio": 0.0}) for w in ws]  # type: ignore[arg-type]
    assert not quota_pause(account, zeroed, policy, NOW).paused


def _fields_w(w: QuotaWindow) -> dict[str, object]:
    return {f: getattr(w, f) for f in w.__struct_fields__}


def test_examples_from_the_issue() -> None:
    """Worked examples: 5h over / 7d under and the reverse; the latest reading wins; both
    over reports the one that lifts later; nothing set = the shared NOT_PAUSED answer."""
    policy = QuotaPolicy(default_5h_threshold=0.9, default_7d_threshold=0.8)
    acct = make_account()
    d = quota_pause(acct, [fresh(H5, 0.95), fresh(D7, 0.5)], policy, NOW)
    assert (d.paused, d.reason, d.threshold) == (True, Reason.QUOTA_PAUSED_5H, 0.9)
    assert "5h" in d.why
    d = quota_pause(acct, [fresh(H5, 0.5), fresh(D7, 0.85)], policy, NOW)
    assert (d.paused, d.reason) == (True, Reason.QUOTA_PAUSED_7D)
    newer = fresh(H5, 0.1, observed_at=NOW - 10)
    assert not quota_pause(acct, [fresh(H5, 0.99), newer], policy, NOW).paused
    both = [fresh(H5, 0.99), fresh(D7, 0.99, reset_at=NOW + 5000)]
    assert quota_pause(acct, both, policy, NOW).window is D7
    own = make_account(auto_pause_5h_threshold=0.99)
    assert not quota_pause(own, [fresh(H5, 0.95)], policy, NOW).paused
    assert quota_pause(acct, [], policy, NOW) == NOT_PAUSED
    assert not quota_pause(acct, [fresh(H5, 1.0)], QuotaPolicy(), NOW).paused
    nan = fresh(H5, 0.99, observed_at=float("nan"))
    assert not quota_pause(acct, [nan], policy, NOW).paused


# --------------------------------------------------------------------------- schedulable

DEADLINES = {
    "rate_limited_until": Reason.RATE_LIMITED,
    "overloaded_until": Reason.OVERLOADED,
    "unschedulable_until": Reason.TEMP_UNSCHEDULABLE,
}


@PROPS
@given(st.sampled_from(sorted(DEADLINES)), times, times)
def test_each_deadline_blocks_before_and_frees_from_it(
    field: str, deadline: float, now: float
) -> None:
    runtime = AccountRuntime(**{field: deadline})  # type: ignore[arg-type]
    got = schedulable(make_account(), runtime, now)
    assert got == (DEADLINES[field] if now < deadline else None)


@PROPS
@given(times, st.booleans(), st.booleans())
def test_expiry_blocks_only_with_auto_pause_on_expired(
    now: float, auto_pause: bool, naive: bool
) -> None:
    """Expired (now >= expires_at) blocks only when auto_pause_on_expired; naive = UTC."""
    exp = datetime(2026, 9, 21, 12, 0, tzinfo=UTC)
    given_exp = exp.replace(tzinfo=None) if naive else exp
    account = make_account(expires_at=given_exp, auto_pause_on_expired=auto_pause)
    got = schedulable(account, AccountRuntime(), now)
    assert got == (Reason.EXPIRED if auto_pause and now >= exp.timestamp() else None)


def test_status_and_admin_switch() -> None:
    rt = AccountRuntime(rate_limited_until=NOW + 10)
    assert schedulable(make_account(status=Status.DISABLED), rt, NOW) is Reason.DISABLED
    assert schedulable(make_account(status=Status.ERROR), rt, NOW) is Reason.ERROR
    assert schedulable(make_account(schedulable=False), rt, NOW) is Reason.NOT_SCHEDULABLE
    assert schedulable(make_account(), rt, NOW) is Reason.RATE_LIMITED
    assert schedulable(make_account(), None, NOW) is None
    expired = make_account(expires_at=datetime(2026, 9, 21, 20, 0, tzinfo=UTC_PLUS_8))
    at_noon_utc = datetime(2026, 9, 21, 12, 0, tzinfo=UTC).timestamp()
    assert schedulable(expired, None, at_noon_utc) is Reason.EXPIRED
    assert schedulable(expired, None, at_noon_utc - 1) is None


# --------------------------------------------------------------------------- check


@st.composite
def runtimes(draw: st.DrawFn) -> AccountRuntime:
    deadline = st.none() | st.floats(NOW - 100, NOW + 100)
    return AccountRuntime(
        rate_limited_until=draw(deadline),
        overloaded_until=draw(deadline),
        unschedulable_until=draw(deadline),
        windows=tuple(draw(st.lists(readings(), max_size=3))),
    )


@st.composite
def full_accounts(draw: st.DrawFn) -> Account:
    quota = draw(accounts())
    return make_account(
        auto_pause_5h_threshold=quota.auto_pause_5h_threshold,
        auto_pause_7d_threshold=quota.auto_pause_7d_threshold,
        auto_pause_5h_disabled=quota.auto_pause_5h_disabled,
        auto_pause_7d_disabled=quota.auto_pause_7d_disabled,
        status=draw(st.sampled_from(list(Status))),
        schedulable=draw(st.booleans()),
        models=draw(st.sampled_from([(), ("gpt-5*",), ("claude-*",), ("gpt-5", "o3")])),
        expires_at=draw(st.none() | st.just(datetime(2026, 9, 21, tzinfo=UTC))),
    )


@PROPS
@given(
    full_accounts(), runtimes(), st.sampled_from(["gpt-5", "gpt-5-codex", "claude-x"]), policies()
)
def test_check_combines_the_rules_hard_reasons_first(
    account: Account, runtime: AccountRuntime, model: str, policy: QuotaPolicy
) -> None:
    """check is None exactly when the model is supported, schedulable says yes and the
    quota rule does not pause; when it names a reason, no hard reason is hidden behind a
    soft one."""
    from accounts.model import model_matches

    got = check(account, runtime, model, policy, NOW)
    supported = model_matches(account.models, model)
    sched = schedulable(account, runtime, NOW)
    pause = quota_pause(account, runtime.windows, policy, NOW)
    assert (got is None) == (supported and sched is None and not pause.paused)
    if got is None:
        return
    hard_exists = not supported or (sched is not None and is_hard(sched)) or pause.paused
    assert is_hard(got) == hard_exists
    assert got in {Reason.MODEL_UNSUPPORTED, sched, pause.reason}


def test_check_order_and_reason_set() -> None:
    """Model first; a quota pause (hard) is reported before a rate limit (soft)."""
    policy = QuotaPolicy(default_5h_threshold=0.5)
    rt = AccountRuntime(rate_limited_until=NOW + 60, windows=(fresh(H5, 0.9),))
    acct = make_account(models=("gpt-5*",), status=Status.DISABLED)
    assert check(acct, rt, "claude-opus", policy, NOW) is Reason.MODEL_UNSUPPORTED
    assert check(acct, rt, "gpt-5", policy, NOW) is Reason.DISABLED
    assert check(make_account(), rt, "gpt-5", policy, NOW) is Reason.QUOTA_PAUSED_5H
    assert check(make_account(), rt, "gpt-5", QuotaPolicy(), NOW) is Reason.RATE_LIMITED
    assert check(make_account(), None, "gpt-5", policy, NOW) is None
    assert {r.value for r in Reason} >= {"full", "excluded_by_request", "slow"}
    assert set(Reason) > HARD_REASONS
    assert isinstance(NOT_PAUSED, PauseDecision) and not NOT_PAUSED.paused


@pytest.mark.parametrize("reason", list(Reason))
def test_reasons_are_plain_strings(reason: Reason) -> None:
    """Reasons travel as metric labels and JSON keys: lower-case, no spaces."""
    assert reason.value == reason.value.lower() and " " not in reason.value
