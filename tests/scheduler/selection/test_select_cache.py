"""The pool cache in select(): changed accounts are re-checked at once, refreshes see other writers.

Real Redis; the local view's TTL is set to an hour where a test must show what
the cache alone does between refreshes (no time-driven reload hides a bug).
"""

from __future__ import annotations

import time

import pytest
import trio

from accounts.errors import NoAccountAvailable
from accounts.model import Platform
from scheduler.selection.reports import ReleaseOutcome, Reporter
from scheduler.selection.select import SelectRequest

from .selectkit import GROUP, SettingsBox, make_account, open_selector, reading, set_state

REQ = SelectRequest(group=GROUP, platform=Platform.OPENAI, model="gpt-4o")
PAUSE = {"default_5h_threshold": 0.9}
# Top-1: the best score always wins, so tests can name the expected account.
BEST = {"top_k": 1}
HOUR = 3600.0
CODEX_95 = {
    "x-codex-primary-used-percent": "95",
    "x-codex-primary-window-minutes": "300",
    "x-codex-primary-reset-after-seconds": "3600",
}


async def test_pause_reported_here_is_seen_by_the_very_next_select(redis):
    """A release report on this instance pauses A: the next select skips A without trying it.

    ``attempts == 1`` shows the cache re-checked A from the state the release
    script returned (not the acquire-time safety net, which would cost a 2nd attempt).
    """
    a = make_account("a", priority=0, concurrency=5)
    b = make_account("b", priority=5, concurrency=5)
    box = SettingsBox(quota=PAUSE, scoring=BEST)
    sel = await open_selector(redis, [a, b], box)
    sel.view.ttl_s = HOUR
    reporter = Reporter(sel, box)
    with trio.fail_after(10):
        first = await sel.select(REQ)
        assert first.account.id == a.id
        await reporter.release(first.lease_id, ReleaseOutcome(status=200, headers=CODEX_95))
        nxt = [await sel.select(REQ) for _ in range(3)]
    assert [s.account.id for s in nxt] == [b.id] * 3
    assert [s.attempts for s in nxt] == [1, 1, 1]


async def test_refresh_picks_up_a_pause_written_by_another_instance(redis):
    """Another instance pauses A in Redis: never picked before our refresh, skipped outright after.

    Before the refresh our cache still holds A as a candidate: the acquire reply
    carries the pause, the lease goes back and B is taken (2 attempts). After the
    refresh A is out of the cache (1 attempt).
    """
    a = make_account("a", priority=0, concurrency=5)
    b = make_account("b", priority=5, concurrency=5)
    box = SettingsBox(quota=PAUSE, scoring=BEST)
    sel = await open_selector(redis, [a, b], box)
    other = await open_selector(redis, [a, b], box)
    sel.view.ttl_s = HOUR
    with trio.fail_after(10):
        warm = await sel.select(REQ)
        assert warm.account.id == a.id
        await Reporter(sel, box).release(warm.lease_id, ReleaseOutcome(status=200))
        got = await other.select(REQ)
        await Reporter(other, box).release(
            got.lease_id, ReleaseOutcome(status=200, headers=CODEX_95)
        )
        stale = await sel.select(REQ)
        assert stale.account.id == b.id and stale.attempts == 2
        assert await redis.client.zcard(sel.runtime.keys.leases("openai", a.id)) == 0
        sel.view.ttl_s = 0  # the next select refreshes the bucket
        fresh = await sel.select(REQ)
    assert fresh.account.id == b.id and fresh.attempts == 1


async def test_full_and_refused_accounts_are_rechecked_from_the_acquire_reply(redis):
    """A's only slot is taken by our select: the next one goes to B at the first attempt."""
    a = make_account("a", priority=0, concurrency=1)
    b = make_account("b", priority=5, concurrency=1)
    box = SettingsBox(scoring=BEST)
    sel = await open_selector(redis, [a, b], box)
    sel.view.ttl_s = HOUR
    with trio.fail_after(10):
        held = await sel.select(REQ)
        assert held.account.id == a.id
        spill = await sel.select(REQ)
        assert spill.account.id == b.id and spill.attempts == 1
        # A rate limit written elsewhere is learned from the refusal, then cached.
        await Reporter(sel, box).release(held.lease_id, ReleaseOutcome(status=200))
        until = str(int((time.time() + 60) * 1000))
        await set_state(sel.runtime, "openai", a.id, {"rl_until": until})
        await Reporter(sel, box).release(spill.lease_id, ReleaseOutcome(status=200))
        refused = await sel.select(REQ)
        assert refused.account.id == b.id and refused.attempts == 2
        await Reporter(sel, box).release(refused.lease_id, ReleaseOutcome(status=200))
        again = await sel.select(REQ)
    assert again.account.id == b.id and again.attempts == 1


