"""The lean HTTP/1.1 data-plane server, spoken to over raw sockets.

Every framing rule gets its own exchange of bytes; what the handler saw is
checked next to what the client read, so "refused" also means "never handled".
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio

from scheduler.http.wire import Request, Response, WireLimits, WireServer


class Echo:
    """A handler that records each request and answers it as JSON."""

    def __init__(self) -> None:
        self.seen: list[Request] = []

    async def __call__(self, request: Request) -> Response:
        self.seen.append(request)
        if request.path == "/crash":
            raise RuntimeError("boom")
        body = {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "body": request.body.decode(),
            "headers": request.headers,
        }
        return Response(200, json.dumps(body).encode(), headers=[("x-path", request.path)])


@contextlib.asynccontextmanager
async def open_wire(
    handler: Callable[[Request], Awaitable[Response]], **limits: Any
) -> AsyncIterator[tuple[WireServer, int]]:
    server = WireServer(handler, host="127.0.0.1", port=0, limits=WireLimits(**limits))
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(server.run)
        try:
            yield server, int(urls[0].rsplit(":", 1)[1])
        finally:
            nursery.cancel_scope.cancel()


_OPEN: list[Raw] = []


@pytest.fixture(autouse=True)
async def _close_raw_sockets() -> AsyncIterator[None]:
    """Every raw client socket a test opened is closed after it (trio warns otherwise)."""
    yield
    while _OPEN:
        await trio.aclose_forcefully(_OPEN.pop().stream)


class Raw:
    """A raw client socket that reads HTTP/1.1 responses (Content-Length framed)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def connect(cls, port: int) -> Raw:
        raw = cls(await trio.open_tcp_stream("127.0.0.1", port))
        _OPEN.append(raw)
        return raw

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> bool:
        try:
            chunk = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:  # reset by peer counts as closed
            chunk = b""
        self.buffer += chunk
        return bool(chunk)

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        """The next response: status, headers (lower-case names), body."""
        with trio.fail_after(10):
            return await self._response()

    async def _response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            if not await self._fill():
                raise EOFError(f"closed; buffer={self.buffer!r}")
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            if not await self._fill():
                raise EOFError("closed mid-body")
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), headers, body

    async def closed(self) -> bool:
        """True once the server has closed (EOF) with nothing more to read."""
        with trio.fail_after(10):
            while await self._fill():
                pass
        return self.buffer == b""

    async def aclose(self) -> None:
        await self.stream.aclose()


def get(path: str, *extra: str) -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/1.1", "Host: t", *extra]) + "\r\n\r\n").encode()


