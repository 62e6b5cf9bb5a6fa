"""The pull feed: every event exactly once, in order, even when transactions commit late.

Guard checked (broken once, seen red): without ``xid < pg_snapshot_xmin(...)``
in FEED, test_a_transaction_committing_late_is_not_skipped loses the late row
and the concurrent test finds rows missing.
"""

from __future__ import annotations

import random

import pytest
import trio

from accounts.errors import ValidationFailed
from scheduler.outbox import Cursor, OutboxStore, enqueue

from .support import insert_events, statuses


async def read_all(
    store: OutboxStore, after: Cursor, limit: int, expect: int
) -> tuple[list[str], Cursor]:
    """Page until ``expect`` events came, then once more (which must be empty).

    An empty page before that is not the end: the feed holds back rows while any
    older transaction is open anywhere on the server (other test sessions share
    it), so we ask again. Polling, because that transaction is not ours to watch.
    """
    keys: list[str] = []
    with trio.fail_after(30):
        while True:
            page = await store.feed(after, limit)
            keys.extend(e.event_key for e in page.events)
            after = Cursor.parse(page.next_cursor)
            if len(keys) >= expect and not page.events:
                return keys, after
            if not page.events:
                await trio.sleep(0.01)


async def test_pages_return_every_event_once_in_order(db):
    store = OutboxStore(db)
    for i in range(5):
        await insert_events(db, 5, None, prefix=f"b{i}-")
    keys, cursor = await read_all(store, Cursor(), 7, expect=25)
    assert keys == [f"b{i}-{j}" for i in range(5) for j in range(1, 6)]
    # Resuming from the last cursor gives nothing; from the start, everything again.
    assert (await store.feed(cursor, 100)).events == []
    assert len((await store.feed(Cursor(), 100)).events) == 25


async def test_a_transaction_committing_late_is_not_skipped(db):
    store = OutboxStore(db)
    holding = trio.Event()
    release = trio.Event()

    async def late_writer() -> None:
        async with db.transaction() as conn:
            # Takes its xid (and the lower id) first, commits last.
            await enqueue(conn, event_key="late", type="t", payload={}, destination=None)
            holding.set()
            await release.wait()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(late_writer)
            await holding.wait()
            async with db.transaction() as conn:
                await enqueue(conn, event_key="early", type="t", payload={}, destination=None)
            # "early" is committed, but an older transaction is still open: not yet.
            page = await store.feed(Cursor(), 100)
            assert page.events == [] and page.next_cursor == str(Cursor())
            release.set()
    ids = {r["event_key"]: r["id"] for r in await db.fetch("SELECT * FROM outbox")}
    assert ids["late"] < ids["early"]
    keys, _ = await read_all(store, Cursor.parse(page.next_cursor), 100, expect=2)
    assert keys == ["late", "early"]


async def test_exactly_once_while_events_commit_concurrently(db):
    store = OutboxStore(db)
    rng = random.Random(7)
    written: list[str] = []
    writers_done = trio.Event()

    async def writer(w: int) -> None:
        for t in range(25):
            async with db.transaction() as conn:
                for e in range(rng.randint(1, 3)):
                    key = f"w{w}-t{t}-e{e}"
                    await enqueue(conn, event_key=key, type="t", payload={}, destination=None)
                    written.append(key)
                    # Hold some transactions open across other writers' commits.
                    for _ in range(rng.randint(0, 3)):
                        await trio.sleep(0)

    async def writers() -> None:
        async with trio.open_nursery() as nursery:
            for w in range(3):
                nursery.start_soon(writer, w)
        writers_done.set()

    read: list[str] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writers)
            cursor = Cursor()
            while not writers_done.is_set():
                page = await store.feed(cursor, 4)
                read.extend(e.event_key for e in page.events)
                cursor = Cursor.parse(page.next_cursor)
                await trio.sleep(0)
    assert read, "the reader never overlapped the writers"
    rest, _ = await read_all(store, cursor, 4, expect=len(written) - len(read))
    read += rest
    assert len(read) == len(set(read)), "an event was served twice"
    assert sorted(read) == sorted(written), "an event was skipped"


async def test_pull_only_rows_move_on_as_the_consumer_acknowledges(db):
    store = OutboxStore(db)
    await insert_events(db, 3, None, prefix="pull")
    await insert_events(db, 1, "http://127.0.0.1:9/h", prefix="hook")
    with trio.fail_after(30):
        # Another session's open transaction may hold the rows back a moment (see read_all).
        while not (first := await store.feed(Cursor(), 2)).events:
            await trio.sleep(0.01)
    assert [e.event_key for e in first.events] == ["pull1", "pull2"]
    assert await statuses(db) == {
        "pull1": "published",
        "pull2": "published",
        "pull3": "pending",
        "hook1": "pending",
    }
    # Coming back with the cursor acknowledges what it covers.
    second = await store.feed(Cursor.parse(first.next_cursor), 10)
    assert [e.event_key for e in second.events] == ["pull3", "hook1"]
    assert await statuses(db) == {
        "pull1": "consumed",
        "pull2": "consumed",
        "pull3": "published",
        "hook1": "pending",  # the dispatcher's, not the feed's
    }


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "1",
        "1.",
        ".1",
        "-1.2",
        "1.2.3",
        "1 .2",
        "18446744073709551616.1",
        "1.9223372036854775808",
    ],
)
def test_malformed_cursors_are_refused(text):
    with pytest.raises(ValidationFailed) as caught:
        Cursor.parse(text)
    assert caught.value.errors[0].field == "after"
