"""The view refresher: selects stop reading the runtime view; the actor keeps it fresh."""

from __future__ import annotations

import time
from typing import Any

import trio
import trio.testing

from accounts.model import Platform
from accounts.rules import Reason
from scheduler.selection.refresher import ViewRefresher
from scheduler.selection.reports import ReleaseOutcome, Reporter
from scheduler.selection.select import Selector, SelectRequest
from scheduler.selection.store import RuntimeStore

from .selectkit import BUCKET, GROUP, SettingsBox, make_account, open_selector, reading, set_state

PAUSE = {"quota": {"default_5h_threshold": 0.9}}
BEST = {"top_k": 1}
REQ = SelectRequest(group=GROUP, platform=Platform.OPENAI, model="gpt-4o")
# Short, so the test sees several refresher periods quickly; a select still trusts
# the copy for REQUEST_MAX_AGE_TTLS of these (3 s), far longer than one period.
TTL_S = 0.3
VIEW_KEY = (GROUP, "openai")


def count_readers(sel: Selector) -> list[str]:
    """Record the name of the task behind every batch read of the runtime view."""
    readers: list[str] = []
    read_many = sel.runtime.read_many

    async def reading_task(platform: str, ids: Any) -> Any:
        readers.append(trio.lowlevel.current_task().name)
        return await read_many(platform, ids)

    sel.runtime.read_many = reading_task  # type: ignore[method-assign]
    return readers


async def test_selects_do_not_read_a_fresh_view_and_the_refresher_sees_a_pause(redis):
    """Only the first select (never loaded) reads the view; then the refresher does, every
    period, and a quota pause another instance writes into Redis reaches the view and the
    pool cache with no select at all; the next select avoids the paused account."""
    a = make_account("a", priority=0, concurrency=5)
    b = make_account("b", priority=5, concurrency=5)
    sel = await open_selector(redis, [a, b], SettingsBox(**PAUSE, scoring=BEST))
    sel.view.ttl_s = TTL_S
    readers = count_readers(sel)
    reporter = Reporter(sel, sel.settings)
    refresher = ViewRefresher(sel)
    me = trio.lowlevel.current_task().name
    with trio.fail_after(20):
        first = await sel.select(REQ)
        assert first.account.id == a.id and readers == [me]
        await reporter.release(first.lease_id, ReleaseOutcome(status=200))
        async with trio.open_nursery() as nursery:
            await nursery.start(refresher.run)
            # Selects across several periods: each finds the view fresh, none reads it.
            while refresher.rounds < 4:
                got = await sel.select(REQ)
                await reporter.release(got.lease_id, ReleaseOutcome(status=200))
                await trio.sleep(TTL_S / 5)
            assert readers.count(me) == 1 and len(readers) >= 4
            # Another instance's pause, straight into Redis: no select runs meanwhile.
            other = RuntimeStore(redis)
            await set_state(other, "openai", a.id, reading(0.95, time.time()))
            generation = sel.view.generation(VIEW_KEY)
            while not sel.view.get(a.id).windows:
                await trio.sleep(TTL_S / 5)
            # The refresher rebuilt the pool cache too: a is out before any select.
            pool = sel._pools[(BUCKET, REQ.model)]
            assert pool.generation > generation
            assert pool.reasons[a.id] == Reason.QUOTA_PAUSED_5H
            moved = await sel.select(REQ)
            assert moved.account.id == b.id and moved.attempts == 1
            nursery.cancel_scope.cancel()
    assert readers.count(me) == 1


async def test_idle_buckets_are_dropped_and_read_again_on_their_next_select(redis):
    """A bucket not selected from within ``active_s`` is no longer refreshed; a select
    after its copy got too old reads it on the request path (refresher or not)."""
    a = make_account("a", concurrency=5)
    sel = await open_selector(redis, [a], SettingsBox())
    readers = count_readers(sel)
    with trio.fail_after(10):
        got = await sel.select(REQ)
        assert len(readers) == 1 and BUCKET in sel.active
        await ViewRefresher(sel, active_s=0.0).refresh_active()
        assert len(readers) == 1 and BUCKET not in sel.active
        await ViewRefresher(sel).refresh_active()  # nothing active: nothing read
        assert len(readers) == 1
        await Reporter(sel, sel.settings).release(got.lease_id, ReleaseOutcome(status=200))
        sel.view.ttl_s = 0  # every copy is too old now
        await sel.select(REQ)
    assert len(readers) == 2


async def test_a_forced_read_waits_for_one_under_way_and_reads_again(redis):
    """The re-read before a 503 must start after the caller decided it needed one:
    a refresh already in flight (the refresher's) does not stand in for it."""
    a = make_account("a", concurrency=5)
    sel = await open_selector(redis, [a], SettingsBox())
    readers = count_readers(sel)
    release = trio.Event()
    read_many = sel.runtime.read_many

    async def slow(platform: str, ids: Any) -> Any:
        if not readers:
            await release.wait()  # the first read hangs until the forced one is queued
        return await read_many(platform, ids)

    sel.runtime.read_many = slow  # type: ignore[method-assign]
    ids = [a.id]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: sel.view.refresh(VIEW_KEY, "openai", ids, force=False))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(lambda: sel.view.refresh(VIEW_KEY, "openai", ids, force=True))
            await trio.testing.wait_all_tasks_blocked()
            assert readers == []  # the forced one waits: it neither skips nor overlaps
            release.set()
    assert len(readers) == 2 and sel.view.generation(VIEW_KEY) == 2


async def test_a_chunked_refresh_reads_every_account_once_and_bumps_the_generation_once(redis):
    """The refresher reads in chunks (so selects run between them): 7 accounts in chunks
    of 3 are three script calls, every state lands, and pool caches rebuild once."""
    accounts = [make_account(f"c{i}", concurrency=5) for i in range(7)]
    sel = await open_selector(redis, accounts, SettingsBox())
    readers = count_readers(sel)
    for acc in accounts:
        await set_state(sel.runtime, "openai", acc.id, {"ewma_err": "0.25"})
    ids = [a.id for a in accounts]
    with trio.fail_after(10):
        await sel.view.refresh(VIEW_KEY, "openai", ids, force=True, chunk=3)
    assert len(readers) == 3 and sel.view.reads == 1
    assert sel.view.generation(VIEW_KEY) == 1
    assert all(sel.view.get(a).error_rate == 0.25 for a in ids)
