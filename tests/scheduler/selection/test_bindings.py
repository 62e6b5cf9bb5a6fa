"""The sticky-binding cache is bounded: entries expire after their TTL and the size is capped.

Issue 10 item 1: 2,000 requests left 4,000 entries, still there after their TTL.
The pure cache is checked with a test clock; then a real Selector (real Redis)
serves hundreds of distinct sessions and the cache holds only what is live.
``bench/bindings.py`` prints RSS before and after a million distinct sessions.
"""

from __future__ import annotations

import trio

from accounts.model import Platform
from scheduler.selection.bindings import BINDING_CACHE_S, BindingCache
from scheduler.selection.reports import ReleaseOutcome, Reporter
from scheduler.selection.select import SelectRequest
from snapshot.ttlcache import TtlCache

from .selectkit import GROUP, SettingsBox, make_account, open_selector


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_after_their_ttl() -> None:
    clock = Clock()
    cache: TtlCache[str, str | None] = TtlCache(2.0, 1000, clock=clock)
    for i in range(50):
        cache.put(f"k{i}", "a")
    assert len(cache) == 50 and cache.lookup("k0") == (True, "a")
    clock.now += 2.0
    assert cache.lookup("k0") == (False, None)  # expired: not trusted any more
    cache.put("fresh", None)
    assert len(cache) == 1  # the expired 50 are gone, not just ignored
    assert cache.lookup("fresh") == (True, None)  # "no binding" is an answer too


def test_size_is_capped_oldest_first_and_a_reput_counts_as_new() -> None:
    clock = Clock()
    cache: TtlCache[str, str] = TtlCache(60.0, 100, clock=clock)
    for i in range(1000):
        cache.put(f"k{i}", str(i))
        if i == 950:
            cache.put("k850", "again")  # refreshed: now newer than k901..k950
    assert len(cache) == 100
    assert cache.lookup("k999") == (True, "999")
    assert cache.lookup("k901") == (True, "901")
    assert cache.lookup("k900") == (False, None)
    assert cache.lookup("k850") == (True, "again")


async def test_selector_keeps_only_live_bindings(redis) -> None:  # type: ignore[no-untyped-def]
    """300 distinct sessions (half with a response id): after the TTL one select leaves 2 entries;
    under a cap of 100 the cache never holds more, and the newest binding still answers."""
    a = make_account("a", concurrency=1000)
    box = SettingsBox()
    sel = await open_selector(redis, [a], box)
    reporter = Reporter(sel, box)
    clock = Clock()
    sel.bindings = BindingCache(clock=clock)

    async def serve(i: int) -> None:
        req = SelectRequest(
            group=GROUP, platform=Platform.OPENAI, model="m", session_hash=f"s{i}",
            previous_response_id=f"r{i}" if i % 2 else None,
        )  # fmt: skip
        got = await sel.select(req)
        await reporter.release(got.lease_id, ReleaseOutcome(status=200))

    with trio.fail_after(60):
        for i in range(300):
            await serve(i)
        assert len(sel.bindings) == 450  # every key of every session, all live
        clock.now += BINDING_CACHE_S
        await serve(1001)
        assert len(sel.bindings) == 2  # the 450 expired ones were dropped

        sel.bindings = BindingCache(max_entries=100, clock=clock)
        for i in range(2000, 2300):
            await serve(i)
            assert len(sel.bindings) <= 100
    key = sel.runtime.keys.session("openai", GROUP, "s2299")
    assert sel.bindings.lookup(key) == (True, a.id)
