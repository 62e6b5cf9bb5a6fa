"""TaskStore against real PostgreSQL: record first, CAS, settlement in one transaction."""

from __future__ import annotations

import pytest
import trio

from accounts.db import CheckViolation, Database, UniqueViolation
from scheduler.tasks._model import NewTask
from scheduler.tasks._states import Billing, Event, Proposal, Snapshot, TaskStatus, plan, settlement
from scheduler.tasks.errors import InsufficientCredit, TooManyInFlight
from scheduler.tasks.store import TaskStore


def new_task(owner: str = "alice", hold: int = 10, key: str | None = None) -> NewTask:
    return NewTask(
        owner=owner,
        group="default",
        platform="dashscope",
        kind="video",
        model="wan-video",
        params={"prompt": "a cat"},
        billing=Billing(price=1, ratio_permille=1000, hold=hold),
        deadline_s=3600,
        idempotency_key=key,
    )


async def counts(db: Database) -> tuple[int, int]:
    return (
        await db.fetchval("SELECT count(*) FROM tasks"),
        await db.fetchval("SELECT count(*) FROM ledger WHERE kind <> 'topup'"),
    )


async def test_create_records_task_and_hold_in_one_transaction(db: Database) -> None:
    store = TaskStore(db, max_in_flight=10)
    await store.topup("alice", 100, "t1")
    created = await store.create(new_task())
    assert created.created and created.task.status is TaskStatus.SUBMITTING
    assert await store.ledger_of(created.task.id) == [("hold", -10)]
    assert (await store.credit("alice")).balance == 90
    listed = await store.list_tasks(owner="alice")
    assert [t.id for t in listed] == [created.task.id]


async def test_402_and_429_record_nothing(db: Database) -> None:
    store = TaskStore(db, max_in_flight=2)
    with pytest.raises(InsufficientCredit):
        await store.create(new_task(hold=1))
    assert await counts(db) == (0, 0)
    await store.topup("alice", 100, "t1")
    await store.create(new_task())
    await store.create(new_task())
    with pytest.raises(TooManyInFlight):
        await store.create(new_task())
    assert await counts(db) == (2, 2)
    assert await db.fetchval("SELECT count(*) FROM credit_balances") == 1


