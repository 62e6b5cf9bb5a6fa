"""The runtime view: what a read brings in never undoes a newer local write.

Issue 10 item 9: a chunked read's reply used to be applied whole, erasing
``put()``s made while it was on its way (a pause written by this instance's
own release). The test holds a real read's reply between Redis and the view
(the store method is wrapped, Redis is real) while the release lands.
"""

from __future__ import annotations

from typing import Any

import trio

from accounts.model import Platform
from scheduler.selection.reports import ReleaseOutcome, Reporter
from scheduler.selection.select import SelectRequest
from scheduler.selection.store import EMPTY

from .selectkit import GROUP, SettingsBox, make_account, open_selector

REQ = SelectRequest(group=GROUP, platform=Platform.OPENAI, model="gpt-4o")
VIEW_KEY = (GROUP, "openai")


async def test_a_release_during_a_chunked_read_survives_it(redis) -> None:  # type: ignore[no-untyped-def]
    a = make_account("a", priority=0, concurrency=5)
    b = make_account("b", priority=5, concurrency=5)
    box = SettingsBox(scoring={"top_k": 1})
    sel = await open_selector(redis, [a, b], box)
    reporter = Reporter(sel, box)
    ids = [a.id, b.id]
    answered, go = trio.Event(), trio.Event()
    read_many = sel.runtime.read_many

    async def held_reply(platform: str, chunk: Any) -> Any:
        reply = await read_many(platform, chunk)  # Redis answered: a is not limited yet
        if a.id in chunk:
            answered.set()
            await go.wait()
        return reply

    with trio.fail_after(10):
        got = await sel.select(REQ)
        assert got.account.id == a.id
        sel.runtime.read_many = held_reply  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: sel.view.refresh(VIEW_KEY, "openai", ids, chunk=1, force=True)
            )
            await answered.wait()
            # This instance's own 429 lands while the older reply is on its way.
            done = await reporter.release(
                got.lease_id, ReleaseOutcome(status=429, headers={"retry-after": "30"})
            )
            assert "rate_limited" in done.effects
            assert sel.view.get(a.id).rate_limited_until is not None
            go.set()
        assert sel.view.get(a.id).rate_limited_until is not None  # not erased by the old reply
        assert (await sel.select(REQ)).account.id == b.id

        # The other way round: a read whose request left after a local write wins.
        sel.runtime.read_many = read_many  # type: ignore[method-assign]
        sel.view.patch(b.id, error_rate=0.9)  # local only, Redis says 0
        await sel.view.refresh(VIEW_KEY, "openai", ids, force=True)
    assert sel.view.get(b.id).error_rate == 0.0


async def test_idle_accounts_share_one_empty_state(redis: Any) -> None:
    """A runtime read of accounts with no state at all gives the one shared EMPTY record
    (memory: bench/rss.py), and an account with a lease or any field its own."""
    accounts = [make_account(f"idle{i}", concurrency=2) for i in range(3)]
    sel = await open_selector(redis, accounts, SettingsBox())
    held = await sel.runtime.acquire("openai", GROUP, accounts[0].id, concurrency=2, ttl_s=30)
    await sel.runtime.set_state("openai", accounts[1].id, {"rl_until": "1"})
    states = await sel.runtime.read_many("openai", [a.id for a in accounts])
    assert states[accounts[2].id] is EMPTY
    assert states[accounts[0].id].leases == 1 and held is not None
    assert states[accounts[1].id] is not EMPTY
    assert states[accounts[1].id].rate_limited_until is not None
