"""Waiters on a full bucket stay calm: one bucket read serves every waiter.

Issue 10 item 3: every wake-up (one per release in the platform) and every
retry period made each waiter force its own full-bucket read and pool rebuild
(20 waiters for 1 s on a full 200-account bucket: 100 reads). Now a release
wake-up reads nothing (the release already patched the view) and the periodic
retry asks for one read started after the wait began, which every waiter shares.
``bench/waiters.py`` prints the figures before and after.
"""

from __future__ import annotations

import math

import trio

from accounts.errors import NoAccountAvailable
from accounts.model import Platform
from scheduler.selection.reports import ReleaseOutcome, Reporter
from scheduler.selection.select import SelectRequest

from .selectkit import GROUP, SettingsBox, make_account, open_selector

ACCOUNTS = 200
WAITERS = 200
WAIT_S = 2.0
RETRY_MS = 250
RELEASE_EVERY_S = 0.1


async def test_200_waiters_cost_one_read_per_retry_period(redis) -> None:  # type: ignore[no-untyped-def]
    accounts = [make_account(f"w{i}", concurrency=1) for i in range(ACCOUNTS)]
    box = SettingsBox(wait={"retry_interval_ms": RETRY_MS})
    sel = await open_selector(redis, accounts, box)
    reporter = Reporter(sel, box)
    req = SelectRequest(group=GROUP, platform=Platform.OPENAI, model="m")
    wait = SelectRequest(
        group=GROUP, platform=Platform.OPENAI, model="m", wait_ms=int(WAIT_S * 1000)
    )
    outcome = {"served": 0, "timed_out": 0, "releases": 0}
    with trio.fail_after(90):
        held = [(await sel.select(req)).lease_id for _ in accounts]

        async def waiter() -> None:
            try:
                held.append((await sel.select(wait)).lease_id)
                outcome["served"] += 1
            except NoAccountAvailable as exc:
                assert exc.exclusions == {"full": ACCOUNTS}
                outcome["timed_out"] += 1

        reads_before = sel.view.reads
        async with trio.open_nursery() as nursery:
            # Releases stop two retry periods before the waiters give up: each one
            # freed slot must have found its waiter by then.
            last_release_at = trio.current_time() + WAIT_S - 2 * RETRY_MS / 1000
            for _ in range(WAITERS):
                nursery.start_soon(waiter)
            while sel.waiters.waiting < WAITERS:  # every waiter is waiting before the first release
                await trio.sleep(0.01)
            while trio.current_time() < last_release_at:
                await reporter.release(held.pop(0), ReleaseOutcome(status=200))
                outcome["releases"] += 1
                await trio.sleep(RELEASE_EVERY_S)
        reads = sel.view.reads - reads_before
    periods = math.ceil(WAIT_S * 1000 / RETRY_MS)
    bound = outcome["releases"] + periods + 1
    print(f"\n{outcome} bucket reads={reads} (bound: releases + {periods} retry periods + 1)")
    # Every release freed one slot that exactly one waiter took; the rest timed out.
    assert outcome["served"] == outcome["releases"] > 0
    assert outcome["served"] + outcome["timed_out"] == WAITERS
    # The bound: one read per release event plus one per retry period (and the
    # one shared read that settles the 200 arrivals' first "full"). Release wake-ups
    # read nothing in fact, so the figure printed is about one per period.
    assert reads <= bound, (reads, bound)
