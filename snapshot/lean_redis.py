"""The lean Redis path: a few trio connections speaking RESP through ``hiredis``.

Beside :mod:`snapshot.redis` (coredis: pub/sub, snapshot builds, admin), this is
the one other module that talks to Redis (with its private half
:mod:`snapshot._resp`, the only module that imports hiredis).
It carries the hot-path scripts (acquire, release, renew, runtime reads), where
coredis costs about three times the CPU Redis itself needs per call (see
bench/lean.py). Everything above it sees replies as coredis would give them with
``decode_responses=True`` (str, int, None, lists) and failures as
:class:`~accounts.errors.StoreUnavailable`.

Shape::

    LeanRedis            up to ``connections`` connections, opened lazily: a call
    │                    goes to the least busy; a new one is opened (in the
    │                    background) only while every open one has calls in flight
    └── Connection      commands of concurrent callers are pipelined: whoever finds
        │                the connection idle sends everything queued in one write
        │                and reads its own reply in its own task (one task switch
        │                per call, not two); calls queued behind it get theirs from it
        └── reader task  takes over reading while calls are in flight and the inline
                         reader has its reply (or was cancelled); hands each reply to
                         the oldest waiter. Redis answers in request order, so no
                         reply can reach the wrong caller. Nobody watches an idle
                         connection: a call checks it (one non-blocking read) before
                         sending, so one the server hung up on is replaced, not used

Failures::

    StoreUnavailable("redis", ...)   connect refused or timed out, handshake refused,
                                     connection lost, protocol error, no answer in
                                     time, LOADING / BUSY / MASTERDOWN / TRYAGAIN,
                                     MOVED / ASK / CLUSTERDOWN (see Cluster below),
                                     or "reconnecting" while backing off after a
                                     failed connect (the hot path fails fast, it
                                     does not queue behind a dead server)
    RedisReplyError                  any other error reply: the command or the
                                     script is wrong, not the server

Timeouts and cancellation: a call that gets no complete answer within its timeout
(checked by one watcher task every ``command_timeout_s / 8``, 0.05 to 0.25 s, not
by a cancel scope per call, so it fires up to that late) closes its connection
(never reused: the late reply would be read by nobody or, worse, by the next
caller) and every call queued behind it on that connection
fails too; they are behind the same stuck reply and would time out anyway. A
call cancelled from outside (its HTTP client left) leaves the connection healthy:
its reply is still read (by the reader task, when it was reading inline) and
dropped. Writes are shielded, so a cancel never leaves half a command on the wire.

Cluster: this client speaks to one server, as :mod:`snapshot.redis` (a plain
``coredis.Redis``) does today. The hot-path keys of one call share a hash tag,
so routing by slot could be added here; until then a cluster node's MOVED / ASK
answer is refused as StoreUnavailable naming cluster mode, never followed.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from accounts.errors import StoreUnavailable

from ._endpoint import Endpoint
from ._redis_config import RedisConfig
from ._resp import (
    CALLER,
    IDLE,
    Connection,
    ProtocolError,
    RedisReplyError,
    Reply,
    Waiter,
    checked,
    close_now,
    is_noscript,
    pack,
    start_connection,
)

__all__ = ["Endpoint", "LeanRedis", "LeanScript", "RedisReplyError", "open_lean_redis"]

# Reconnect backoff: the first retry is quick (a restart is usually short), later
# ones spread out so a dead server is not hammered by every request.
BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 1.0
# The deadline watcher looks at every call in flight every command_timeout_s / 8,
# within these bounds: a call with no answer fails at most that long after its
# timeout (0.25 s late at the default 2 s). A cancel scope per call would be exact
# but costs ~7 us of CPU per call, as much as a fifth of a PING; each wake-up of
# the watcher costs ~250 us here (bench/README.md), so it does not tick faster.
WATCH_MIN_S = 0.05
WATCH_MAX_S = 0.25


@dataclass(frozen=True, slots=True)
class LeanScript:
    """A Lua script known by its SHA1; :meth:`LeanRedis.evalsha` loads it when Redis lacks it."""

    text: str
    sha: str

    @classmethod
    def from_text(cls, text: str) -> LeanScript:
        return cls(text, hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest())


class LeanRedis:
    """Calls on a small pool of pipelined connections; see the module docstring."""

    def __init__(
        self,
        config: RedisConfig,
        nursery: trio.Nursery,
        *,
        connections: int = 4,
        ssl_context: ssl.SSLContext | None = None,
        inline_reads: bool = True,
    ) -> None:
        self.config = config
        self.endpoint = Endpoint.from_url(config.url)
        # rediss:// verifies the server against the system's CAs unless told otherwise.
        self._ssl_context = ssl_context
        self._nursery = nursery
        self._size = connections
        self._live: list[Connection] = []
        self._growing = False
        self._watching = False
        self._watch_interval_s = min(WATCH_MAX_S, max(WATCH_MIN_S, config.command_timeout_s / 8))
        self._connect_lock = trio.Lock()
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = ""
        self._scripts: dict[str, LeanScript] = {}
        # A caller that finds its connection idle reads its own reply (False: the
        # reader task always reads; bench/lean.py compares the two).
        self.inline_reads = inline_reads
        # Counters for metrics and benches.
        self.connects = 0
        self.timeouts = 0

    # --- calls -------------------------------------------------------------------

    async def execute(
        self, *args: str | int | float | bytes, timeout_s: float | None = None
    ) -> Any:
        """One command; its reply (error replies raise, see the module docstring)."""
        (reply,) = await self._roundtrip(pack(args), 1, timeout_s)
        return checked(reply)

    def script(self, path: Path) -> LeanScript:
        """The script in ``path``, read once."""
        cached = self._scripts.get(str(path))
        if cached is None:
            cached = self._scripts[str(path)] = LeanScript.from_text(path.read_text())
        return cached

    async def evalsha(
        self,
        script: LeanScript,
        keys: Sequence[str],
        args: Sequence[str | int | float],
        *,
        timeout_s: float | None = None,
    ) -> Any:
        """EVALSHA; on NOSCRIPT (restart, SCRIPT FLUSH) SCRIPT LOAD and EVALSHA again, one trip."""
        call = pack(("EVALSHA", script.sha, len(keys), *keys, *args))
        (reply,) = await self._roundtrip(call, 1, timeout_s)
        if is_noscript(reply):
            load = pack(("SCRIPT", "LOAD", script.text))
            loaded, reply = await self._roundtrip(load + call, 2, timeout_s)
            checked(loaded)
        return checked(reply)

    async def ping(self, *, timeout_s: float = 1.0) -> float:
        """PING; seconds taken, or StoreUnavailable."""
        start = time.perf_counter()
        await self.execute("PING", timeout_s=timeout_s)
        return time.perf_counter() - start

    async def _roundtrip(self, payload: bytes, want: int, timeout_s: float | None) -> list[Reply]:
        # A caller already cancelled sends nothing: once written, a command runs (an
        # acquire would take a lease nobody learns of until it expires).
        await trio.lowlevel.checkpoint_if_cancelled()
        timeout = self.config.command_timeout_s if timeout_s is None else timeout_s
        deadline = trio.current_time() + timeout
        conn = await self._pick(deadline)
        waiter = Waiter(want, deadline, timeout)
        inline = conn.reading == IDLE
        if inline:
            conn.reading = CALLER
        conn.pending.append(waiter)
        conn.out.append(payload)
        if not conn.writing:
            if conn.fd >= 0:
                conn.write_nowait()
            if conn.out:
                await conn.flush(deadline)
        if waiter.result is None:
            # No cancel scope of our own: the deadline is the watcher's (_watch).
            if inline:
                await conn.read_inline(waiter)
            else:
                waiter.parked = True
                result: list[Reply] = await trio.lowlevel.wait_task_rescheduled(waiter.abort)
                return result
        assert waiter.result is not None
        return waiter.result.unwrap()

    # --- the pool --------------------------------------------------------------------

    async def _pick(self, deadline: float) -> Connection:
        """The least busy open connection; grows the pool in the background when all are busy."""
        live = self._live
        while live:
            best = min(live, key=lambda c: len(c.pending)) if len(live) > 1 else live[0]
            if best.reading == IDLE and not best.idle_and_healthy():
                continue  # the server hung up on it while idle: closed, out of the pool
            if best.pending and len(live) < self._size and not self._growing:
                self._growing = True
                self._nursery.start_soon(self._grow)
            return best
        async with self._connect_lock:
            if self._live:
                return self._live[0]
            with trio.CancelScope(deadline=deadline):
                return await self._open()
        raise StoreUnavailable("redis", "no connection within the call's timeout")

    async def _watch(self) -> None:
        """Fail, and close, every connection with a call past its deadline; runs for good.

        The late call gets "no answer within"; every call queued behind it on that
        connection fails too (behind the same stuck reply). A cancelled call's
        reply that never comes closes its connection the same way.
        """
        while True:
            await trio.sleep(self._watch_interval_s)
            now = trio.current_time()
            for conn in list(self._live):
                late = next((w for w in conn.pending if w.deadline <= now), None)
                if late is not None:
                    self.timeouts += 1
                    late.fail(StoreUnavailable("redis", f"no answer within {late.timeout_s}s"))
                    conn.fail(StoreUnavailable("redis", "a call timed out on this connection"))

    async def _grow(self) -> None:
        try:
            await self._open()
        except StoreUnavailable:
            pass  # recorded in the backoff state; calls keep using the open connections
        finally:
            self._growing = False

    async def _open(self) -> Connection:
        now = trio.current_time()
        if now < self._retry_at:
            raise StoreUnavailable(
                "redis", f"reconnecting in {self._retry_at - now:.2f}s ({self._last_error})"
            )
        try:
            with trio.fail_after(self.config.connect_timeout_s):
                conn = await self._connect()
        except trio.TooSlowError:
            raise self._connect_failed("connect timed out") from None
        except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
            # trio wraps TLS failures (a refused certificate) in BrokenResourceError.
            cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else None
            reason = type(cause or exc).__name__
            raise self._connect_failed(f"cannot connect ({reason})") from exc
        except ProtocolError as exc:
            raise self._connect_failed("protocol error during the handshake") from exc
        self._failures = 0
        self._retry_at = 0.0
        self.connects += 1
        if not self._watching:
            self._watching = True
            self._nursery.start_soon(self._watch)
        self._live.append(conn)
        self._nursery.start_soon(self._serve, conn)
        return conn

    def _connect_failed(self, reason: str) -> StoreUnavailable:
        self._failures += 1
        delay = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2 ** (self._failures - 1))
        self._retry_at = trio.current_time() + delay * random.uniform(0.8, 1.2)
        self._last_error = reason
        return StoreUnavailable("redis", reason)

    async def _connect(self) -> Connection:
        ep = self.endpoint
        stream: trio.abc.Stream
        if ep.unix_path is not None:
            stream = await trio.open_unix_socket(ep.unix_path)
        else:
            stream = await trio.open_tcp_stream(ep.host, ep.port)
        try:
            if ep.tls:
                context = self._ssl_context or ssl.create_default_context()
                stream = trio.SSLStream(stream, context, server_hostname=ep.host)
                await stream.do_handshake()
        except BaseException:
            close_now(stream)
            raise
        return await start_connection(stream, ep.handshake(), self._live, inline=self.inline_reads)

    async def _serve(self, conn: Connection) -> None:
        try:
            await conn.read_loop()
        finally:
            conn.fail(StoreUnavailable("redis", "connection closed"))

    def close(self) -> None:
        """Close every connection; pending calls fail with StoreUnavailable."""
        for conn in list(self._live):
            conn.fail(StoreUnavailable("redis", "the client is closing"))


@contextlib.asynccontextmanager
async def open_lean_redis(
    config: RedisConfig,
    *,
    connections: int = 4,
    ssl_context: ssl.SSLContext | None = None,
    inline_reads: bool = True,
) -> AsyncIterator[LeanRedis]:
    """A :class:`LeanRedis` whose reader tasks live until the block ends.

    Connects lazily (the first call opens the first connection), so it never
    waits for the server here; calls raise StoreUnavailable while Redis is down.

    An exception from the block leaves as itself, not inside an exception group:
    the reader tasks never raise (they fail their connection instead), so the
    nursery can only ever carry the block's own exception, and callers keep
    seeing what they saw before this client existed.
    """
    raised: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            client = LeanRedis(
                config,
                nursery,
                connections=connections,
                ssl_context=ssl_context,
                inline_reads=inline_reads,
            )
            try:
                yield client
            except BaseException as exc:
                raised = exc
                raise
            finally:
                client.close()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if raised is None or len(group.exceptions) != 1 or group.exceptions[0] is not raised:
            raise
        # Re-raising inside this handler would chain the group as its context; keep
        # the exception's own chain (a StoreUnavailable's cause, say) as it was.
        context = raised.__context__
        try:
            raise raised
        finally:
            raised.__context__ = context
