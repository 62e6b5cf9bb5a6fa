"""select(): the complaints of issue 6 as tests, against a real Redis snapshot and runtime state."""

from __future__ import annotations

import time

import pytest
import trio

from accounts.errors import NoAccountAvailable, NotFound
from accounts.model import Platform, Status
from scheduler.selection.reports import ReleaseOutcome, Reporter
from scheduler.selection.select import Selection, Selector, SelectRequest
from snapshot.keys import Bucket

from .selectkit import GROUP, SettingsBox, make_account, open_selector, reading, set_state

PAUSE = {"quota": {"default_5h_threshold": 0.9}}
# Top-1: the best score always wins, so tests can name the expected account.
BEST = {"top_k": 1}


def req(**kw: object) -> SelectRequest:
    base: dict[str, object] = {"group": GROUP, "platform": Platform.OPENAI, "model": "gpt-4o"}
    base.update(kw)
    return SelectRequest(**base)  # type: ignore[arg-type]


async def pause(sel: Selector, account_id: str, used: float = 0.95) -> None:
    await set_state(sel.runtime, "openai", account_id, reading(used, time.time()))


async def test_paused_accounts_never_fill_the_pool(redis):
    """Ten better-priority accounts are quota-paused; the one healthy account is always picked."""
    paused = [make_account(f"p{i}", priority=0, concurrency=5) for i in range(10)]
    healthy = make_account("healthy", priority=10, concurrency=50)
    box = SettingsBox(**PAUSE, scoring={"top_k": 3, "probe_limit": 3})
    sel = await open_selector(redis, [*paused, healthy], box)
    for a in paused:
        await pause(sel, a.id)
    with trio.fail_after(10):
        for _ in range(20):
            got = await sel.select(req())
            assert got.account.id == healthy.id
            assert got.attempts == 1


async def test_quota_paused_session_binding_is_dropped(redis):
    """Session path: the bound account gets paused -> not used, binding deleted, rebound to B."""
    a = make_account("a", priority=0)
    b = make_account("b", priority=5)
    sel = await open_selector(redis, [a, b], SettingsBox(**PAUSE, scoring=BEST))
    reporter = Reporter(sel, sel.settings)
    with trio.fail_after(10):
        first = await sel.select(req(session_hash="s1"))
        assert first.account.id == a.id and first.path == "pool"
        await reporter.release(first.lease_id, ReleaseOutcome(status=200))
        again = await sel.select(req(session_hash="s1"))
        assert again.account.id == a.id and again.path == "session" and again.sticky
        await reporter.release(again.lease_id, ReleaseOutcome(status=200))
        await pause(sel, a.id)  # as another instance's report would: Redis only
        # This instance's view still shows a unpaused (it is fresh: nothing re-reads
        # it); the state the acquire script returns is what catches the pause.
        assert not sel.view.get(a.id).windows
        assert not sel.view.stale((GROUP, "openai"), time.monotonic(), sel.view.request_max_age_s)
        moved = await sel.select(req(session_hash="s1"))
    assert moved.account.id == b.id
    key = sel.runtime.keys.session("openai", GROUP, "s1")
    assert await redis.client.get(key) == b.id


async def test_quota_paused_response_binding_is_dropped(redis):
    """previous_response_id path: a paused bound account is skipped and its binding deleted."""
    a = make_account("a", priority=0, concurrency=3)
    b = make_account("b", priority=5, concurrency=3)
    sel = await open_selector(redis, [a, b], SettingsBox(**PAUSE, scoring=BEST))
    reporter = Reporter(sel, sel.settings)
    with trio.fail_after(10):
        first = await sel.select(req())
        assert first.account.id == a.id
        await reporter.release(first.lease_id, ReleaseOutcome(status=200, response_id="resp_1"))
        follow = await sel.select(req(previous_response_id="resp_1"))
        assert follow.account.id == a.id and follow.path == "response"
        await reporter.release(follow.lease_id, ReleaseOutcome(status=200))
        # The pause lands in Redis; this instance's view is still fresh (stale reading).
        await pause(sel, a.id)
        moved = await sel.select(req(previous_response_id="resp_1"))
    assert moved.account.id == b.id and moved.path == "pool"
    assert await redis.client.get(sel.runtime.keys.response("openai", GROUP, "resp_1")) is None


async def test_full_sticky_account_spills_over_and_keeps_binding(redis):
    a = make_account("a", priority=0, concurrency=1)
    b = make_account("b", priority=5, concurrency=1)
    sel = await open_selector(redis, [a, b], SettingsBox(scoring=BEST))
    reporter = Reporter(sel, sel.settings)
    key = sel.runtime.keys.session("openai", GROUP, "s9")
    with trio.fail_after(10):
        held = await sel.select(req(session_hash="s9"))
        assert held.account.id == a.id
        spill = await sel.select(req(session_hash="s9"))
        assert spill.account.id == b.id and spill.path == "pool"
        assert await redis.client.get(key) == a.id
        await reporter.release(held.lease_id, ReleaseOutcome(status=200))
        back = await sel.select(req(session_hash="s9"))
    assert back.account.id == a.id and back.path == "session"


