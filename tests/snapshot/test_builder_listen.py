"""The snapshot builder's LISTEN connection survives the server dropping it.

The builder used to LISTEN on a pooled connection, held for its whole life: the
connection went back to the pool with its listener unless a shielded UNLISTEN
got through first (asyncpg then warns "released to the pool with 1 active
notification listener", an error under ``filterwarnings = error``), it pinned a
pool slot, and when PostgreSQL dropped it (restart, failover,
``pg_terminate_backend``) NOTIFY never woke the builder again. It now listens
on a dedicated connection. These tests kill the listening backend for real and
check that the builder listens again (a NOTIFY still wakes it; the poll is an
hour so only NOTIFY can), closes that connection when stopped, and leaves a
one-connection pool usable.
"""

from __future__ import annotations

import trio

from accounts.db import Database, DatabaseConfig, open_database
from snapshot.builder import CHANNEL, SnapshotBuilder
from snapshot.redis import RedisStore
from snapshot.source import SqlSource

_LISTENERS = (
    "SELECT pid FROM pg_stat_activity"
    " WHERE datname = current_database() AND query = $1 AND pid <> pg_backend_pid()"
)
_LISTEN_SQL = f'LISTEN "{CHANNEL}"'


async def _listener_pids(db: Database) -> list[int]:
    return [r["pid"] for r in await db.fetch(_LISTENERS, _LISTEN_SQL)]


async def _wait_for(predicate) -> None:  # type: ignore[no-untyped-def]
    while not await predicate():
        await trio.sleep(0.02)


async def _woken_by_notify(db: Database, builder: SnapshotBuilder) -> None:
    before = builder.rounds
    while builder.rounds == before:
        await db.execute(f"NOTIFY {CHANNEL}")
        await trio.sleep(0.05)


async def test_builder_listens_again_after_backend_killed(db: Database, redis: RedisStore) -> None:
    builder = SnapshotBuilder(db, redis, SqlSource(db), poll_s=3600, full_rebuild_s=3600)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(builder.run)
            [first] = await _listener_pids(db)
            await _woken_by_notify(db, builder)
            assert await db.fetchval("SELECT pg_terminate_backend($1)", first)

            async def relistened() -> bool:
                pids = await _listener_pids(db)
                return bool(pids) and first not in pids

            await _wait_for(relistened)
            await _woken_by_notify(db, builder)
            nursery.cancel_scope.cancel()
    # Stopped: its dedicated connection is closed, nothing was released with a listener.
    with trio.fail_after(10):
        await _wait_for(lambda: _no_listeners(db))


async def _no_listeners(db: Database) -> bool:
    return not await _listener_pids(db)


async def test_listen_does_not_pin_a_pool_connection(
    aio_loop: None, pg_dsn: str, db: Database, redis: RedisStore
) -> None:
    """With a one-connection pool, the running builder leaves that connection free."""
    async with open_database(DatabaseConfig(dsn=pg_dsn, pool_max=1)) as small:
        builder = SnapshotBuilder(small, redis, SqlSource(small), poll_s=3600, full_rebuild_s=3600)
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                await nursery.start(builder.run)
                assert await small.fetchval("SELECT 1") == 1
                await _woken_by_notify(small, builder)
                nursery.cancel_scope.cancel()
