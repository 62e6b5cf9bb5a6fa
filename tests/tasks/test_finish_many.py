"""TaskStore.finish_many: many terminal transitions in one transaction, each its own CAS.

Guards checked (broken once, seen red): the version check in FINISH_MANY (dropped:
the stale item settled too; the status check alone still kept the race test
green), and the winners-only settlement (entries written for every item: both
tests failed on the unique (task, kind) constraint of the ledger).
"""

from __future__ import annotations

import trio

from accounts.db import Database
from scheduler.tasks._states import Billing, Event, Proposal, Snapshot, TaskStatus, plan, settlement
from scheduler.tasks.store import Finish, TaskStore

from .test_store import _pending

BILLING = Billing(1, 1000, 12)
CURRENT = Snapshot(status=TaskStatus.PENDING, upstream_id="up-1")


def finish(task_id: str, version: int, status: TaskStatus, units: int | None = 7) -> Finish:
    change = plan(CURRENT, Proposal(Event.OBSERVED, status, result_urls=("http://r",)))
    assert change is not None and change.settles
    return Finish(task_id, version, change, settlement(status, BILLING, units), {"video_count": 1})


async def test_winners_settle_like_the_single_path_and_a_stale_item_does_not(
    db: Database,
) -> None:
    store = TaskStore(db, max_in_flight=10)
    await store.topup("alice", 1000, "t1")
    (a, va), (b, vb), (c, vc), (d, vd) = [await _pending(store) for _ in range(4)]
    # d through the single path, for comparison.
    single = finish(d, vd, TaskStatus.SUCCEEDED)
    await store.apply(d, vd, single.change, billing=BILLING, settle=single.settle, usage={})
    won = await store.finish_many(
        [
            finish(a, va, TaskStatus.SUCCEEDED),
            finish(b, vb, TaskStatus.FAILED),
            finish(c, vc - 1, TaskStatus.SUCCEEDED),  # stale: another writer moved it on
        ]
    )
    assert won == {a: va + 1, b: vb + 1}
    assert await store.ledger_of(a) == await store.ledger_of(d) == [
        ("hold", -10), ("hold_adjust", -2), ("release", 12), ("capture", -7)
    ]  # fmt: skip
    assert [k for k, _ in await store.ledger_of(b)] == ["hold", "hold_adjust", "release"]
    assert [k for k, _ in await store.ledger_of(c)] == ["hold", "hold_adjust"]
    events = {
        r["event_key"]: r for r in await db.fetch("SELECT event_key, type, payload FROM outbox")
    }
    assert set(events) == {f"task:{a}:succeeded", f"task:{b}:failed", f"task:{d}:succeeded"}
    ours, theirs = (
        events[f"task:{a}:succeeded"]["payload"],
        events[f"task:{d}:succeeded"]["payload"],
    )
    assert sorted(ours) == sorted(theirs)
    assert {k: v for k, v in ours.items() if k not in ("id", "finished_at")} == {
        k: v for k, v in theirs.items() if k not in ("id", "finished_at")
    }
    assert (await store.get(a)).status is TaskStatus.SUCCEEDED  # type: ignore[union-attr]
    assert (await store.get(c)).status is TaskStatus.PENDING  # type: ignore[union-attr]
    credit = await store.credit("alice")
    assert credit.held == 12  # c only
    assert credit.balance == credit.topups - credit.captured - credit.held


async def test_batches_racing_single_writers_settle_each_task_once(db: Database) -> None:
    store = TaskStore(db, max_in_flight=100)
    await store.topup("alice", 10_000, "t1")
    tasks = [await _pending(store) for _ in range(30)]
    settled: list[str] = []

    async def batch(status: TaskStatus) -> None:
        won = await store.finish_many([finish(t, v, status) for t, v in tasks])
        settled.extend(won)

    async def one(task_id: str, version: int) -> None:
        item = finish(task_id, version, TaskStatus.CANCELLED, None)
        if await store.apply(task_id, version, item.change, billing=BILLING, settle=item.settle):
            settled.append(task_id)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(batch, TaskStatus.SUCCEEDED)
            for task_id, version in tasks[::2]:
                nursery.start_soon(one, task_id, version)
            nursery.start_soon(batch, TaskStatus.FAILED)
    assert sorted(settled) == sorted(t for t, _ in tasks)  # each exactly once
    releases = await db.fetchval("SELECT count(*) FROM ledger WHERE kind = 'release'")
    events = await db.fetchval("SELECT count(*) FROM outbox")
    assert releases == events == len(tasks)
    credit = await store.credit("alice")
    assert credit.held == 0
    assert credit.balance == credit.topups - credit.captured