async def test_no_available_accounts_counts_every_reason(redis):
    now = time.time()
    accounts = [
        make_account("disabled", status=Status.DISABLED),
        make_account("claude-only", models=("claude-*",)),
        make_account("limited"),
        make_account("full", concurrency=1),
        make_account("paused"),
        make_account("excluded"),
    ]
    sel = await open_selector(redis, accounts, SettingsBox(**PAUSE))
    await set_state(
        sel.runtime, "openai", accounts[2].id, {"rl_until": str(int((now + 40) * 1000))}
    )
    await pause(sel, accounts[4].id)
    with trio.fail_after(10):
        await sel.runtime.acquire("openai", GROUP, accounts[3].id, concurrency=1, ttl_s=60)
        with pytest.raises(NoAccountAvailable) as info:
            await sel.select(req(exclude=(accounts[5].id,)))
    assert info.value.exclusions == {
        "disabled": 1,
        "model_unsupported": 1,
        "rate_limited": 1,
        "full": 1,
        "quota_paused_5h": 1,
        "excluded_by_request": 1,
    }
    assert 0 < info.value.retry_after_s <= 40


async def test_load_factor_changes_the_pick_at_low_load(redis):
    """One lease each: capacity 300 vs 200 is 0.33 % vs 0.5 % load -- the float decides."""
    a = make_account("a", concurrency=10, load_factor=200.0)
    b = make_account("b", concurrency=10, load_factor=300.0)
    only_load = {"priority": 0, "load": 1, "error_rate": 0, "ttft": 0,
                 "quota_headroom": 0, "reset_soon": 0, "top_k": 1}  # fmt: skip
    sel = await open_selector(redis, [a, b], SettingsBox(scoring=only_load))
    with trio.fail_after(10):
        for acc in (a, b):
            await sel.runtime.acquire("openai", GROUP, acc.id, concurrency=10, ttl_s=60)
        sel.view.ttl_s = 0
        picked = await sel.select(req())
    assert picked.account.id == b.id


async def test_unknown_group_is_404(redis):
    sel = await open_selector(redis, [make_account("a")], SettingsBox())
    with trio.fail_after(10), pytest.raises(NotFound):
        await sel.select(SelectRequest(group="nope", platform=Platform.OPENAI, model="m"))


async def test_a_bucket_left_without_accounts_is_404(redis):
    """A known bucket whose snapshot is now empty answers NotFound, also once loaded."""
    sel = await open_selector(redis, [], SettingsBox())
    assert sel.buckets.get(Bucket(GROUP, Platform.OPENAI)) is not None  # loaded, and empty
    for _ in range(2):
        with trio.fail_after(10), pytest.raises(NotFound) as err:
            await sel.select(req())
        assert err.value.details == {"group": GROUP, "platform": "openai"}


async def until_waiting(sel: Selector, n: int = 1) -> float:
    """Return (trio time) once ``n`` selects of ``sel`` are waiting for a release."""
    while sel.waiters.waiting < n:
        await trio.sleep(0.001)
    return trio.current_time()


async def test_wait_succeeds_on_release_and_times_out_otherwise(redis):
    a = make_account("a", concurrency=1)
    sel = await open_selector(redis, [a], SettingsBox(wait={"retry_interval_ms": 5000}))
    reporter = Reporter(sel, sel.settings)
    with trio.fail_after(10):
        held = await sel.select(req())
        with pytest.raises(NoAccountAvailable) as info:
            await sel.select(req(wait_ms=200))
        assert info.value.exclusions == {"full": 1}
        got: list[Selection] = []

        async def waiter() -> None:
            got.append(await sel.select(req(wait_ms=8000)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            waiting_at = await until_waiting(sel)
            assert not got
            # The retry interval is 5 s: only the release wake-up can finish this quickly.
            released_at = trio.current_time()
            await reporter.release(held.lease_id, ReleaseOutcome(status=200))
        assert got[0].account.id == a.id
        # It did wait for the release (not served before it), and only the release
        # ended the wait (the retry would have taken 5 s).
        assert 0 < released_at - waiting_at <= got[0].waited_s < 4


async def test_release_on_another_instance_wakes_a_waiter(redis):
    """The wake-up travels by pub/sub: a release through another Selector ends the wait."""
    from scheduler.selection.watcher import ReleaseWatcher

    a = make_account("a", concurrency=1)
    box = SettingsBox(wait={"retry_interval_ms": 5000})
    sel1 = await open_selector(redis, [a], box)
    sel2 = await open_selector(redis, [a], box)
    with trio.fail_after(10):
        held = await sel1.select(req())
        async with trio.open_nursery() as nursery:
            await nursery.start(ReleaseWatcher(sel2).run)
            got: list[Selection] = []

            async def waiter() -> None:
                got.append(await sel2.select(req(wait_ms=8000)))
                nursery.cancel_scope.cancel()

            nursery.start_soon(waiter)
            waiting_at = await until_waiting(sel2)
            released_at = trio.current_time()
            await Reporter(sel1, box).release(held.lease_id, ReleaseOutcome(status=200))
        assert got and 0 < released_at - waiting_at <= got[0].waited_s < 4


def test_bucket_identity():
    assert str(Bucket(GROUP, Platform.OPENAI)) == "g1/openai"
