"""Properties of the outbox's pure rules: verdicts, the transition table, the retry delay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from hypothesis import given
from hypothesis import strategies as st

from scheduler.outbox import Status, Verdict, classify, may_move, retry_delay_s, settle
from scheduler.outbox._rules import TERMINAL, display_url, origin, parse_retry_after

DEFAULT = [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
schedules = st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=10)
jitters = st.floats(0, 1)
rands = st.floats(0, 1, exclude_max=True)


@given(st.integers(100, 599))
def test_classify_follows_the_status_classes(code):
    verdict = classify(code)
    if 200 <= code < 300:
        assert verdict is Verdict.CONSUMED
    elif code in (408, 429) or code >= 500 or code < 200 or 300 <= code < 400:
        assert verdict is Verdict.RETRY
    else:
        assert verdict is Verdict.DEAD
    assert classify(410) is Verdict.DEAD and classify(None) is Verdict.RETRY


@given(st.sampled_from(Verdict), st.integers(1, 50), st.integers(1, 50))
def test_settle_only_turns_an_exhausted_retry_dead(verdict, attempts, max_attempts):
    settled = settle(verdict, attempts, max_attempts)
    if verdict is Verdict.RETRY and attempts >= max_attempts:
        assert settled is Verdict.DEAD
    else:
        assert settled is verdict


@given(st.sampled_from(Status), st.sampled_from(Status), st.booleans())
def test_terminal_states_are_final_but_for_an_operator_retry(old, new, operator):
    if old is Status.CONSUMED:
        assert not may_move(old, new, operator=operator)
    if old in TERMINAL and may_move(old, new, operator=operator):
        assert operator and (old, new) == (Status.DEAD, Status.PENDING)
    # Nothing reaches consumed except from published (a delivery that was answered).
    if new is Status.CONSUMED and may_move(old, new, operator=operator):
        assert old is Status.PUBLISHED


@given(st.integers(1, 100), schedules, jitters, rands)
def test_delay_stays_within_the_jittered_step(attempts, schedule, jitter, rand):
    base = schedule[min(attempts, len(schedule)) - 1]
    delay = retry_delay_s(attempts, schedule, jitter=jitter, rand=rand)
    assert base * (1 - jitter) - 1e-6 <= delay <= base * (1 + jitter) + 1e-6
    assert delay >= 0


@given(st.integers(1, 20), rands)
def test_default_schedule_never_shrinks_and_repeats_its_last_step(attempts, rand):
    a = retry_delay_s(attempts, DEFAULT, jitter=0.2, rand=rand)
    b = retry_delay_s(attempts + 1, DEFAULT, jitter=0.2, rand=rand)
    assert b >= a
    assert retry_delay_s(1, DEFAULT, jitter=0, rand=rand) == 5.0
    assert retry_delay_s(30, DEFAULT, jitter=0, rand=rand) == 36000.0


@given(st.integers(1, 20), schedules, jitters, rands, st.floats(0, 1e7, allow_nan=False))
def test_retry_after_is_a_floor_capped_at_the_longest_step(attempts, schedule, jitter, rand, ra):
    plain = retry_delay_s(attempts, schedule, jitter=jitter, rand=rand)
    delay = retry_delay_s(attempts, schedule, jitter=jitter, rand=rand, retry_after_s=ra)
    assert delay >= plain
    assert delay >= min(ra, max(schedule)) - 1e-6
    assert delay <= max(plain, max(schedule)) + 1e-6


def test_retry_after_forms():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0
    for junk in (None, "", "soon", "-5", "1.5e9x"):
        assert parse_retry_after(junk, now) is None


def test_origin_and_display_url_hide_what_may_be_secret():
    url = "https://user:pw@hooks.example.com:8443/in/abc?token=s3cret#frag"
    assert origin(url) == "https://user:pw@hooks.example.com:8443"
    shown = display_url(url)
    assert shown == "https://hooks.example.com:8443/in/abc?…"
    assert "pw" not in shown and "s3cret" not in shown
    assert display_url("http://h/p") == "http://h/p"
    assert display_url("http://h:99999/p") == "http://h/p"