def post(path: str, body: bytes, *extra: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: t", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


# --- framing ---------------------------------------------------------------------------


async def test_pipelined_requests_are_answered_in_order_on_one_connection():
    echo = Echo()
    async with open_wire(echo) as (_, port):
        raw = await Raw.connect(port)
        burst = get("/a?x=1") + post("/b", b'{"n":2}') + get("/c", "X-Rep: 1", "x-rep: 2")
        # Split mid-request too: the parser must resume where a read ended.
        await raw.send(burst[:50])
        await trio.sleep(0)
        await raw.send(burst[50:])
        answers = [await raw.response() for _ in range(3)]
        assert [h["x-path"] for _, h, _ in answers] == ["/a", "/b", "/c"]
        first, second, third = (json.loads(body) for _, _, body in answers)
        assert (first["query"], second["body"], second["method"]) == ("x=1", '{"n":2}', "POST")
        assert third["headers"]["x-rep"] == "1, 2"
        # Still open: keep-alive.
        await raw.send(get("/d"))
        assert (await raw.response())[1]["x-path"] == "/d"
        await raw.aclose()


async def test_chunked_request_body_is_reassembled_and_bounded():
    echo = Echo()
    async with open_wire(echo, max_body_bytes=1024) as (_, port):
        raw = await Raw.connect(port)
        await raw.send(
            b"POST /chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n1;ext=1\r\n,\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n"
        )
        status, _, body = await raw.response()
        assert status == 200 and json.loads(body)["body"] == "hello, world"
        # Over the limit while streaming (no length declared up front): 413, closed.
        await raw.send(
            b"POST /big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"400\r\n"
            + b"x" * 1024
            + b"\r\n"
            + b"1\r\ny\r\n0\r\n\r\n"
        )
        status, headers, body = await raw.response()
        assert status == 413 and headers["connection"] == "close"
        assert json.loads(body)["error"]["code"] == "payload_too_large"
        assert await raw.closed()
    assert [r.path for r in echo.seen] == ["/chunked"]


async def test_expect_100_continue():
    echo = Echo()
    async with open_wire(echo, max_body_bytes=1024) as (_, port):
        raw = await Raw.connect(port)
        await raw.send(
            b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        status, _, _ = await raw.response()
        assert status == 100  # the client sends the body only now
        await raw.send(b"ping")
        status, _, body = await raw.response()
        assert status == 200 and json.loads(body)["body"] == "ping"
        # A body we would refuse gets the refusal instead of 100 Continue.
        await raw.send(
            b"POST /e2 HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
        )
        status, _, _ = await raw.response()
        assert status == 413 and await raw.closed()
    assert [r.path for r in echo.seen] == ["/e"]


@pytest.mark.parametrize(
    "head",
    [
        # Content-Length and Transfer-Encoding together (request smuggling).
        "Content-Length: 5\r\nTransfer-Encoding: chunked",
        # Two Content-Length fields, equal or not.
        "Content-Length: 5\r\nContent-Length: 5",
        "Content-Length: 5\r\nContent-Length: 6",
        # A transfer coding that does not end in chunked, and a non-numeric length.
        "Transfer-Encoding: gzip",
        "Content-Length: 5x",
        # Obsolete line folding.
        "X-Fold: a\r\n b",
    ],
)
async def test_ambiguous_framing_is_400_and_closed(head):
    echo = Echo()
    async with open_wire(echo) as (_, port):
        raw = await Raw.connect(port)
        # A valid request first: answered before the bad one is refused.
        await raw.send(
            get("/ok") + f"POST /bad HTTP/1.1\r\nHost: t\r\n{head}\r\n\r\nhello".encode()
        )
        assert (await raw.response())[0] == 200
        status, headers, body = await raw.response()
        assert status == 400 and headers["connection"] == "close"
        assert json.loads(body)["error"]["code"] == "bad_request"
        assert await raw.closed()
    assert [r.path for r in echo.seen] == ["/ok"]


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /nohost HTTP/1.1\r\n\r\n",
        b"GET /twohosts HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET nopath HTTP/1.1\r\nHost: t\r\n\r\n",
    ],
)
async def test_a_request_without_one_host_or_with_a_bad_target_is_400(request_bytes):
    echo = Echo()
    async with open_wire(echo) as (_, port):
        raw = await Raw.connect(port)
        await raw.send(request_bytes)
        status, headers, _ = await raw.response()
        assert status == 400 and headers["connection"] == "close"
        assert await raw.closed()
    assert echo.seen == []


async def test_absolute_form_targets_are_served_by_their_path():
    echo = Echo()
    async with open_wire(echo) as (_, port):
        raw = await Raw.connect(port)
        await raw.send(get("http://t:1/abs/x?q=1") + get("HTTPS://t?q=2"))
        assert (await raw.response())[1]["x-path"] == "/abs/x"
        assert (await raw.response())[1]["x-path"] == "/"
    assert [(r.path, r.query) for r in echo.seen] == [("/abs/x", "q=1"), ("/", "q=2")]


@pytest.mark.parametrize(
    "extra",
    [
        ["X-Big: " + "a" * 20_000],  # one field over the head limit
        [f"X-{i}: v" for i in range(100)],  # too many fields
    ],
)
async def test_oversized_heads_are_431(extra):
    echo = Echo()
    async with open_wire(echo, max_header_bytes=16_384, max_headers=64) as (_, port):
        raw = await Raw.connect(port)
        await raw.send(get("/h", *extra))
        status, headers, _ = await raw.response()
        assert status == 431 and headers["connection"] == "close"
        assert await raw.closed()
    assert echo.seen == []


