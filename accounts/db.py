"""PostgreSQL access: the only module that imports asyncpg and trio-asyncio.

asyncpg is asyncio-only; the daemon runs inside ``trio_asyncio.open_loop()`` and
every call into asyncpg crosses the bridge here, through ``aio_as_trio``. A trio
cancellation cancels the asyncio future, and asyncpg then cancels the query on
the server, so a timed-out request does not leave a query running.

Driver errors never leave this module raw: connection and timeout failures
become :class:`~accounts.errors.StoreUnavailable`; unique and check violations
are re-raised as asyncpg's own subclasses only through :data:`UniqueViolation`
and :data:`CheckViolation`, so callers can catch them without importing asyncpg.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Annotated, Any
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg
import msgspec
import trio
import trio_asyncio
from trio_asyncio import aio_as_trio

from .errors import StoreUnavailable

# Re-exported so callers never import asyncpg themselves.
Record = asyncpg.Record
UniqueViolation = asyncpg.UniqueViolationError
CheckViolation = asyncpg.CheckViolationError
PostgresError = asyncpg.PostgresError

# Errors that mean "the server is not answering", as opposed to "the query is wrong".
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


class DatabaseConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How to reach PostgreSQL."""

    dsn: str = "postgresql://postgres@127.0.0.1:5432/stationmaster"
    # A gateway's burst of admin writes and the pollers share this pool; 10 keeps
    # well under PostgreSQL's default max_connections with several instances.
    pool_min: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1
    pool_max: Annotated[int, msgspec.Meta(ge=1, le=500)] = 10
    connect_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    # Bounds every statement so a wedged server turns into StoreUnavailable
    # instead of a hung request.
    statement_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    # How long start-up keeps trying to reach the server before giving up.
    start_timeout_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0

    def __post_init__(self) -> None:
        # Checked here so a typo fails at start with exit 2, not at first connect.
        if not self.dsn.startswith(("postgresql://", "postgres://")):
            raise ValueError("dsn: must start with postgresql:// (or postgres://)")
        if self.pool_min > self.pool_max:
            raise ValueError("pool_min: must not exceed pool_max")


def describe_dsn(dsn: str) -> str:
    """Where a DSN points, for error messages: host or socket directory, port, database.

    Never the user's password (nor the user: a role name is not needed to find the server).
    """
    try:
        parts = urlsplit(dsn)
        query = parse_qs(parts.query)
        socket_dir = (query.get("host") or [""])[0]
        host = socket_dir or unquote(parts.hostname or "")
        port = parts.port or int((query.get("port") or ["5432"])[0])
    except ValueError:
        return "an unparsable DSN"
    database = unquote(parts.path.lstrip("/")) or (query.get("dbname") or ["(default)"])[0]
    if host.startswith("/"):
        where = f"socket {host}/.s.PGSQL.{port}"
    elif host:
        where = f"{host}:{port}"
    else:
        where = f"the default socket (port {port})"
    return f"{where}, database {database!r}"


def _translate(exc: BaseException) -> StoreUnavailable:
    # The driver message can echo the DSN; keep only the type name.
    return StoreUnavailable("postgres", type(exc).__name__)


class Connection:
    """One acquired connection; every method crosses the bridge."""

    def __init__(self, raw: asyncpg.Connection) -> None:
        self._raw = raw

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        try:
            return await aio_as_trio(self._raw.fetch)(sql, *args)
        except _UNAVAILABLE as exc:
            raise _translate(exc) from exc

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        try:
            return await aio_as_trio(self._raw.fetchrow)(sql, *args)
        except _UNAVAILABLE as exc:
            raise _translate(exc) from exc

    async def fetchval(self, sql: str, *args: Any) -> Any:
        try:
            return await aio_as_trio(self._raw.fetchval)(sql, *args)
        except _UNAVAILABLE as exc:
            raise _translate(exc) from exc

    async def execute(self, sql: str, *args: Any) -> str:
        try:
            return await aio_as_trio(self._raw.execute)(sql, *args)
        except _UNAVAILABLE as exc:
            raise _translate(exc) from exc

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        try:
            await aio_as_trio(self._raw.executemany)(sql, args)
        except _UNAVAILABLE as exc:
            raise _translate(exc) from exc

    @contextlib.asynccontextmanager
    async def transaction(self, *, isolation: str = "read_committed") -> AsyncIterator[Connection]:
        """Run the block in a transaction: commit on success, roll back on any exception."""
        tx = self._raw.transaction(isolation=isolation)
        try:
            await aio_as_trio(tx.start)()
        except _UNAVAILABLE as exc:
            raise _translate(exc) from exc
        try:
            yield self
        except BaseException:
            # Shielded: a cancelled request must still roll back before the
            # connection goes back to the pool.
            with trio.move_on_after(5, shield=True), contextlib.suppress(*_UNAVAILABLE):
                await aio_as_trio(tx.rollback)()
            raise
        else:
            try:
                await aio_as_trio(tx.commit)()
            except _UNAVAILABLE as exc:
                raise _translate(exc) from exc


