"""The builder marks ``schedule_events`` consumed only after its bucket's version is active.

Driven round by round (``process_events``) against real PostgreSQL and Redis:
another holder has the bucket's rebuild lock (BUSY) -> the event stays pending
and the next round, after the lock is freed, activates and consumes it; a
settings change (an every-bucket event) stays pending while any bucket is BUSY;
Redis unreachable -> the round fails and nothing is consumed.
"""

from __future__ import annotations

import trio

from accounts.crypto import Cipher, CryptoConfig
from accounts.db import Database
from accounts.inputs import AccountCreate
from accounts.model import Platform
from accounts.repository import AccountRepository
from snapshot.builder import SnapshotBuilder
from snapshot.keys import NO_VERSION, Bucket
from snapshot.redis import RedisConfig, RedisStore, open_redis
from snapshot.schedule import PublishOutcome, acquire_lock, active_version, release_lock
from snapshot.settings import SettingsStore
from snapshot.source import SqlSource

from ..support import CRYPTO_KEY

BUCKET = Bucket("g1", Platform.OPENAI)
OTHER = Bucket("g2", Platform.OPENAI)


async def _add(db: Database, name: str, group: str) -> None:
    repo = AccountRepository(db, Cipher(CryptoConfig(keys=[CRYPTO_KEY])))
    await repo.create(
        AccountCreate(name=name, platform=Platform.OPENAI, groups=[group], credentials={"k": "v"})
    )


async def _pending(db: Database) -> list[str]:
    rows = await db.fetch("SELECT kind FROM schedule_events WHERE consumed_at IS NULL ORDER BY id")
    return [r["kind"] for r in rows]


async def test_busy_bucket_keeps_its_events_until_a_later_activation(
    db: Database, redis: RedisStore
) -> None:
    await _add(db, "a", "g1")
    await _add(db, "b", "g2")
    builder = SnapshotBuilder(db, redis, SqlSource(db))
    with trio.fail_after(30):
        token = await acquire_lock(redis, BUCKET, 60)  # another instance is rebuilding g1
        assert token is not None
        results = await builder.process_events()
        assert results[BUCKET].outcome is PublishOutcome.BUSY
        assert results[OTHER].outcome is PublishOutcome.ACTIVATED
        assert len(await _pending(db)) == 1  # g1's event only
        assert await active_version(redis, BUCKET) == NO_VERSION

        await SettingsStore(db).write({"scoring": {"top_k": 3}})  # every bucket dirty
        results = await builder.process_events()
        assert results[BUCKET].outcome is PublishOutcome.BUSY
        assert len(await _pending(db)) == 2  # g1's event and the settings event

        assert await release_lock(redis, BUCKET, token)
        results = await builder.process_events()
        assert {r.outcome for r in results.values()} == {PublishOutcome.ACTIVATED}
        assert await _pending(db) == []
        assert await active_version(redis, BUCKET) > NO_VERSION


async def test_redis_down_consumes_nothing(db: Database, redis: RedisStore) -> None:
    await _add(db, "a", "g1")
    dead = RedisConfig(
        url="redis://127.0.0.1:1/0",
        key_prefix=redis.prefix,
        connect_timeout_s=0.5,
        command_timeout_s=0.5,
    )
    with trio.fail_after(30):
        async with open_redis(dead) as unreachable:
            builder = SnapshotBuilder(db, unreachable, SqlSource(db))
            await builder._safe(builder.process_events())  # logged, not raised
        assert len(await _pending(db)) == 1
        results = await SnapshotBuilder(db, redis, SqlSource(db)).process_events()
        assert results[BUCKET].outcome is PublishOutcome.ACTIVATED
        assert await _pending(db) == []


async def test_events_for_an_unknown_platform_are_consumed_not_reread_forever(
    db: Database, redis: RedisStore
) -> None:
    await _add(db, "a", "g1")
    await db.execute(
        "INSERT INTO schedule_events (kind, bucket_group, bucket_platform)"
        " SELECT 'account', 'g1', 'no-such-platform' FROM generate_series(1, 50)"
    )
    builder = SnapshotBuilder(db, redis, SqlSource(db))
    with trio.fail_after(30):
        results = await builder.process_events()
    assert results[BUCKET].outcome is PublishOutcome.ACTIVATED
    assert await _pending(db) == []


async def test_consumed_events_are_pruned_after_the_retention_in_small_batches(
    db: Database, redis: RedisStore
) -> None:
    """Issue 10 item 13: consumed rows were never deleted. Old consumed rows go, in batches
    of the given size; recent consumed rows and pending ones stay."""
    await db.execute(
        "INSERT INTO schedule_events (kind, consumed_at)"
        " SELECT 'old', now() - interval '2 hours' FROM generate_series(1, 25)"
    )
    await db.execute(
        "INSERT INTO schedule_events (kind, consumed_at)"
        " SELECT 'recent', now() - interval '10 minutes' FROM generate_series(1, 5)"
    )
    await db.execute("INSERT INTO schedule_events (kind) VALUES ('pending')")
    builder = SnapshotBuilder(db, redis, SqlSource(db), retention_s=3600, prune_batch=10)
    statements: list[str] = []
    execute = db.execute

    async def counted(sql: str, *args: object) -> str:
        statements.append(sql)
        return await execute(sql, *args)

    db.execute = counted  # type: ignore[method-assign]
    try:
        with trio.fail_after(30):
            assert await builder.prune_events() == 25
            assert await builder.prune_events() == 0
    finally:
        db.execute = execute  # type: ignore[method-assign]
    # 25 rows in batches of 10: three DELETEs (10, 10, 5), then one that found nothing.
    assert len(statements) == 4 and all(s.startswith("DELETE") for s in statements)
    rows = await db.fetch("SELECT kind, count(*) AS n FROM schedule_events GROUP BY kind")
    assert {r["kind"]: r["n"] for r in rows} == {"recent": 5, "pending": 1}


async def test_the_running_builder_prunes_in_its_own_rounds(
    db: Database, redis: RedisStore
) -> None:
    """The prune is part of the builder's loop, not only a method a caller may use: the
    first round of a running builder deletes consumed rows past the retention."""
    await db.execute(
        "INSERT INTO schedule_events (kind, consumed_at)"
        " SELECT 'old', now() - interval '2 hours' FROM generate_series(1, 5)"
    )
    builder = SnapshotBuilder(
        db, redis, SqlSource(db), poll_s=3600, full_rebuild_s=3600, retention_s=3600
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(builder.run)
            builder.wake()
            while builder.rounds < 1:  # the round, not a time, is what is waited for
                await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
    assert builder.pruned == 5
    assert await db.fetchval("SELECT count(*) FROM schedule_events WHERE kind = 'old'") == 0