async def test_a_header_line_that_never_ends_is_431():
    """httptools buffers a partial field itself; the raw bound stops it growing."""
    async with open_wire(Echo(), max_header_bytes=1024) as (_, port):
        raw = await Raw.connect(port)
        await raw.send(b"GET / HTTP/1.1\r\nX-Endless: ")
        with contextlib.suppress(trio.BrokenResourceError):
            for _ in range(40):
                await raw.send(b"a" * 4096)
        status, _, _ = await raw.response()
        assert status == 431


async def test_a_slow_loris_is_408_and_dropped():
    echo = Echo()
    async with open_wire(echo, read_timeout_s=0.5) as (_, port):
        raw = await Raw.connect(port)
        await raw.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n")
        with trio.fail_after(10):
            with contextlib.suppress(trio.BrokenResourceError):
                # One byte at a time, never finishing the head.
                while not raw.buffer:
                    await raw.send(b"X")
                    with trio.move_on_after(0.05):
                        await raw._fill()
            status, headers, _ = await raw.response()
        assert status == 408 and headers["connection"] == "close"
        assert await raw.closed()
    assert echo.seen == []


async def test_an_idle_keep_alive_connection_is_closed():
    async with open_wire(Echo(), keep_alive_timeout_s=0.2) as (_, port):
        raw = await Raw.connect(port)
        await raw.send(get("/once"))
        assert (await raw.response())[0] == 200
        with trio.fail_after(10):
            assert await raw.closed()  # EOF, no bytes: closed quietly