class Database:
    """The asyncpg pool, opened by :func:`open_database`."""

    def __init__(self, pool: asyncpg.Pool, config: DatabaseConfig) -> None:
        self._pool = pool
        self.config = config

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Connection]:
        try:
            raw = await aio_as_trio(self._pool.acquire)(timeout=self.config.connect_timeout_s)
        except _UNAVAILABLE as exc:
            raise _translate(exc) from exc
        try:
            yield Connection(raw)
        finally:
            # A connection the server dropped fails its reset on release; asyncpg
            # then terminates it and opens a fresh one on the next acquire. The
            # caller's own error (if any) is the one that matters, so a failed
            # release is not raised (raw, it would crash the caller's actor).
            with trio.move_on_after(5, shield=True), contextlib.suppress(*_UNAVAILABLE):
                await aio_as_trio(self._pool.release)(raw)

    @contextlib.asynccontextmanager
    async def transaction(self, *, isolation: str = "read_committed") -> AsyncIterator[Connection]:
        """Acquire a connection and run the block in one transaction."""
        async with self.acquire() as conn, conn.transaction(isolation=isolation):
            yield conn

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        async with self.acquire() as conn:
            return await conn.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        async with self.acquire() as conn:
            return await conn.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        async with self.acquire() as conn:
            return await conn.fetchval(sql, *args)

    async def execute(self, sql: str, *args: Any) -> str:
        async with self.acquire() as conn:
            return await conn.execute(sql, *args)

    @contextlib.asynccontextmanager
    async def listen(
        self, channel: str, callback: Callable[[str], None]
    ) -> AsyncIterator[trio.Event]:
        """LISTEN on ``channel`` on a dedicated connection; yields an Event set if it is lost.

        ``callback(payload)`` runs on the trio thread for each NOTIFY. The connection
        is not taken from the pool: a LISTEN lives as long as its holder, which would
        pin a pool slot, and a pooled connection handed back with a listener on it makes
        asyncpg warn (an error under ``filterwarnings = error``). When the server drops
        the connection (restart, failover, ``pg_terminate_backend``) notifications stop
        silently, so the yielded Event is set and the holder must listen again. Raises
        StoreUnavailable when the server cannot be reached; the connection is closed
        on exit, even on cancel.
        """
        try:
            raw = await aio_as_trio(asyncpg.connect)(
                self.config.dsn,
                timeout=self.config.connect_timeout_s,
                server_settings=_init_connection_settings(self.config),
            )
        except (*_UNAVAILABLE, asyncpg.PostgresError) as exc:
            # PostgresError too: a server refusing us (database gone, auth) is, to a
            # listener, as unavailable as one not answering.
            raise _translate(exc) from exc
        lost = trio.Event()
        raw.add_termination_listener(lambda _conn: lost.set())

        def _cb(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            callback(payload)

        try:
            try:
                await aio_as_trio(raw.add_listener)(channel, _cb)
            except _UNAVAILABLE as exc:
                raise _translate(exc) from exc
            yield lost
        finally:
            # Closing drops the LISTEN with the session; no UNLISTEN round trip needed.
            with trio.move_on_after(2, shield=True), contextlib.suppress(*_UNAVAILABLE):
                await aio_as_trio(raw.close)()
            if not raw.is_closed():
                raw.terminate()

    async def ping(self, *, timeout_s: float = 1.0) -> float:
        """Round-trip ``SELECT 1``; returns seconds taken or raises StoreUnavailable."""
        start = time.perf_counter()
        try:
            with trio.fail_after(timeout_s):
                await self.fetchval("SELECT 1")
        except trio.TooSlowError as exc:
            raise StoreUnavailable("postgres", f"no answer within {timeout_s}s") from exc
        return time.perf_counter() - start


def _init_connection_settings(config: DatabaseConfig) -> dict[str, str]:
    return {
        "statement_timeout": str(int(config.statement_timeout_s * 1000)),
        "application_name": "stationmaster",
    }


async def _create_pool(config: DatabaseConfig) -> asyncpg.Pool:
    async def init(conn: asyncpg.Connection) -> None:
        # JSON columns come back as Python values, not strings.
        for typ in ("json", "jsonb"):
            await conn.set_type_codec(
                typ, encoder=_json_encode, decoder=msgspec.json.decode, schema="pg_catalog"
            )

    return await aio_as_trio(asyncpg.create_pool)(
        config.dsn,
        min_size=config.pool_min,
        max_size=config.pool_max,
        timeout=config.connect_timeout_s,
        server_settings=_init_connection_settings(config),
        init=init,
    )


def _json_encode(value: Any) -> str:
    return msgspec.json.encode(value).decode()


@contextlib.asynccontextmanager
async def open_database(
    config: DatabaseConfig, *, retry_for_s: float | None = None
) -> AsyncIterator[Database]:
    """Open the pool (retrying for ``retry_for_s``, default the config's start timeout).

    Must run inside ``trio_asyncio.open_loop()``. Raises StoreUnavailable when the
    server cannot be reached in time. The pool is closed on exit, even on cancel.
    """
    deadline = trio.current_time() + (
        config.start_timeout_s if retry_for_s is None else retry_for_s
    )
    delay = 0.1
    while True:
        try:
            pool = await _create_pool(config)
            break
        except (*_UNAVAILABLE, asyncpg.InvalidCatalogNameError) as exc:
            if trio.current_time() + delay > deadline:
                raise StoreUnavailable(
                    "postgres",
                    f"cannot connect to {describe_dsn(config.dsn)} ({type(exc).__name__})",
                ) from exc
            await trio.sleep(delay)
            delay = min(delay * 2, 2.0)
        except asyncpg.PostgresError as exc:
            # Refused for good (wrong password, unknown role, no permission): waiting
            # will not help. Type name only: the message can name the role.
            raise StoreUnavailable(
                "postgres",
                f"{describe_dsn(config.dsn)} refused the connection ({type(exc).__name__})",
            ) from exc
    try:
        yield Database(pool, config)
    finally:
        with trio.move_on_after(5, shield=True) as scope:
            await aio_as_trio(pool.close)()
        if scope.cancelled_caught:
            pool.terminate()


# A leftover of the asyncio side that nobody awaits any more: (what happened, error type).
LoopErrorReport = Callable[[str, str], None]


@contextlib.asynccontextmanager
async def open_loop(report: LoopErrorReport | None = None) -> AsyncIterator[None]:
    """The asyncio loop the bridge needs; callers above this module use this, not trio_asyncio.

    Errors nobody is waiting for (asyncio's "Task exception was never retrieved",
    a connection reset with an open transaction) go to ``report`` (default: the
    ``accounts.db`` stdlib logger) instead of trio-asyncio's default, which raises
    them in the loop's nursery and so ends the whole process. asyncpg leaves them
    behind when the server is slow: ``Pool.release`` runs the reset in a shielded
    task, and when the caller stops waiting (our bounded release) that task's
    TimeoutError is never retrieved. Seen in bench/tasks.py: the daemon died in
    the burst of terminal writes. The connection itself is terminated by asyncpg
    and replaced on the next acquire.
    """
    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(functools.partial(_unawaited_error, report or _log_loop_error))
        yield


def _unawaited_error(report: LoopErrorReport, _loop: object, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    # The message is asyncio's or asyncpg's own text; the exception's text is left
    # out (a driver error can quote connection details).
    report(str(context.get("message") or "unhandled error"), type(exc).__name__ if exc else "")


def _log_loop_error(message: str, error: str) -> None:
    logging.getLogger(__name__).warning("asyncio: %s (%s)", message, error)


async def admin_execute(dsn: str, sql: str) -> None:
    """Run one statement on a fresh connection outside any pool (CREATE DATABASE …)."""
    conn = await aio_as_trio(asyncpg.connect)(dsn)
    try:
        await aio_as_trio(conn.execute)(sql)
    finally:
        await aio_as_trio(conn.close)()
