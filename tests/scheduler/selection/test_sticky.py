"""Sticky bindings across instances: a hard failure deletes a binding only if it is still ours.

Issue 10 item 10: ``_sticky.py`` deleted the session binding without checking
its value, while its local cache may be up to 2 s old: an instance that still
believed "s -> a" erased the binding another instance had just made ("s -> b").
The delete is a compare-and-delete in Lua now.
"""

from __future__ import annotations

import time

import trio

from accounts.model import Platform
from scheduler.selection.reports import ReleaseOutcome, Reporter
from scheduler.selection.select import SelectRequest

from .selectkit import GROUP, SettingsBox, make_account, open_selector, reading, set_state

PAUSE = {"quota": {"default_5h_threshold": 0.9}, "scoring": {"top_k": 1}}


def req(**kw: object) -> SelectRequest:
    return SelectRequest(group=GROUP, platform=Platform.OPENAI, model="m", session_hash="s", **kw)  # type: ignore[arg-type]


async def test_a_stale_instance_does_not_erase_another_instances_rebind(redis) -> None:  # type: ignore[no-untyped-def]
    a = make_account("a", priority=0, concurrency=5)
    b = make_account("b", priority=5, concurrency=5)
    c = make_account("c", priority=9, concurrency=5)
    box = SettingsBox(**PAUSE)
    one = await open_selector(redis, [a, b, c], box)
    two = await open_selector(redis, [a, b, c], box)
    key = one.runtime.keys.session("openai", GROUP, "s")
    with trio.fail_after(20):
        first = await one.select(req())
        assert first.account.id == a.id and await redis.client.get(key) == a.id
        await Reporter(one, box).release(first.lease_id, ReleaseOutcome(status=200))

        # a is quota-paused (in Redis). Instance two meets the binding, drops it
        # (it still named a) and re-binds the session to b.
        await set_state(two.runtime, "openai", a.id, reading(0.95, time.time()))
        moved = await two.select(req())
        assert moved.account.id == b.id and await redis.client.get(key) == b.id
        await Reporter(two, box).release(moved.lease_id, ReleaseOutcome(status=200))

        # Instance one still has "s -> a" cached (fresh) and a stale view of a: it tries
        # a, learns of the pause from the acquire's reply, and must not delete b's binding.
        assert one.bindings.lookup(key) == (True, a.id)
        spill = await one.select(req(exclude=(b.id,)))
        assert spill.account.id == c.id and spill.path == "pool"
    assert await redis.client.get(key) == b.id  # erased and re-bound to c without the CAS
    assert one.bindings.lookup(key) == (True, b.id)
