"""A lean load generator for select + release pairs: raw keep-alive sockets, bytes prebuilt.

The server under test and this client share a 2-core machine, so the client's
own CPU per request matters: :mod:`bench._common`'s ``HttpConnection`` formats
every request line and header from strings and goes through trio streams; here
the select request is one prebuilt ``bytes``, a release is three concatenations,
and each exchange is one ``send`` and usually one ``recv`` on a trio socket. The
client's CPU is measured (``time.process_time`` of this process over the run)
and printed beside the server's, so nobody has to take "it is light" on faith.

Each connection does one request at a time (no pipelining): that is how a
gateway's pool of keep-alive connections calls the daemon.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

import trio

from bench._common import percentile

_RECV_BYTES = 65536


@dataclass
class PairRun:
    """One measured run of select + release pairs."""

    label: str
    select_s: list[float] = field(default_factory=list)  # select latency (from due time)
    pair_s: list[float] = field(default_factory=list)  # select + release (from due time)
    errors: int = 0
    elapsed_s: float = 0.0
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    # HTTP requests per item of pair_s (1 for single-request runs).
    per_item: int = 2

    @property
    def requests(self) -> int:
        return self.per_item * len(self.pair_s)

    def row(self) -> str:
        sel, pair = sorted(self.select_s), sorted(self.pair_s)
        n = self.requests or 1

        def ms(values: list[float], q: float) -> str:
            return f"{percentile(values, q) * 1e3:7.2f}"

        rate = self.requests / self.elapsed_s if self.elapsed_s else math.nan
        return (
            f"{self.label:<30} {self.requests:>7} {self.errors:>4} {rate:>8.0f} "
            f"{ms(sel, 50)} {ms(sel, 99)} {ms(pair, 50)} {ms(pair, 99)} "
            f"{self.server_cpu_s / n * 1e6:>8.1f} {self.client_cpu_s / n * 1e6:>8.1f}"
        )


HEADER = (
    f"{'run':<30} {'HTTP req':>7} {'err':>4} {'req/s':>8} "
    f"{'sel p50':>7} {'sel p99':>7} {'pr p50':>7} {'pr p99':>7} {'srv µs/r':>8} {'cli µs/r':>8}"
)


class Pairs:
    """Prebuilt request bytes for one daemon's data plane."""

    def __init__(self, host: str, port: int, token: str, select_body: dict[str, str]) -> None:
        self.address = (host, port)
        body = json.dumps(select_body).encode()
        self._head = (
            f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\n"
        ).encode()
        self.select = (
            b"POST /v1/select HTTP/1.1\r\n"
            + self._head
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body
        )
        self._release_body = b'{"status": 200, "latency_ms": 5}'

    def release(self, lease: bytes) -> bytes:
        return (
            b"POST /v1/leases/"
            + lease
            + b"/release HTTP/1.1\r\n"
            + self._head
            + b"Content-Length: %d\r\n\r\n" % len(self._release_body)
            + self._release_body
        )


class Conn:
    """One keep-alive connection, one request at a time."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.buffer = b""

    @classmethod
    async def open(cls, address: tuple[str, int]) -> Conn:
        sock = trio.socket.socket()
        await sock.connect(address)
        return cls(sock)

    async def exchange(self, data: bytes) -> tuple[int, bytes]:
        """Send ``data``; the status and body of the answer (Content-Length framing)."""
        await self.sock.send(data)
        while (end := self.buffer.find(b"\r\n\r\n")) == -1:
            await self._fill()
        head = self.buffer[:end]
        at = head.lower().find(b"content-length:") + 15
        length = int(head[at : head.find(b"\r\n", at)])
        while len(self.buffer) < end + 4 + length:
            await self._fill()
        body = self.buffer[end + 4 : end + 4 + length]
        self.buffer = self.buffer[end + 4 + length :]
        return int(head[9:12]), body

    async def _fill(self) -> None:
        chunk = await self.sock.recv(_RECV_BYTES)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def lease_of(body: bytes) -> bytes:
    start = body.index(b'"lease_id":"') + 12
    return body[start : body.index(b'"', start)]


async def _pair(conn: Conn, pairs: Pairs, run: PairRun, due: float) -> None:
    status, body = await conn.exchange(pairs.select)
    run.select_s.append(trio.current_time() - due)
    if status != 200:
        run.errors += 1
        return
    status, _ = await conn.exchange(pairs.release(lease_of(body)))
    run.errors += status != 200
    run.pair_s.append(trio.current_time() - due)


async def closed_loop(pairs: Pairs, run: PairRun, *, connections: int, seconds: float) -> None:
    """``connections`` connections each doing pairs back to back for ``seconds``."""
    conns = [await Conn.open(pairs.address) for _ in range(connections)]
    stop = trio.current_time() + seconds

    async def worker(conn: Conn) -> None:
        while trio.current_time() < stop:
            await _pair(conn, pairs, run, trio.current_time())

    await _timed(run, conns, worker)


async def closed_loop_one(
    address: tuple[str, int], request: bytes, run: PairRun, *, connections: int, seconds: float
) -> None:
    """One prebuilt request, answered with any status, back to back on each connection."""
    run.per_item = 1
    conns = [await Conn.open(address) for _ in range(connections)]
    stop = trio.current_time() + seconds

    async def worker(conn: Conn) -> None:
        while (start := trio.current_time()) < stop:
            await conn.exchange(request)
            run.select_s.append(trio.current_time() - start)
            run.pair_s.append(run.select_s[-1])

    await _timed(run, conns, worker)


async def open_loop(
    pairs: Pairs, run: PairRun, *, rate: float, connections: int, seconds: float
) -> None:
    """Pairs at ``rate``/s whatever the answers do; latency from each pair's due time.

    Pair *i* is due at ``start + i / rate`` on connection ``i % connections``: a
    slow answer delays the pairs behind it on that connection, and they pay for
    it in their latency (no coordinated omission).
    """
    conns = [await Conn.open(pairs.address) for _ in range(connections)]
    count = int(rate * seconds)
    begin = trio.current_time() + 0.05

    async def worker(conn: Conn) -> None:
        index = conns.index(conn)
        while index < count:
            due = begin + index / rate
            await trio.sleep_until(due)
            await _pair(conn, pairs, run, due)
            index += connections

    await _timed(run, conns, worker)


async def _timed(run: PairRun, conns: list[Conn], worker: object) -> None:
    cpu0, t0 = time.process_time(), trio.current_time()
    try:
        async with trio.open_nursery() as nursery:
            for conn in conns:
                nursery.start_soon(worker, conn)  # type: ignore[arg-type]
    finally:
        run.elapsed_s = trio.current_time() - t0
        run.client_cpu_s = time.process_time() - cpu0
        for conn in conns:
            conn.close()
