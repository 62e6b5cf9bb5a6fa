"""Redis access: the only module that imports coredis.

:func:`open_redis` yields a :class:`RedisStore`: this deployment's two clients of
one server, the key prefix every key starts with, and a health probe. Callers
build key names with :meth:`RedisStore.key` (or the key builders next to their
Lua scripts) and never hard-code the prefix, so test runs and deployments
sharing one server do not collide.

Two clients, one server:

* ``client`` (coredis): pub/sub (snapshot activation, settings invalidation,
  release messages), snapshot builds (pipelines, transactions, SCAN), the admin
  routes, the usage prober's bookkeeping, health probes. Rich API, a connection
  pool, Cluster and Sentinel support; its cost (~200 us CPU per command, ~280 us
  per EVALSHA, bench/lean.py) does not matter off the request path.
* ``lean`` (:mod:`snapshot.lean_redis`, hiredis on trio sockets): the scripts and
  reads every select, release and renew pays for (``scheduler.selection.store``),
  ~40-50 us CPU per call. It speaks to one server: on a Redis Cluster it refuses
  MOVED/ASK as StoreUnavailable (see its docstring). Replacing coredis with it
  everywhere would mean writing pub/sub, pipelines and SCAN again for paths where
  the CPU does not count; not worth it.

Connection failures and timeouts become :class:`~accounts.errors.StoreUnavailable`
on both.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlsplit

import coredis
import coredis.exceptions
import trio
from coredis.tokens import PureToken

from accounts.errors import StoreUnavailable

from ._redis_config import RedisConfig
from .lean_redis import LeanRedis, open_lean_redis

# Errors that mean "Redis is not answering" rather than "the command is wrong".
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    coredis.exceptions.ConnectionError,
    coredis.exceptions.BusyLoadingError,
    # A replica that was the primary before a failover refuses writes until the
    # client reconnects to the new one: unavailable for now, not a wrong command.
    coredis.exceptions.ReadOnlyError,
)
ResponseError = coredis.exceptions.ResponseError
# SET's NX condition, re-exported so callers never import coredis themselves.
SET_NX: Final = PureToken.NX


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Redis failures inside the block leave as StoreUnavailable (503, retry soon).

    What callers above the store modules see of an outage: never a driver
    exception, never a traceback per request.
    """
    try:
        yield
    except UNAVAILABLE as exc:
        raise StoreUnavailable("redis", type(exc).__name__) from exc


def describe_url(url: str) -> str:
    """Where a Redis URL points, for error messages: host:port or socket, db; no password."""
    try:
        parts = urlsplit(url)
        db = (parse_qs(parts.query).get("db") or [parts.path.lstrip("/") or "0"])[0]
        if parts.scheme == "unix":
            return f"socket {unquote(parts.path)}, db {db}"
        return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}, db {db}"
    except ValueError:
        return "an unparsable URL"


class RedisStore:
    """This deployment's Redis: the coredis client, the lean hot-path client, the key prefix."""

    def __init__(self, client: coredis.Redis[str], config: RedisConfig, lean: LeanRedis) -> None:
        self.client = client
        self.lean = lean
        self.config = config
        self.prefix = config.key_prefix
        self._scripts: dict[str, Any] = {}

    def key(self, *parts: str) -> str:
        """``prefix + ':'.join(parts)``: the one way to name a key."""
        return self.prefix + ":".join(parts)

    def script(self, path: Path) -> Any:
        """A Lua script loaded from ``path``, called by SHA with NOSCRIPT reload.

        coredis' Script object already does EVALSHA and falls back to loading the
        text when the server answers NOSCRIPT (after a restart or SCRIPT FLUSH).
        """
        cached = self._scripts.get(str(path))
        if cached is None:
            cached = self.client.register_script(path.read_text())
            self._scripts[str(path)] = cached
        return cached

    async def ping(self, *, timeout_s: float = 1.0) -> float:
        """PING; returns seconds taken or raises StoreUnavailable."""
        start = time.perf_counter()
        try:
            with trio.fail_after(timeout_s):
                await self.client.ping()
        except trio.TooSlowError as exc:
            raise StoreUnavailable(
                "redis", f"no answer from {describe_url(self.config.url)} within {timeout_s}s"
            ) from exc
        except UNAVAILABLE as exc:
            raise StoreUnavailable(
                "redis", f"cannot connect to {describe_url(self.config.url)} ({type(exc).__name__})"
            ) from exc
        return time.perf_counter() - start

    async def delete_prefix(self, prefix: str | None = None) -> int:
        """Delete every key under ``prefix`` (default: this store's prefix); for tests and resets.

        Uses SCAN, never KEYS or FLUSHALL, so other users of the server are untouched.
        """
        pattern = (prefix if prefix is not None else self.prefix) + "*"
        removed = 0
        batch: list[str] = []
        async for k in self.client.scan_iter(match=pattern, count=500):
            batch.append(k)
            if len(batch) >= 500:
                removed += await self.client.delete(batch)
                batch = []
        if batch:
            removed += await self.client.delete(batch)
        return removed


@contextlib.asynccontextmanager
async def open_redis(config: RedisConfig) -> AsyncIterator[RedisStore]:
    """Open both clients; their tasks live until the block ends.

    Does not wait for the server (the lean client connects on its first call):
    start-up probes with :meth:`RedisStore.ping`, and readiness reports Redis
    down until it answers.
    """
    client: coredis.Redis[str] = coredis.Redis.from_url(
        config.url,
        decode_responses=True,
        connect_timeout=config.connect_timeout_s,
        stream_timeout=config.command_timeout_s,
        max_connections=config.max_connections,
    )
    async with client, open_lean_redis(config) as lean:
        yield RedisStore(client, config, lean)
