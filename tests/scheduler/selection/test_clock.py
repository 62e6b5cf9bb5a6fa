"""One clock: deadlines are computed and compared in Redis time, whatever an instance's clock says.

Issue 10 item 4: ``rl_until`` / ``ol_until`` / ``tu_until`` were computed from the
reporting instance's ``time.time()``, enforced by ``acquire.lua`` in Redis time
and re-checked by ``select.py`` in the local time. Two instances here run with
clocks 30 s fast and 30 s slow (injected); one reports a 429 (Retry-After 10 s)
and a quota reading, and all three views -- Redis's, the fast and the slow
instance's -- agree on the deadline and the reading's age to the second (the
bounds allow a loaded machine's delays between two awaits; a mixed-in clock is
30 s off).
"""

from __future__ import annotations

import time

import msgspec
import pytest
import trio

from accounts.errors import NoAccountAvailable
from accounts.model import Platform
from scheduler.selection.reports import ReleaseOutcome, Reporter
from scheduler.selection.select import Selector, SelectRequest

from .selectkit import GROUP, SettingsBox, make_account, open_selector

SKEW_S = 30.0
REQ = SelectRequest(group=GROUP, platform=Platform.OPENAI, model="gpt-4o")
CODEX = {
    "x-codex-primary-used-percent": "40",
    "x-codex-primary-window-minutes": "300",
    "x-codex-primary-reset-after-seconds": "3600",
}


async def redis_time(sel: Selector) -> float:
    # TIME through a script: coredis' time() turns the microseconds into a wrong datetime.
    seconds, micros = await sel.runtime.redis.client.eval("return redis.call('TIME')", [], [])
    return int(seconds) + int(micros) / 1e6


async def test_deadlines_hold_to_the_second_on_skewed_instances(redis) -> None:  # type: ignore[no-untyped-def]
    a = make_account("a", priority=0, concurrency=1)
    b = make_account("b", priority=5, concurrency=1)
    box = SettingsBox(scoring={"top_k": 1})
    fast = await open_selector(redis, [a, b], box, clock=lambda: time.time() + SKEW_S)
    slow = await open_selector(redis, [a, b], box, clock=lambda: time.time() - SKEW_S)
    with trio.fail_after(20):
        got = await fast.select(REQ)
        assert got.account.id == a.id
        headers = {"retry-after": "10", **CODEX}
        done = await Reporter(fast, box).release(
            got.lease_id, ReleaseOutcome(status=429, headers=headers)
        )
        assert set(done.effects) == {"rate_limited", "quota"}

        # Redis: the deadline is Redis TIME + 10 s, the reading observed at Redis TIME.
        state_key = fast.runtime.keys.state("openai", a.id)
        rl_until = int(await redis.client.hget(state_key, "rl_until")) / 1000
        # Bounds: the 10 s, less what a loaded machine may take between two awaits (the
        # skews are 30 s: any clock mixed in shows as 20 s off or more).
        assert 8 <= rl_until - await redis_time(fast) <= 10.5
        # Each instance sees the same 10 s on its own clock, and the reading as just made.
        for sel in (fast, slow):
            state = (await sel.runtime.read_many("openai", [a.id]))[a.id]
            assert state.rate_limited_until is not None
            assert 8 <= state.rate_limited_until - sel.clock() <= 10.5
            [reading] = state.windows
            assert abs(reading.observed_at - sel.clock()) <= 2
            resets = reading.resets_at()
            assert resets is not None and 3597 <= resets - sel.clock() <= 3601

        # The slow instance never met the account: it reads the bucket, sees the limit
        # and goes to b without a refused attempt; with b out, the hint is ~10 s.
        other = await slow.select(REQ)
        assert other.account.id == b.id and other.attempts == 1
        without_b = msgspec.structs.replace(REQ, exclude=(b.id,))
        for sel in (slow, fast):
            with pytest.raises(NoAccountAvailable) as info:
                await sel.select(without_b)
            assert info.value.exclusions == {"excluded_by_request": 1, "rate_limited": 1}
            assert 7 <= info.value.retry_after_s <= 10.5
