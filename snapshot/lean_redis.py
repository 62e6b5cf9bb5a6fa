"""The lean Redis path: a few trio connections speaking RESP through ``hiredis``.

Beside :mod:`snapshot.redis` (coredis: pub/sub, snapshot builds, admin), this is
the one other module that talks to Redis, and the only one that imports hiredis.
It carries the hot-path scripts (acquire, release, renew, runtime reads), where
coredis costs about three times the CPU Redis itself needs per call (see
bench/lean.py). Everything above it sees replies as coredis would give them with
``decode_responses=True`` (str, int, None, lists) and failures as
:class:`~accounts.errors.StoreUnavailable`.

Shape::

    LeanRedis            up to ``connections`` connections, opened lazily: a call
    │                    goes to the least busy; a new one is opened (in the
    │                    background) only while every open one has calls in flight
    └── _Connection      commands of concurrent callers are pipelined: whoever finds
        │                the connection idle sends everything queued in one write
        └── reader task  feeds hiredis.Reader and hands each reply to the oldest
                         waiter; Redis answers in request order, so no reply can
                         reach the wrong caller

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
closes its connection (never reused: the late reply would be read by nobody or,
worse, by the next caller) and every call queued behind it on that connection
fails too; they are behind the same stuck reply and would time out anyway. A
call cancelled from outside (its HTTP client left) leaves the connection healthy:
the reader still reads its reply and drops it. Writes are shielded, so a cancel
never leaves half a command on the wire.

Cluster: this client speaks to one server, as :mod:`snapshot.redis` (a plain
``coredis.Redis``) does today. The hot-path keys of one call share a hash tag,
so routing by slot could be added here; until then a cluster node's MOVED / ASK
answer is refused as StoreUnavailable naming cluster mode, never followed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
import outcome
import trio

from accounts.errors import StoreUnavailable

from .redis import RedisConfig

# One read takes whatever Redis sent, up to this; a 500-account runtime read is ~60 kB.
_RECV_BYTES = 256 * 1024
# Reconnect backoff: the first retry is quick (a restart is usually short), later
# ones spread out so a dead server is not hammered by every request.
BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 1.0
# Error replies that mean the server cannot serve now, not that the command is wrong.
_UNAVAILABLE_REPLIES = ("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN")
_CLUSTER_REPLIES = ("MOVED", "ASK", "CLUSTERDOWN")
_Reply = Any


class RedisReplyError(Exception):
    """Redis answered with an error about the command itself (wrong type, script error...)."""


@dataclass(frozen=True, slots=True)
class LeanScript:
    """A Lua script known by its SHA1; :meth:`LeanRedis.evalsha` loads it when Redis lacks it."""

    text: str
    sha: str

    @classmethod
    def from_text(cls, text: str) -> LeanScript:
        return cls(text, hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest())


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect, parsed from ``RedisConfig.url``."""

    host: str = "127.0.0.1"
    port: int = 6379
    unix_path: str | None = None
    tls: bool = False
    username: str | None = None
    password: str | None = None
    db: int = 0

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        """redis://[user:pass@]host[:port][/db], rediss://..., unix://[user:pass@]/path[?db=N]."""
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        db_text = query.get("db", [""])[0] or parts.path.lstrip("/")
        if parts.scheme == "unix":
            db_text = query.get("db", ["0"])[0]
        try:
            db = int(db_text or 0)
        except ValueError:
            raise ValueError("url: the database must be a number") from None
        if parts.scheme == "unix":
            return cls(unix_path=parts.path, username=username, password=password, db=db)
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            tls=parts.scheme == "rediss",
            username=username,
            password=password,
            db=db,
        )

    def handshake(self) -> list[tuple[str | int, ...]]:
        """Commands sent on every new connection before it serves calls."""
        commands: list[tuple[str | int, ...]] = []
        if self.password is not None:
            if self.username:
                commands.append(("AUTH", self.username, self.password))
            else:
                commands.append(("AUTH", self.password))
        if self.db:
            commands.append(("SELECT", self.db))
        return commands


