"""RESP on one connection: hiredis parsing, request/reply matching, the write path.

The private half of :mod:`snapshot.lean_redis` and the only module that imports
hiredis. A :class:`Connection` pipelines the commands of every caller that uses
it and hands replies back in request order; :class:`Waiter` is one caller
waiting for its reply (or replies). The pool, timeouts, backoff and scripts are
:mod:`snapshot.lean_redis`'s.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
import outcome
import trio

from accounts.errors import StoreUnavailable

# One read takes whatever Redis sent, up to this; a 500-account runtime read is ~60 kB.
_RECV_BYTES = 256 * 1024
# Error replies that mean the server cannot serve now, not that the command is wrong.
_UNAVAILABLE_REPLIES = ("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN")
_CLUSTER_REPLIES = ("MOVED", "ASK", "CLUSTERDOWN")
# A decoded RESP value: str, int, None, a list of those (or hiredis.ReplyError).
Reply = Any
ProtocolError = hiredis.ProtocolError


class RedisReplyError(Exception):
    """Redis answered with an error about the command itself (wrong type, script error...)."""


class Waiter:
    """One call waiting for ``want`` replies on a connection."""

    __slots__ = (
        "abandoned",
        "deadline",
        "parked",
        "replies",
        "result",
        "task",
        "timeout_s",
        "want",
    )

    def __init__(self, want: int, deadline: float = math.inf, timeout_s: float = math.inf) -> None:
        self.task = trio.lowlevel.current_task()
        self.want = want
        # When the call must have its answer (trio clock); the client's watcher fails
        # the connection of a call past it.
        self.deadline = deadline
        self.timeout_s = timeout_s
        self.replies: list[Reply] = []
        self.result: outcome.Outcome[list[Reply]] | None = None
        self.parked = False
        self.abandoned = False

    def add(self, reply: Reply) -> bool:
        """Record one reply; True once the call has all it asked for."""
        self.replies.append(reply)
        if len(self.replies) < self.want:
            return False
        self._finish(outcome.Value(self.replies))
        return True

    def fail(self, exc: BaseException) -> None:
        self._finish(outcome.Error(exc))

    def _finish(self, result: outcome.Outcome[list[Reply]]) -> None:
        if self.abandoned or self.result is not None:
            return
        self.result = result
        if self.parked:
            trio.lowlevel.reschedule(self.task, result)

    def abort(self, _raise_cancel: Any) -> trio.lowlevel.Abort:
        # Cancelled while parked: the reply will still arrive and be dropped.
        self.abandoned = True
        return trio.lowlevel.Abort.SUCCEEDED


# Who reads a connection's replies (``Connection.reading``). At most one reads at a time;
# a connection with calls in flight always has one.
IDLE = 0  # nothing in flight: the next caller reads its own reply (inline)
CALLER = 1  # a caller reads inline; calls pipelined behind it get theirs from it
TASK = 2  # the connection's reader task reads (pipelined calls, TLS)


class Connection:
    """One socket, its hiredis reader, the waiters in request order, the queued writes.

    Replies are read by whoever holds :attr:`reading`. A caller that finds the
    connection idle reads its own reply (:meth:`read_inline`): one task switch
    per call instead of two (the reader task's wake-up, then the caller's). When
    calls are pipelined behind it, it hands reading to the reader task once its
    own reply is in (or it is cancelled), so nobody waits on a caller that left.
    TLS streams are always read by the task (no fd to wait on).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        reader: hiredis.Reader,
        pool: list[Connection],
        *,
        inline: bool = True,
    ) -> None:
        self.stream = stream
        self.reader = reader
        # The pool's list of open connections: a closed one leaves it at once, so no
        # call is ever queued on a connection nobody reads any more.
        self._pool = pool
        # Plain sockets are written and read on their fd directly (see write_nowait);
        # TLS goes through the stream. -1: no fd fast path.
        self.fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1
        self.pending: deque[Waiter] = deque()
        self.out: list[bytes] = []
        self.writing = False
        self.closed = False
        # Without inline reads (or an fd) the reader task reads everything, always.
        self.inline = inline and self.fd >= 0
        self.reading = IDLE if self.inline else TASK
        # The reader task parks here while it is not the one reading.
        self._lot = trio.lowlevel.ParkingLot()

    def fail(self, exc: StoreUnavailable) -> None:
        """Close for good; every waiter gets ``exc``. Idempotent and synchronous."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(ValueError):
            self._pool.remove(self)
        while self.pending:
            self.pending.popleft().fail(exc)
        close_now(self.stream)
        self._lot.unpark_all()

    def idle_and_healthy(self) -> bool:
        """For an idle connection (nobody reads it): False, and closed, if the server hung up.

        While idle nothing watches the socket, so a server that closed it (a
        restart, ``CLIENT KILL``, its idle ``timeout``) is noticed here, before a
        command is sent into it: one non-blocking read, which finds nothing on a
        healthy connection. Anything else (end of file, an error, bytes nobody
        asked for) ends it.
        """
        try:
            data = os.read(self.fd, 1)
        except BlockingIOError:
            return True
        except OSError as exc:
            self.fail(StoreUnavailable("redis", f"connection lost ({type(exc).__name__})"))
            return False
        why = "a reply nobody asked for" if data else "the server closed the connection"
        self.fail(StoreUnavailable("redis", why))
        return False

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
        """The reader task: hand replies to waiters in order whenever it holds :attr:`reading`."""
        try:
            while not self.closed:
                if self.fd < 0:
                    data = await self.stream.receive_some(_RECV_BYTES)
                elif self.inline and (self.reading != TASK or not self.pending):
                    # Not ours to read (idle, or a caller reads inline): wait to be handed it.
                    if self.reading == TASK:
                        self.reading = IDLE
                    await self._lot.park()
                    continue
                else:
                    # Wait first, then read: no speculative read that finds nothing.
                    await trio.lowlevel.wait_readable(self.fd)
                    try:
                        data = os.read(self.fd, _RECV_BYTES)
                    except BlockingIOError:
                        continue
                self._received(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.fail(StoreUnavailable("redis", f"connection lost ({type(exc).__name__})"))
        except hiredis.ProtocolError as exc:
            self.fail(StoreUnavailable("redis", f"protocol error ({exc})"))

    async def read_inline(self, waiter: Waiter) -> None:
        """Read replies in the caller's own task until ``waiter`` has its own (or fails).

        The caller holds :attr:`reading` (set when it found the connection idle).
        Replies of calls pipelined behind it are handed on as they come. On the way
        out, normal or cancelled, reading passes to the reader task while calls are
        still in flight (a cancelled caller's own reply among them: read and
        dropped), else the connection is idle again. A call past its deadline is
        failed by the client's watcher, which closes the connection (that wakes
        this read with an error).
        """
        try:
            while waiter.result is None and not self.closed:
                await trio.lowlevel.wait_readable(self.fd)
                try:
                    data = os.read(self.fd, _RECV_BYTES)
                except BlockingIOError:
                    continue
                self._received(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.fail(StoreUnavailable("redis", f"connection lost ({type(exc).__name__})"))
        except hiredis.ProtocolError as exc:
            self.fail(StoreUnavailable("redis", f"protocol error ({exc})"))
        finally:
            if waiter.result is None:
                waiter.abandoned = True  # cancelled: its reply will be read and dropped
            if not self.closed:
                if self.pending:
                    self.reading = TASK
                    self._lot.unpark()
                else:
                    self.reading = IDLE

    def _received(self, data: bytes | bytearray) -> None:
        if not data:
            self.fail(StoreUnavailable("redis", "the server closed the connection"))
            return
        self.reader.feed(data)  # type: ignore[arg-type]  # stub says str|bytes; any buffer works
        self._dispatch()

    def _dispatch(self) -> None:
        reader, pending = self.reader, self.pending
        while (reply := reader.gets()) is not False:
            if not pending:
                self.fail(StoreUnavailable("redis", "a reply nobody asked for"))
                return
            if pending[0].add(reply):
                pending.popleft()


def close_now(stream: trio.abc.Stream) -> None:
    """Close the socket under ``stream`` synchronously (wakes its reader with an error)."""
    inner = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if isinstance(inner, trio.SocketStream):
        inner.socket.close()


async def start_connection(
    stream: trio.abc.Stream,
    handshake: Sequence[tuple[str | int, ...]],
    pool: list[Connection],
    *,
    inline: bool = True,
) -> Connection:
    """A Connection on ``stream`` once ``handshake`` (AUTH, SELECT) is answered.

    A refused handshake is StoreUnavailable naming the command and Redis' answer
    (WRONGPASS, invalid DB), never the secret. The stream is closed on any failure.
    """
    try:
        reader = hiredis.Reader(encoding="utf-8")
        if handshake:
            await stream.send_all(b"".join(pack(c) for c in handshake))
            for command in handshake:
                reply = await _read_one(stream, reader)
                if isinstance(reply, hiredis.ReplyError):
                    raise StoreUnavailable("redis", f"{command[0]} refused: {reply}")
    except BaseException:
        close_now(stream)
        raise
    return Connection(stream, reader, pool, inline=inline)


async def _read_one(stream: trio.abc.Stream, reader: hiredis.Reader) -> Reply:
    while (reply := reader.gets()) is False:
        data = await stream.receive_some(_RECV_BYTES)
        if not data:
            raise trio.BrokenResourceError("the server closed the connection")
        reader.feed(data)  # type: ignore[arg-type]  # as in read_loop
    return reply


def pack(args: tuple[Any, ...]) -> bytes:
    # hiredis' stub types the argument as a 1-tuple; any tuple of str/int/float/bytes works.
    return hiredis.pack_command(args)  # type: ignore[arg-type]


def checked(reply: Reply) -> Reply:
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


def is_noscript(reply: Reply) -> bool:
    """True for Redis' answer to EVALSHA of a script it does not have."""
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT")
