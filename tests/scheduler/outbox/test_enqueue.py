"""enqueue(): inside the caller's transaction, idempotent on event_key, wakes dispatchers."""

from __future__ import annotations

import pytest
import trio

from scheduler.outbox import enqueue
from scheduler.outbox._queries import CHANNEL


async def test_enqueue_inserts_once_and_rolls_back_with_the_caller(db):
    async with db.transaction() as conn:
        assert await enqueue(
            conn,
            event_key="task:1:succeeded",
            type="task.succeeded",
            payload={"id": "1"},
            destination="http://127.0.0.1:1/hook",
        )
        # Same key again in the same transaction: no second row.
        assert not await enqueue(
            conn,
            event_key="task:1:succeeded",
            type="task.succeeded",
            payload={"id": "other"},
            destination=None,
        )
    with pytest.raises(RuntimeError):
        async with db.transaction() as conn:
            assert await enqueue(
                conn,
                event_key="task:2:failed",
                type="task.failed",
                payload={},
                destination=None,
            )
            raise RuntimeError("the caller's change failed")
    rows = await db.fetch("SELECT event_key, payload, status, attempts, max_attempts FROM outbox")
    assert [
        (r["event_key"], r["payload"], r["status"], r["attempts"], r["max_attempts"]) for r in rows
    ] == [("task:1:succeeded", {"id": "1"}, "pending", 0, 8)]


async def test_enqueue_rejects_bad_arguments_and_writes_nothing(db):
    async with db.acquire() as conn:
        for kwargs in (
            {"event_key": "", "type": "t", "destination": None},
            {"event_key": "k", "type": "", "destination": None},
            {"event_key": "k", "type": "t", "destination": "ftp://x"},
            {"event_key": "k", "type": "t", "destination": None, "max_attempts": 0},
        ):
            with pytest.raises(ValueError):
                await enqueue(conn, payload={}, **kwargs)
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0


async def test_enqueue_notifies_at_commit_for_webhook_rows_only(db):
    got: list[str] = []
    arrived = trio.Event()

    def on_notify(payload: str) -> None:
        got.append(payload)
        if len(got) == 2:
            arrived.set()

    with trio.fail_after(10):
        async with db.listen(CHANNEL, on_notify):
            async with db.transaction() as conn:
                await enqueue(conn, event_key="pull", type="t", payload={}, destination=None)
            # A marker in between: had the pull-only row notified, it would come first.
            await db.execute("SELECT pg_notify($1, 'marker')", CHANNEL)
            async with db.transaction() as conn:
                await enqueue(
                    conn,
                    event_key="hook",
                    type="t",
                    payload={},
                    destination="https://example.com/h",
                )
            await arrived.wait()
    assert got == ["marker", ""]
