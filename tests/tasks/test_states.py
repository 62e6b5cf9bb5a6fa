"""Property tests of the pure task rules: transitions, settlement, poll schedule."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.tasks._states import (
    IN_FLIGHT,
    TERMINAL,
    TRANSITIONS,
    Billing,
    Event,
    PollSchedule,
    Proposal,
    Snapshot,
    TaskStatus,
    allowed,
    plan,
    settlement,
)

statuses = st.sampled_from(list(TaskStatus))
proposals = st.builds(
    Proposal,
    event=st.sampled_from(list(Event)),
    status=statuses,
    progress=st.one_of(st.none(), st.just(float("nan")), st.floats(-10, 200)),
    result_urls=st.lists(st.sampled_from(["http://r/1", "http://r/2"]), max_size=2).map(tuple),
    failure_reason=st.one_of(st.none(), st.sampled_from(["boom", "bad prompt"])),
    upstream_id=st.one_of(st.none(), st.sampled_from(["u1", "u2"])),
)


def test_table_has_no_exit_from_a_terminal_state() -> None:
    for status in TERMINAL:
        assert status not in TRANSITIONS
        for other in TaskStatus:
            assert not allowed(status, other)
    # Every in-flight state can reach a terminal one.
    for status in IN_FLIGHT:
        assert TRANSITIONS[status] & TERMINAL


@given(start=statuses, steps=st.lists(proposals, max_size=30))
def test_no_path_leaves_a_terminal_state_and_each_path_settles_at_most_once(
    start: TaskStatus, steps: list[Proposal]
) -> None:
    current = Snapshot(status=start)
    settled = 0
    terminal_seen: TaskStatus | None = start if start.terminal else None
    for proposal in steps:
        change = plan(current, proposal)
        if change is None:
            continue
        assert change.before == current
        assert change.after != current
        if change.status_changed:
            assert allowed(current.status, change.after.status)
        if terminal_seen is not None:
            pytest.fail(f"{current.status} changed to {change.after}")
        settled += change.settles
        current = change.after
        if current.status.terminal:
            terminal_seen = current.status
    if start.terminal:
        assert settled == 0
    else:
        # Exactly one settlement iff the path reached a terminal state.
        assert settled == (1 if current.status.terminal else 0)


@given(start=st.sampled_from(sorted(IN_FLIGHT)), steps=st.lists(proposals, max_size=30))
def test_every_terminal_path_settles_exactly_once(start: TaskStatus, steps: list[Proposal]) -> None:
    # Force an ending: whatever happened, a deadline comes last.
    steps = [*steps, Proposal(Event.DEADLINE, TaskStatus.TIMED_OUT)]
    current = Snapshot(status=start)
    settles = 0
    for proposal in steps:
        change = plan(current, proposal)
        if change is not None:
            settles += change.settles
            current = change.after
    if start is TaskStatus.SUBMITTING and current.status is TaskStatus.SUBMITTING:
        # A deadline cannot end a task that never reached the upstream: the
        # SUBMITTING sweep (lookup or submit_outcome_unknown) does.
        assert settles == 0
        change = plan(current, Proposal(Event.SUBMIT_FAILED, TaskStatus.FAILED))
        assert change is not None and change.settles
        return
    assert current.status.terminal
    assert settles == 1


@given(start=statuses, proposal=proposals)
def test_an_unchanged_answer_plans_nothing(start: TaskStatus, proposal: Proposal) -> None:
    current = Snapshot(status=start)
    change = plan(current, proposal)
    if change is None:
        return
    # Applying the very same observation again is a no-op (no second write).
    assert plan(change.after, proposal) is None


@given(
    status=st.sampled_from(sorted(TERMINAL)),
    price=st.integers(0, 10_000),
    ratio=st.integers(0, 5_000),
    hold=st.integers(0, 10**9),
    units=st.one_of(st.none(), st.integers(-5, 10**6)),
)
def test_settlement_releases_the_whole_hold_and_charges_only_success(
    status: TaskStatus, price: int, ratio: int, hold: int, units: int | None
) -> None:
    s = settlement(status, Billing(price, ratio, hold), units)
    assert s.release == hold
    assert s.capture >= 0
    if status is not TaskStatus.SUCCEEDED:
        assert s.capture == 0
    else:
        exact = max(0, units or 0) * price * ratio / 1000
        assert s.capture <= hold
        assert s.capture == hold or exact <= s.capture < exact + 1


def test_settlement_of_a_live_state_is_an_error() -> None:
    for status in IN_FLIGHT:
        with pytest.raises(ValueError):
            settlement(status, Billing(1, 1000, 5), 1)


@settings(max_examples=300)
@given(
    age=st.floats(0, 10**6),
    older=st.floats(0, 10**6),
    platform=st.one_of(st.none(), st.floats(0.1, 120)),
    retry_after=st.one_of(st.none(), st.floats(0, 3600)),
    errors=st.integers(0, 100),
    r=st.floats(0, 1),
)
def test_poll_delay_bounds(
    age: float,
    older: float,
    platform: float | None,
    retry_after: float | None,
    errors: int,
    r: float,
) -> None:
    sched = PollSchedule()
    d = sched.delay(
        age, platform_interval_s=platform, retry_after_s=retry_after, errors=errors, rand=lambda: r
    )
    base = max(sched.base_interval_s, platform or 0.0)
    cap = max(sched.max_interval_s, base) * (1 + sched.jitter)
    assert d >= base * (1 - sched.jitter) - 1e-9 or (retry_after or 0) >= d
    if retry_after is not None:
        assert d >= retry_after
    assert d <= max(cap, retry_after or 0.0) + 1e-9
    # Older tasks are never polled more often (same jitter draw, no retry-after).
    young = sched.delay(
        min(age, older), platform_interval_s=platform, errors=errors, rand=lambda: r
    )
    old = sched.delay(max(age, older), platform_interval_s=platform, errors=errors, rand=lambda: r)
    assert young <= old + 1e-9


def test_poll_delay_grows_with_errors_then_caps() -> None:
    sched = PollSchedule(base_interval_s=1.0, max_interval_s=30.0, jitter=0.0)
    delays = [sched.delay(0, errors=n, rand=random.random) for n in range(10)]
    assert delays[:5] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert delays[-1] == 30.0