async def test_same_key_concurrently_one_task_one_hold(db: Database) -> None:
    store = TaskStore(db, max_in_flight=100)
    await store.topup("alice", 1000, "t1")
    results = []

    async def submit() -> None:
        results.append(await store.create(new_task(key="k-1")))

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(submit)
    assert len({r.task.id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert await counts(db) == (1, 1)


async def test_balance_check_is_serialised_per_owner(db: Database) -> None:
    store = TaskStore(db, max_in_flight=100)
    await store.topup("alice", 35, "t1")
    outcomes: list[str] = []

    async def submit() -> None:
        try:
            await store.create(new_task(hold=10))
            outcomes.append("ok")
        except InsufficientCredit:
            outcomes.append("402")

    async with trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(submit)
    assert sorted(outcomes) == ["402"] * 3 + ["ok"] * 3
    assert (await store.credit("alice")).balance == 5


async def _pending(store: TaskStore) -> tuple[str, int]:
    created = await store.create(new_task())
    held = await store.submitted(
        created.task.id,
        created.task.version,
        created.task.cost_held,
        status=TaskStatus.PENDING,
        upstream_id="up-1",
        account_id="00000000-0000-0000-0000-000000000001",
        billing=Billing(1, 1000, 12),
        poll_in_s=0,
    )
    assert held is not None
    return held[0].id, held[0].version


async def test_submitted_adjusts_the_hold_once_and_cas_loses_the_second_time(db: Database) -> None:
    store = TaskStore(db, max_in_flight=10)
    await store.topup("alice", 100, "t1")
    created = await store.create(new_task())
    args = dict(
        status=TaskStatus.PENDING,
        upstream_id="u",
        account_id="00000000-0000-0000-0000-000000000001",
        billing=Billing(1, 1000, 12),
        poll_in_s=0,
    )
    t = created.task
    assert await store.submitted(t.id, t.version, t.cost_held, **args) is not None  # type: ignore[arg-type]
    assert await store.submitted(t.id, t.version, t.cost_held, **args) is None  # type: ignore[arg-type]
    assert await store.ledger_of(created.task.id) == [("hold", -10), ("hold_adjust", -2)]


async def test_terminal_cas_settles_once_and_writes_one_event(db: Database) -> None:
    store = TaskStore(db, max_in_flight=10)
    await store.topup("alice", 100, "t1")
    task_id, version = await _pending(store)
    billing = Billing(1, 1000, 12)
    current = Snapshot(status=TaskStatus.PENDING, upstream_id="up-1")
    won = lost = 0

    async def finish(status: TaskStatus) -> None:
        nonlocal won, lost
        change = plan(current, Proposal(Event.OBSERVED, status, result_urls=("http://r",)))
        assert change is not None
        done = await store.apply(
            task_id, version, change, billing=billing, settle=settlement(status, billing, 7)
        )
        if done is None:
            lost += 1
        else:
            won += 1

    async with trio.open_nursery() as nursery:
        for status in [TaskStatus.SUCCEEDED, TaskStatus.CANCELLED, TaskStatus.TIMED_OUT] * 3:
            nursery.start_soon(finish, status)
    assert (won, lost) == (1, 8)
    kinds = [k for k, _ in await store.ledger_of(task_id)]
    assert kinds.count("release") == 1
    assert await db.fetchval("SELECT count(*) FROM outbox") == 1
    credit = await store.credit("alice")
    assert credit.held == 0
    assert credit.balance == credit.topups - credit.captured


async def test_unchanged_plan_writes_nothing(db: Database) -> None:
    store = TaskStore(db, max_in_flight=10)
    await store.topup("alice", 100, "t1")
    task_id, version = await _pending(store)
    current = Snapshot(status=TaskStatus.PENDING, upstream_id="up-1")
    assert plan(current, Proposal(Event.OBSERVED, TaskStatus.PENDING)) is None
    change = plan(current, Proposal(Event.OBSERVED, TaskStatus.RUNNING, progress=10))
    assert change is not None
    assert await store.apply(task_id, version, change) == version + 1
    assert await store.apply(task_id, version, change) is None


async def test_trigger_refuses_leaving_a_terminal_state_and_ledger_is_append_only(
    db: Database,
) -> None:
    store = TaskStore(db, max_in_flight=10)
    await store.topup("alice", 100, "t1")
    task_id, version = await _pending(store)
    billing = Billing(1, 1000, 12)
    change = plan(
        Snapshot(status=TaskStatus.PENDING), Proposal(Event.DEADLINE, TaskStatus.TIMED_OUT)
    )
    assert change is not None
    await store.apply(
        task_id, version, change, billing=billing,
        settle=settlement(TaskStatus.TIMED_OUT, billing, None),
    )  # fmt: skip
    with pytest.raises(CheckViolation):
        await db.execute("UPDATE tasks SET status = 'running' WHERE id = $1", task_id)
    with pytest.raises(CheckViolation):
        await db.execute("UPDATE ledger SET amount = 0")
    with pytest.raises(CheckViolation):
        await db.execute("DELETE FROM ledger")
    with pytest.raises(UniqueViolation):
        await db.execute(
            "INSERT INTO ledger (owner, kind, amount, task_id) VALUES ('alice', 'release', 1, $1)",
            task_id,
        )
    # Balance is always the sum of the entries.
    assert (
        await db.fetchval("SELECT sum(amount) FROM ledger") == (await store.credit("alice")).balance
    )


async def test_topup_is_idempotent_per_key(db: Database) -> None:
    store = TaskStore(db, max_in_flight=10)
    assert await store.topup("bob", 50, "k")
    assert not await store.topup("bob", 50, "k")
    with pytest.raises(ValueError):
        await store.topup("bob", 60, "k")
    assert (await store.credit("bob")).balance == 50


async def test_claim_leases_a_batch_and_reaping_frees_an_expired_lease(db: Database) -> None:
    store = TaskStore(db, max_in_flight=100)
    await store.topup("alice", 10**6, "t1")
    for _ in range(5):
        await _pending(store)
    await store.register_lease("a/1", "a", 0.2)
    await store.register_lease("b/1", "b", 30.0)
    claimed = await store.claim("a/1", 3)
    assert len(claimed) == 3
    assert len(await store.claim("b/1", 10)) == 2  # SKIP LOCKED / leased: only the rest
    assert await store.claim("b/1", 10) == []
    with trio.fail_after(5):
        while await db.fetchval("SELECT expires_at > now() FROM task_leases WHERE token = 'a/1'"):
            await trio.sleep(0.05)
    # Expired but not reaped: nobody took its tasks, so its holder may renew it.
    assert await store.reap("a/1") == 0
    assert await store.renew_lease("a/1", 0.2)
    with trio.fail_after(5):
        while await db.fetchval("SELECT expires_at > now() FROM task_leases WHERE token = 'a/1'"):
            await trio.sleep(0.05)
    # Reaped by another poller: its tasks are free again and the lease is gone for good.
    assert await store.reap("b/1") == 3
    assert not await store.renew_lease("a/1", 30.0)
    assert len(await store.claim("b/1", 10)) == 3