class _Waiter:
    """One call waiting for ``want`` replies on a connection."""

    __slots__ = ("abandoned", "parked", "replies", "result", "task", "want")

    def __init__(self, want: int) -> None:
        self.task = trio.lowlevel.current_task()
        self.want = want
        self.replies: list[_Reply] = []
        self.result: outcome.Outcome[list[_Reply]] | None = None
        self.parked = False
        self.abandoned = False

    def add(self, reply: _Reply) -> bool:
        """Record one reply; True once the call has all it asked for."""
        self.replies.append(reply)
        if len(self.replies) < self.want:
            return False
        self._finish(outcome.Value(self.replies))
        return True

    def fail(self, exc: BaseException) -> None:
        self._finish(outcome.Error(exc))

    def _finish(self, result: outcome.Outcome[list[_Reply]]) -> None:
        if self.abandoned or self.result is not None:
            return
        self.result = result
        if self.parked:
            trio.lowlevel.reschedule(self.task, result)

    def abort(self, _raise_cancel: Any) -> trio.lowlevel.Abort:
        # Cancelled while parked: the reply will still arrive and be dropped.
        self.abandoned = True
        return trio.lowlevel.Abort.SUCCEEDED


class _Connection:
    """One socket, its hiredis reader, the waiters in request order, the queued writes."""

    def __init__(
        self, stream: trio.abc.Stream, reader: hiredis.Reader, pool: list[_Connection]
    ) -> None:
        self.stream = stream
        self.reader = reader
        # The pool's list of open connections: a closed one leaves it at once, so no
        # call is ever queued on a connection nobody reads any more.
        self._pool = pool
        # Plain sockets are written and read on their fd directly (see write_nowait);
        # TLS goes through the stream. -1: no fd fast path.
        self.fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1
        self.pending: deque[_Waiter] = deque()
        self.out: list[bytes] = []
        self.writing = False
        self.closed = False

    def fail(self, exc: StoreUnavailable) -> None:
        """Close for good; every waiter gets ``exc``. Idempotent and synchronous."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(ValueError):
            self._pool.remove(self)
        while self.pending:
            self.pending.popleft().fail(exc)
        _close_now(self.stream)

    def write_nowait(self) -> None:
        """Write the queued command now if the socket takes it (the usual case).

        ``send_all`` would also write at once, but then yields to the scheduler
        (a trio checkpoint): one extra pass, with its epoll call, on every call.
        Whatever the socket does not take is left for :meth:`flush`.
        """
        data = self.out[0] if len(self.out) == 1 else b"".join(self.out)
        try:
            sent = os.write(self.fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.fail(StoreUnavailable("redis", f"connection lost ({type(exc).__name__})"))
            return
        self.out.clear()
        if sent < len(data):
            self.out.append(data[sent:])

    async def flush(self, deadline: float) -> None:
        """Send everything queued (commands queued meanwhile too), shielded from cancels.

        A half-sent command would corrupt the connection for everyone, so an outside
        cancel waits for the write (the socket buffer normally takes it at once); only
        the call's own deadline interrupts it, and then the connection is closed.
        """
        self.writing = True
        try:
            with trio.CancelScope(shield=True, deadline=deadline) as scope:
                while self.out and not self.closed:
                    data = self.out[0] if len(self.out) == 1 else b"".join(self.out)
                    self.out.clear()
                    await self.stream.send_all(data)
            if scope.cancelled_caught:
                self.fail(StoreUnavailable("redis", "could not send a command in time"))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.fail(StoreUnavailable("redis", f"connection lost ({type(exc).__name__})"))
        finally:
            self.writing = False

    async def read_loop(self) -> None:
        """Hand replies to waiters in order until the connection ends."""
        try:
            while not self.closed:
                data: bytes | bytearray
                if self.fd >= 0:
                    # Wait first, then read: no speculative read that finds nothing.
                    await trio.lowlevel.wait_readable(self.fd)
                    try:
                        data = os.read(self.fd, _RECV_BYTES)
                    except BlockingIOError:
                        continue
                else:
                    data = await self.stream.receive_some(_RECV_BYTES)
                if not data:
                    self.fail(StoreUnavailable("redis", "the server closed the connection"))
                    return
                self.reader.feed(data)  # type: ignore[arg-type]  # stub says str|bytes; any buffer works
                self._dispatch()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.fail(StoreUnavailable("redis", f"connection lost ({type(exc).__name__})"))
        except hiredis.ProtocolError as exc:
            self.fail(StoreUnavailable("redis", f"protocol error ({exc})"))

    def _dispatch(self) -> None:
        reader, pending = self.reader, self.pending
        while (reply := reader.gets()) is not False:
            if not pending:
                self.fail(StoreUnavailable("redis", "a reply nobody asked for"))
                return
            if pending[0].add(reply):
                pending.popleft()


def _close_now(stream: trio.abc.Stream) -> None:
    """Close the socket under ``stream`` synchronously (wakes its reader with an error)."""
    inner = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if isinstance(inner, trio.SocketStream):
        inner.socket.close()


class LeanRedis:
    """Calls on a small pool of pipelined connections; see the module docstring."""

    def __init__(
        self,
        config: RedisConfig,
        nursery: trio.Nursery,
        *,
        connections: int = 4,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config
        self.endpoint = Endpoint.from_url(config.url)
        # rediss:// verifies the server against the system's CAs unless told otherwise.
        self._ssl_context = ssl_context
        self._nursery = nursery
        self._size = connections
        self._live: list[_Connection] = []
        self._growing = False
        self._connect_lock = trio.Lock()
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = ""
        self._scripts: dict[str, LeanScript] = {}
        # Counters for metrics and benches.
        self.connects = 0
        self.timeouts = 0

    # --- calls -------------------------------------------------------------------

    async def execute(
        self, *args: str | int | float | bytes, timeout_s: float | None = None
    ) -> Any:
        """One command; its reply (error replies raise, see the module docstring)."""
        (reply,) = await self._roundtrip(_pack(args), 1, timeout_s)
        return _checked(reply)

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
        call = _pack(("EVALSHA", script.sha, len(keys), *keys, *args))
        (reply,) = await self._roundtrip(call, 1, timeout_s)
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            load = _pack(("SCRIPT", "LOAD", script.text))
            loaded, reply = await self._roundtrip(load + call, 2, timeout_s)
            _checked(loaded)
        return _checked(reply)

    async def ping(self, *, timeout_s: float = 1.0) -> float:
        """PING; seconds taken, or StoreUnavailable."""
        start = time.perf_counter()
        await self.execute("PING", timeout_s=timeout_s)
        return time.perf_counter() - start

    async def _roundtrip(self, payload: bytes, want: int, timeout_s: float | None) -> list[_Reply]:
        # A caller already cancelled sends nothing: once written, a command runs (an
        # acquire would take a lease nobody learns of until it expires).
        await trio.lowlevel.checkpoint_if_cancelled()
        timeout = self.config.command_timeout_s if timeout_s is None else timeout_s
        deadline = trio.current_time() + timeout
        conn = await self._pick(deadline)
        waiter = _Waiter(want)
        conn.pending.append(waiter)
        conn.out.append(payload)
        if not conn.writing:
            if conn.fd >= 0:
                conn.write_nowait()
            if conn.out:
                await conn.flush(deadline)
        if waiter.result is None:
            with trio.CancelScope(deadline=deadline) as scope:
                waiter.parked = True
                result: list[_Reply] = await trio.lowlevel.wait_task_rescheduled(waiter.abort)
                return result
            # Only our own deadline gets here (an outside cancel propagates).
            if scope.cancelled_caught:
                self.timeouts += 1
                conn.fail(StoreUnavailable("redis", "a call timed out on this connection"))
                raise StoreUnavailable("redis", f"no answer within {timeout}s")
        assert waiter.result is not None
        return waiter.result.unwrap()

    # --- the pool --------------------------------------------------------------------

    async def _pick(self, deadline: float) -> _Connection:
        """The least busy open connection; grows the pool in the background when all are busy."""
        live = self._live
        if live:
            best = min(live, key=lambda c: len(c.pending)) if len(live) > 1 else live[0]
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

    async def _grow(self) -> None:
        try:
            await self._open()
        except StoreUnavailable:
            pass  # recorded in the backoff state; calls keep using the open connections
        finally:
            self._growing = False

    async def _open(self) -> _Connection:
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
        except hiredis.ProtocolError as exc:
            raise self._connect_failed("protocol error during the handshake") from exc
        self._failures = 0
        self._retry_at = 0.0
        self.connects += 1
        self._live.append(conn)
        self._nursery.start_soon(self._serve, conn)
        return conn

    def _connect_failed(self, reason: str) -> StoreUnavailable:
        self._failures += 1
        delay = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2 ** (self._failures - 1))
        self._retry_at = trio.current_time() + delay * random.uniform(0.8, 1.2)
        self._last_error = reason
        return StoreUnavailable("redis", reason)

    async def _connect(self) -> _Connection:
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
            reader = hiredis.Reader(encoding="utf-8")
            commands = ep.handshake()
            if commands:
                await stream.send_all(b"".join(_pack(c) for c in commands))
                for command in commands:
                    reply = await _read_one(stream, reader)
                    if isinstance(reply, hiredis.ReplyError):
                        # The reply names the failure (WRONGPASS, invalid DB); never the secret.
                        raise StoreUnavailable("redis", f"{command[0]} refused: {reply}")
        except BaseException:
            # Whatever failed (TLS, AUTH, a cancel), the socket is ours to close.
            _close_now(stream)
            raise
        return _Connection(stream, reader, self._live)

    async def _serve(self, conn: _Connection) -> None:
        try:
            await conn.read_loop()
        finally:
            conn.fail(StoreUnavailable("redis", "connection closed"))

    def close(self) -> None:
        """Close every connection; pending calls fail with StoreUnavailable."""
        for conn in list(self._live):
            conn.fail(StoreUnavailable("redis", "the client is closing"))


async def _read_one(stream: trio.abc.Stream, reader: hiredis.Reader) -> _Reply:
    while (reply := reader.gets()) is False:
        data = await stream.receive_some(_RECV_BYTES)
        if not data:
            raise trio.BrokenResourceError("the server closed the connection")
        reader.feed(data)  # type: ignore[arg-type]  # as in read_loop
    return reply


def _pack(args: tuple[Any, ...]) -> bytes:
    # hiredis' stub types the argument as a 1-tuple; any tuple of str/int/float/bytes works.
    return hiredis.pack_command(args)  # type: ignore[arg-type]


def _checked(reply: _Reply) -> _Reply:
    if not isinstance(reply, hiredis.ReplyError):
        return reply
    text = str(reply)
    code = text.split(" ", 1)[0]
    if code in _UNAVAILABLE_REPLIES:
        raise StoreUnavailable("redis", f"server answered {code}")
    if code in _CLUSTER_REPLIES:
        raise StoreUnavailable(
            "redis", f"server answered {code}: Redis Cluster is not supported on the lean path"
        )
    raise RedisReplyError(text)


@contextlib.asynccontextmanager
async def open_lean_redis(
    config: RedisConfig, *, connections: int = 4, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[LeanRedis]:
    """A :class:`LeanRedis` whose reader tasks live until the block ends.

    Connects lazily (the first call opens the first connection), so it never
    waits for the server here; calls raise StoreUnavailable while Redis is down.
    """
    async with trio.open_nursery() as nursery:
        client = LeanRedis(config, nursery, connections=connections, ssl_context=ssl_context)
        try:
            yield client
        finally:
            client.close()
            nursery.cancel_scope.cancel()