async def test_a_client_closing_mid_body_never_reaches_the_handler():
    echo = Echo()
    async with open_wire(echo) as (_, port):
        raw = await Raw.connect(port)
        await raw.send(b"POST /half HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
        await raw.aclose()
        other = await Raw.connect(port)
        await other.send(get("/after"))
        assert (await other.response())[0] == 200
    assert [r.path for r in echo.seen] == ["/after"]


async def test_declared_body_over_the_limit_is_413_unread():
    echo = Echo()
    async with open_wire(echo, max_body_bytes=1024) as (_, port):
        raw = await Raw.connect(port)
        await raw.send(post("/big", b"x" * 4096))
        status, _, body = await raw.response()
        assert status == 413 and "exceeds the limit of 1024" in json.loads(body)["error"]["message"]
    assert echo.seen == []


async def test_handler_crash_is_500_and_the_connection_lives_on():
    async with open_wire(Echo()) as (_, port):
        raw = await Raw.connect(port)
        await raw.send(get("/crash") + get("/fine"))
        status, _, body = await raw.response()
        assert status == 500 and "boom" not in body.decode()
        assert (await raw.response())[0] == 200


async def test_http_1_0_and_connection_close_end_the_connection():
    async with open_wire(Echo()) as (_, port):
        for request in (b"GET /old HTTP/1.0\r\n\r\n", get("/bye", "Connection: close")):
            raw = await Raw.connect(port)
            await raw.send(request + get("/never"))
            status, headers, _ = await raw.response()
            assert status == 200 and headers["connection"] == "close"
            assert await raw.closed()


async def test_an_upgrade_request_is_answered_over_http_1_1_then_closed():
    echo = Echo()
    async with open_wire(echo) as (_, port):
        raw = await Raw.connect(port)
        await raw.send(get("/up", "Connection: Upgrade", "Upgrade: h2c") + b"PRI * HTTP/2.0\r\n")
        status, headers, _ = await raw.response()
        assert status == 200 and headers["connection"] == "close"
        assert await raw.closed()
    assert [r.path for r in echo.seen] == ["/up"]


async def test_head_gets_headers_only():
    async with open_wire(Echo()) as (_, port):
        raw = await Raw.connect(port)
        await raw.send(b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n" + get("/next"))
        status_line = b""
        while b"\r\n\r\n" not in raw.buffer:
            await raw._fill()
        status_line, _, rest = raw.buffer.partition(b"\r\n\r\n")
        assert status_line.startswith(b"HTTP/1.1 200") and b"content-length: " in status_line
        raw.buffer = rest  # no body follows a HEAD answer; the next answer does
        assert (await raw.response())[1]["x-path"] == "/next"


# --- drain -----------------------------------------------------------------------------


async def test_drain_step_by_step():
    """Drain: new connections refused, idle ones closed at once, the one in flight
    finishes (with Connection: close), then the server stops."""
    gate, entered = trio.Event(), trio.Event()

    async def handler(request: Request) -> Response:
        if request.path == "/slow":
            entered.set()
            await gate.wait()
        return Response(200, b"{}")

    # Keep-alive far longer than the test: an idle connection closes only because of drain.
    limits = WireLimits(drain_timeout_s=30, keep_alive_timeout_s=120)
    server = WireServer(handler, host="127.0.0.1", port=0, limits=limits)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = int((await nursery.start(server.run))[0].rsplit(":", 1)[1])
            idle = [await Raw.connect(port) for _ in range(3)]
            for raw in idle:
                await raw.send(get("/fast"))
                assert (await raw.response())[0] == 200
            busy = await Raw.connect(port)
            await busy.send(get("/slow"))
            await entered.wait()
            drained = trio.Event()

            async def drain() -> None:
                await server.drain()
                drained.set()

            nursery.start_soon(drain)
            for raw in idle:
                assert await raw.closed()  # closed while /slow is still running
            with pytest.raises(OSError):
                await Raw.connect(port)
            assert not drained.is_set()
            gate.set()
            status, headers, _ = await busy.response()
            assert status == 200 and headers["connection"] == "close"
            assert await busy.closed()
            await drained.wait()


class _DrainLoad:
    """Clients in a closed loop; once ``hold`` is set, the handler parks each request."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.handled: set[str] = set()
        self.answered: set[str] = set()
        self.closing: set[str] = set()  # answered with "connection: close"
        self.unanswered: list[str] = []  # sent, then the connection closed with no byte
        self.truncated: list[str] = []
        self.hold = False
        self.parked: set[str] = set()
        self.enough_parked = trio.Event()
        self.gate = trio.Event()
        self.warm = trio.Event()

    async def handler(self, request: Request) -> Response:
        rid = request.headers["x-id"]
        if self.hold:
            self.parked.add(rid)
            if len(self.parked) >= 5:
                self.enough_parked.set()
            await self.gate.wait()
        self.handled.add(rid)
        return Response(200, json.dumps({"id": rid}).encode())

    async def client(self, c: int) -> None:
        n = 0
        while True:
            try:
                raw = await Raw.connect(self.port)
            except OSError:
                return  # refused: the server stopped accepting
            try:
                while True:
                    n += 1
                    rid = f"{c}-{n}"
                    await raw.send(post("/work", b"{}", f"X-Id: {rid}"))
                    try:
                        status, headers, body = await raw.response()
                    except EOFError as exc:
                        (self.truncated if "mid-body" in str(exc) else self.unanswered).append(rid)
                        break
                    assert status == 200 and json.loads(body)["id"] == rid
                    self.answered.add(rid)
                    if headers.get("connection") == "close":
                        self.closing.add(rid)
                    if len(self.answered) >= 300:
                        self.warm.set()
            except trio.BrokenResourceError:
                self.unanswered.append(rid)
            finally:
                await raw.aclose()


@pytest.mark.slow
async def test_drain_under_load_loses_no_request():
    """Drain while 20 clients hammer: in-flight requests finish and every handled one is
    answered; nothing is answered twice or cut short; then the server stops."""
    load = _DrainLoad(0)
    server = WireServer(
        load.handler, host="127.0.0.1", port=0, limits=WireLimits(drain_timeout_s=30)
    )
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(server.run)
            load.port = int(urls[0].rsplit(":", 1)[1])
            async with trio.open_nursery() as clients:
                for c in range(20):
                    clients.start_soon(load.client, c)
                await load.warm.wait()
                load.hold = True
                await load.enough_parked.wait()
                nursery.start_soon(server.drain)
                while not server.draining:
                    await trio.sleep(0)
                load.gate.set()
            # The clients are done: every one was refused or closed.
    assert len(load.parked) >= 5 and load.parked <= load.answered  # in flight: finished
    assert load.parked <= load.closing  # ... and told the client the connection ends
    assert load.handled == load.answered  # handled <=> its full answer reached the client
    assert not load.truncated
    assert not (set(load.unanswered) & load.handled)  # closed unanswered = never handled
    assert len(load.unanswered) <= 20
