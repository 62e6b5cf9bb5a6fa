"""Leases: one Cluster slot per script call, expiry, renewal, and never more than concurrency."""

from __future__ import annotations

import random
import time

import pytest
import trio

from accounts.errors import NotFound, ValidationFailed
from accounts.model import Platform
from scheduler.selection.reports import ReleaseOutcome, Reporter
from scheduler.selection.select import SelectRequest
from scheduler.selection.store import Keys, Refused, parse_lease_id

from ...support import key_slot as slot
from .selectkit import GROUP, SettingsBox, make_account, open_selector, set_state


async def test_every_key_of_one_script_call_shares_a_slot(redis):
    """acquire touches lease + state + session binding; release lease + state + response binding."""
    k = Keys(redis)
    for platform in Platform:
        p = platform.value
        keys = [
            k.leases(p, "acc-1"),
            k.state(p, "acc-1"),
            k.leases(p, "acc-2"),  # runtime_read batches many accounts of one platform
            k.state(p, "acc-2"),
            k.session(p, "group-a", "sess"),
            k.session(p, "other.group", "sess2"),  # an account serves several groups
            k.response(p, "group-a", "resp_1"),
        ]
        assert len({slot(key) for key in keys}) == 1, platform
    assert slot("{123456789}x") == 0x31C3 % 16384  # the CRC16 of Redis' own test vector


def test_lease_ids_are_self_describing():
    ref = parse_lease_id("openai~g.1~acc~abcd")
    assert (ref.platform, ref.group, ref.account_id) == (Platform.OPENAI, "g.1", "acc")
    for bad in ("", "openai~g~acc", "nope~g~a~b", "openai~~a~b", "x" * 300):
        with pytest.raises(ValidationFailed):
            parse_lease_id(bad)


async def test_leases_of_a_silent_client_expire_and_capacity_returns(redis):
    """A gateway that never releases: after the lease TTL the slot is free again."""
    a = make_account("a", concurrency=1)
    sel = await open_selector(redis, [a], SettingsBox(leases={"ttl_s": 1}))
    req = SelectRequest(group=GROUP, platform=Platform.OPENAI, model="m")
    with trio.fail_after(10):
        await sel.select(req)
        refused = await sel.runtime.acquire("openai", GROUP, a.id, concurrency=1, ttl_s=1)
        assert isinstance(refused, Refused) and refused.kind == "full"
        await trio.sleep(1.1)
        again = await sel.select(req)
    assert again.account.id == a.id
    assert await redis.client.zcard(sel.runtime.keys.leases("openai", a.id)) == 1


async def test_renew_extends_and_released_or_unknown_leases(redis):
    a = make_account("a", concurrency=1)
    box = SettingsBox(leases={"ttl_s": 1, "max_ttl_s": 60})
    sel = await open_selector(redis, [a], box)
    reporter = Reporter(sel, box)
    with trio.fail_after(10):
        got = await sel.select(SelectRequest(group=GROUP, platform=Platform.OPENAI, model="m"))
        renewed = await reporter.renew(got.lease_id, 600)  # capped at max_ttl_s
        assert 50 < renewed.expires_at - got.expires_at < 61
        await trio.sleep(1.1)  # past the original TTL: still held
        refused = await sel.runtime.acquire("openai", GROUP, a.id, concurrency=1, ttl_s=1)
        assert isinstance(refused, Refused)
        first = await reporter.release(got.lease_id, ReleaseOutcome(status=200))
        assert first.lease == "released"
        # Released already: a second report is a late one (its outcome still counts).
        second = await reporter.release(got.lease_id, ReleaseOutcome(status=200))
        assert second.lease == "gone"
        with pytest.raises(NotFound):
            await reporter.renew(got.lease_id, None)
        # A lease naming no account of the bucket: 404, and nothing written for it.
        with pytest.raises(NotFound):
            await reporter.release(f"openai~{GROUP}~nobody~ffff", ReleaseOutcome(status=429))
    assert not await redis.client.exists([sel.runtime.keys.state("openai", "nobody")])


async def test_many_tasks_never_exceed_concurrency(redis):
    """40 trio tasks x 15 select/release cycles, concurrency 1-3; lease sets sampled all along."""
    accounts = [make_account(f"c{c}", concurrency=c) for c in (1, 2, 3)]
    box = SettingsBox(wait={"retry_interval_ms": 20})
    sel = await open_selector(redis, accounts, box)
    reporter = Reporter(sel, box)
    keys = {a.id: sel.runtime.keys.leases("openai", a.id) for a in accounts}
    limit = {a.id: a.concurrency for a in accounts}
    seen_max = dict.fromkeys(limit, 0)
    done = trio.Event()
    samples = 0

    async def sampler() -> None:
        nonlocal samples
        while not done.is_set():
            for account_id, key in keys.items():
                n = await redis.client.zcard(key)
                assert n <= limit[account_id]
                seen_max[account_id] = max(seen_max[account_id], n)
            samples += 1

    async def worker() -> None:
        for _ in range(15):
            got = await sel.select(SelectRequest(group=GROUP, platform=Platform.OPENAI,
                                                 model="m", wait_ms=20_000))  # fmt: skip
            await trio.sleep(random.random() * 0.003)
            await reporter.release(got.lease_id, ReleaseOutcome(status=200, latency_ms=3))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sampler)
            async with trio.open_nursery() as workers:
                for _ in range(40):
                    workers.start_soon(worker)
            done.set()
    assert samples > 10
    assert seen_max == limit  # every slot was used, none over
    for key in keys.values():
        assert await redis.client.zcard(key) == 0


async def test_a_late_report_applies_its_effects_pruned_or_not(redis):
    """Issue 10 item 6: a 429 reported after the lease's TTL still rate-limits the account,
    whether or not an acquire pruned the lease first; the answer says the lease was gone,
    and no slot is freed twice (the lease set holds only the fresh acquire's lease)."""
    a = make_account("a", concurrency=2)
    box = SettingsBox(leases={"ttl_s": 1})
    sel = await open_selector(redis, [a], box)
    reporter = Reporter(sel, box)
    req = SelectRequest(group=GROUP, platform=Platform.OPENAI, model="m")
    leases = sel.runtime.keys.leases("openai", a.id)
    late = ReleaseOutcome(status=429, headers={"retry-after": "30"})
    with trio.fail_after(10):
        first = await sel.select(req)
        second = await sel.select(req)
        # Both leases' expiry passes, as Redis judges it (no wait on the wall clock).
        await redis.client.zadd(leases, {first.lease_id: 1, second.lease_id: 1})
        # Nothing pruned yet: both expired leases are still in the set.
        assert await redis.client.zcard(leases) == 2
        done = await reporter.release(first.lease_id, late)
        assert (done.lease, done.effects) == ("gone", ["rate_limited"])
        state = (await sel.runtime.read_many("openai", [a.id]))[a.id]
        assert state.rate_limited_until is not None
        assert 28 < state.rate_limited_until - time.time() <= 31
        await set_state(sel.runtime, "openai", a.id, {"rl_until": "0"})
        # An acquire prunes the other one; its late report applies all the same.
        await sel.runtime.acquire("openai", GROUP, a.id, concurrency=2, ttl_s=30)
        done = await reporter.release(second.lease_id, late)
        assert (done.lease, done.effects) == ("gone", ["rate_limited"])
        state = (await sel.runtime.read_many("openai", [a.id]))[a.id]
    assert state.rate_limited_until is not None and state.rate_limited_until > time.time()
    assert await redis.client.zcard(leases) == 1  # only the fresh acquire's lease
