"""Timeouts and cancellations racing a poll that sees SUCCEEDED: one end, one settlement.

Real PostgreSQL, the simulator over HTTP, the real adapter, the daemon's own
write path (``TaskWriter``) and sweeper: for every task a poll's write of the
upstream's SUCCEEDED, a cancellation (the proposal ``POST …/cancel`` ends in)
and the sweeper's timeout start together, several times over.
"""

from __future__ import annotations

from dataclasses import replace

import msgspec
import trio

from accounts.crypto import Cipher, CryptoConfig
from accounts.db import Database
from accounts.inputs import AccountCreate
from accounts.model import Account
from accounts.repository import AccountRepository
from scheduler.core.config import UpstreamConfig
from scheduler.selection.credentials import Credentials
from scheduler.tasks._apply import Accounts, TaskWriter, proposal_from
from scheduler.tasks._model import Held, NewTask
from scheduler.tasks._states import Billing, Event, Proposal, TaskStatus
from scheduler.tasks._sweeper import Sweeper
from scheduler.tasks.store import TaskStore
from scheduler.upstream import (
    Upstream,
    UpstreamRequest,
    UpstreamState,
    UpstreamStatus,
    open_upstream,
)
from tests.support import CRYPTO_KEY

from .taskkit import AUDIT_SQL, DROP_AUDIT_SQL, MODEL, check_audit, check_books

N = 60


async def test_cancel_timeout_and_success_race_settle_once(db: Database, simulator) -> None:
    sim_url, _sim = simulator(seed=9, duration_min_s=0.05, duration_max_s=0.1)
    await db.execute(AUDIT_SQL)
    cipher = Cipher(CryptoConfig(keys=[CRYPTO_KEY]))
    repo = AccountRepository(db, cipher)
    account = await repo.create(_account(sim_url))
    store = TaskStore(db, max_in_flight=1000)
    await store.topup("racer", 10**12, "t")
    async with open_upstream(UpstreamConfig(timeout_s=5.0, submit_timeout_s=5.0)) as upstream:
        writer = TaskWriter(store, upstream)
        accounts = Accounts(repo, Credentials(cipher).get)
        sweeper = Sweeper(
            store, writer, upstream, accounts, interval_s=3600, submitting_stale_s=3600
        )
        # Every task is finished upstream, and past its deadline here.
        held, statuses = await _finished_upstream(store, upstream, account)
        await db.execute("UPDATE tasks SET deadline = now() - interval '1 second'")
        outcomes: dict[str, list[str]] = {}

        async def poll(i: int) -> None:
            proposal = proposal_from(statuses[i])
            assert proposal is not None
            r = await writer.write(_copy(held[i]), proposal, status=statuses[i])
            outcomes.setdefault(held[i].id, []).append(f"poll:{r.written.value}")

        async def cancel(i: int) -> None:
            proposal = Proposal(Event.CANCELLED, TaskStatus.CANCELLED, failure_reason="cancelled")
            r = await writer.write_latest(held[i].id, proposal)
            outcomes.setdefault(held[i].id, []).append(f"cancel:{r.written.value}")

        async def time_out(i: int) -> None:
            r = await sweeper._time_out(_copy(held[i]))
            outcomes.setdefault(held[i].id, []).append(f"timeout:{r}")

        # A few tasks at a time (the test's pool has 5 connections), each task's
        # five racers started together.
        limit = trio.Semaphore(3)

        async def race(i: int) -> None:
            async with limit, trio.open_nursery() as racers:
                for fn in (poll, cancel, time_out, poll, cancel):
                    racers.start_soon(fn, i)

        async with trio.open_nursery() as nursery:
            for i in range(N):
                nursery.start_soon(race, i)
    winners = {
        task_id: [o for o in seen if o.endswith(":finished") or o == "timeout:timed_out"]
        for task_id, seen in outcomes.items()
    }
    assert all(len(w) == 1 for w in winners.values()), winners
    ends = {r["status"] for r in await db.fetch("SELECT status FROM tasks")}
    assert ends <= {"succeeded", "cancelled", "timed_out"}
    assert len(ends) >= 2, f"the race was not a race: every task ended {ends}"
    await check_books(db)
    await check_audit(db)
    await db.execute(DROP_AUDIT_SQL)


PARAMS = {"prompt": "race", "duration": 5}


async def _finished_upstream(
    store: TaskStore, upstream: Upstream, account: Account
) -> tuple[list[Held], list[UpstreamStatus]]:
    """N tasks recorded and submitted (PENDING here), each already SUCCEEDED upstream."""
    adapter = upstream.adapter("dashscope")
    creds = {"api_key": "sk-race"}
    billing = Billing(1, 1000, 180_000)
    held = []
    for _ in range(N):
        new = NewTask(
            owner="racer", group="default", platform="dashscope", kind="video", model=MODEL,
            params=PARAMS, billing=billing, deadline_s=3600,
        )  # fmt: skip
        task = (await store.create(new)).task
        req = UpstreamRequest(
            task_id=task.id, platform="dashscope", model=MODEL, kind="video", params=PARAMS
        )
        answer = await adapter.submit(account, creds, req)
        done = await store.submitted(
            task.id, task.version, task.cost_held, status=TaskStatus.PENDING,
            upstream_id=answer.upstream_id, account_id=account.id, billing=billing,
            poll_in_s=3600,
        )  # fmt: skip
        assert done is not None
        held.append(done[0])
    statuses = []
    for h in held:
        assert h.snapshot.upstream_id is not None
        with trio.fail_after(10):
            while True:
                status = await adapter.fetch(account, creds, h.snapshot.upstream_id)
                if status.state is UpstreamState.SUCCEEDED:
                    break
                await trio.sleep(0.05)
        statuses.append(status)
    return held, statuses


def _account(sim_url: str) -> AccountCreate:
    return msgspec.convert(
        {
            "name": "race", "platform": "dashscope", "groups": ["default"], "concurrency": 100,
            "base_url": sim_url, "credentials": {"api_key": "sk-race"},
        },
        AccountCreate,
    )  # fmt: skip


def _copy(held: Held) -> Held:
    """Each racer holds its own copy, as separate instances would."""
    return replace(held)