async def test_request_excludes_apply_on_top_of_the_cache(redis):
    """``exclude`` skips a cached candidate for that request only; the cache is unchanged."""
    a = make_account("a", priority=0, concurrency=5)
    b = make_account("b", priority=5, concurrency=5)
    sel = await open_selector(redis, [a, b], SettingsBox(scoring=BEST))
    sel.view.ttl_s = HOUR
    with trio.fail_after(10):
        assert (await sel.select(REQ)).account.id == a.id
        req = SelectRequest(group=GROUP, platform=Platform.OPENAI, model="gpt-4o", exclude=(a.id,))
        assert (await sel.select(req)).account.id == b.id
        assert (await sel.select(REQ)).account.id == a.id


async def test_settings_change_rebuilds_the_cache(redis):
    """A new settings value (a pause threshold) applies to the next select, no refresh needed."""
    a = make_account("a", priority=0, concurrency=5)
    b = make_account("b", priority=5, concurrency=5)
    box = SettingsBox(scoring=BEST)
    sel = await open_selector(redis, [a, b], box)
    sel.view.ttl_s = HOUR
    await set_state(sel.runtime, "openai", a.id, reading(0.95, time.time()))
    with trio.fail_after(10):
        assert (await sel.select(REQ)).account.id == a.id  # no threshold: not paused
        box.set(quota=PAUSE, scoring=BEST)
        got = await sel.select(REQ)
    assert got.account.id == b.id and got.attempts == 1


async def test_own_release_message_is_not_counted_twice(redis):
    """The release reply already updated the view: our own pub/sub echo must not free a 2nd slot.

    Another instance's release (different origin) does count.
    """
    from scheduler.selection.watcher import ReleaseWatcher

    a = make_account("a", concurrency=3)
    box = SettingsBox()
    sel = await open_selector(redis, [a], box)
    other = await open_selector(redis, [a], box)
    sel.view.ttl_s = HOUR
    watcher = ReleaseWatcher(sel)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(watcher.run)
            first = await sel.select(REQ)
            await sel.select(REQ)
            await Reporter(sel, box).release(first.lease_id, ReleaseOutcome(status=200))
            assert sel.view.get(a.id).leases == 1
            while watcher.messages < 1:
                await trio.sleep(0.01)
            assert sel.view.get(a.id).leases == 1
            theirs = await other.select(REQ)
            sel.view.patch(a.id, leases=2)  # as if our view had seen their lease
            await Reporter(other, box).release(theirs.lease_id, ReleaseOutcome(status=200))
            while watcher.messages < 2:
                await trio.sleep(0.01)
            assert sel.view.get(a.id).leases == 1
            nursery.cancel_scope.cancel()


async def test_a_deadline_that_passed_is_seen_before_answering_none(redis):
    """The only account's rate limit ends between two selects: no 503 from the cached verdict.

    The cache (refresh an hour away) still says rate_limited; before answering
    "no available accounts" the verdicts are judged again at the current time.
    """
    a = make_account("a", concurrency=5)
    sel = await open_selector(redis, [a], SettingsBox())
    sel.view.ttl_s = HOUR
    until = time.time() + 0.3
    await set_state(sel.runtime, "openai", a.id, {"rl_until": str(int(until * 1000))})
    with trio.fail_after(10):
        sel.view.ttl_s = 0
        with pytest.raises(NoAccountAvailable) as info:
            await sel.select(REQ)
        assert info.value.exclusions == {"rate_limited": 1}
        sel.view.ttl_s = HOUR
        await trio.sleep_until(trio.current_time() + (until - time.time()) + 0.05)
        got = await sel.select(REQ)
    assert got.account.id == a.id
