"""A lean HTTP/1.1 transport for httpx on trio: keep-alive connections per origin.

Why not httpx's default (httpcore): measured on the 2-core machine
(bench/outbox.py), httpcore's pool costs ~1.3 ms of CPU per request with one
request in flight and ~8 ms with 64 (every request scans every connection),
so a dispatcher could not reach 1,000 deliveries/s. This transport keeps the
httpx client API (requests, responses, exceptions: ``deliver`` does not know
it is there) and replaces only the wire: one idle-connection stack per origin
(O(1) check-out), the whole request written in one ``send_all``, the answer
parsed by httptools (llhttp, in C; h11 measured at ~0.6 ms per exchange here),
TLS through ``trio.SSLStream`` with httpx's own default context (certifi).

Two users: the outbox's webhook deliveries (through httpx) and the upstream
adapters' task submits and polls, which call :meth:`TrioTransport.call` directly:
no ``httpx.URL`` parsing, ``Request`` or ``Response`` per call, which is most of
what remains of the client's CPU once httpcore is gone (a poller must reach
1,000 polls/s on a shared 2-core machine; bench/simulator.py has the figures).

What it does not do, because a webhook POST or an upstream API call does not
need it: HTTP/2, proxies, ``Expect: 100-continue``, streaming request bodies.
Response bodies are read up to ``max_body`` bytes; a longer one is cut off and
its connection closed (httpx sees the prefix as the whole body).

Errors are httpx's, in both APIs: ConnectError, ConnectTimeout (the request's
``connect`` timeout, when it has one), ReadTimeout (its ``read`` timeout, here
for the whole answer from the end of the request, not per chunk as httpcore:
a body trickling in cannot hold a caller for ever; a slow write is bounded by
the caller's deadline around the whole attempt), ReadError,
RemoteProtocolError, LocalProtocolError, UnsupportedProtocol. A request that
fails on a *reused* connection before any byte of the answer arrived is sent
once more on a fresh connection (the server may have closed the idle
connection as we picked it up), as httpcore does.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import httptools
import httpx
import trio

# Idle connections kept per origin; more than the per-destination limit is waste.
MAX_IDLE_PER_ORIGIN = 64
# A server usually drops an idle keep-alive connection after 5-60 s; we stop
# reusing ours before the common short timeouts bite.
IDLE_TIMEOUT_S = 4.0
_RECV_BYTES = 65536

Origin = tuple[str, str, int]
Header = tuple[bytes, bytes]


@dataclass(frozen=True, slots=True)
class Raw:
    """An answer as read: status, header lines (names as sent), body (at most max_body)."""

    status: int
    headers: list[Header]
    body: bytes


class _Conn:
    __slots__ = ("idle_since", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.idle_since = 0.0


class _Answer:
    """httptools callbacks: collects one response (1xx answers are skipped)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        # Asked here: after the message completes the parser has reset.
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size <= self.limit + len(body):
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:  # an interim answer: the real one follows
            self.headers.clear()
            self.headers_done = False
            return
        self.complete = True


class TrioTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 keep-alive over trio streams; ``max_body``: bytes of an answer read at most.

    ``max_idle`` connections per origin are kept for reuse, each at most
    ``idle_timeout_s`` after its last answer.
    """

    def __init__(
        self,
        *,
        max_body: int = 64 * 1024,
        ssl_context: ssl.SSLContext | None = None,
        max_idle: int = MAX_IDLE_PER_ORIGIN,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ):
        self._max_body = max_body
        self._ssl = ssl_context
        self._max_idle = max_idle
        self._idle_timeout_s = idle_timeout_s
        self._idle: dict[Origin, list[_Conn]] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        origin = _origin(request.url)
        body = await request.aread()
        timeout = request.extensions.get("timeout", {})
        limits = (timeout.get("connect"), timeout.get("read"))
        try:
            head = _head(request.method.encode(), request.url.raw_path, request.headers.raw, body)
            raw = await self._call(origin, head, body, limits)
        except httpx.RequestError as exc:
            exc.request = request
            raise
        return httpx.Response(raw.status, headers=raw.headers, content=raw.body, request=request)

    async def call(
        self,
        method: bytes,
        origin: Origin,
        target: bytes,
        headers: Sequence[Header],
        body: bytes = b"",
        *,
        connect_timeout_s: float | None = None,
        read_timeout_s: float | None = None,
    ) -> Raw:
        """One exchange without httpx's models: ``target`` is the path and query.

        ``origin`` is ``(scheme, host, port)`` (see :func:`origin_of`); a Host
        header is added. The answer's framing headers (content-length,
        transfer-encoding) are left out. Raises httpx's errors (module docstring).
        """
        host = f"[{origin[1]}]" if ":" in origin[1] else origin[1]  # an IPv6 literal
        if origin[2] != (443 if origin[0] == "https" else 80):
            host = f"{host}:{origin[2]}"
        lines = [(b"host", host.encode("ascii")), *headers]
        head = _head(method, target, lines, body)
        return await self._call(origin, head, body, (connect_timeout_s, read_timeout_s))

    async def _call(
        self, origin: Origin, head: bytes, body: bytes, limits: tuple[float | None, float | None]
    ) -> Raw:
        connect_s, read_s = limits
        conn = self._checkout(origin)
        if conn is not None:
            try:
                return await self._exchange(origin, conn, head, body, read_s)
            except _StaleConnection:
                pass  # closed by the server while idle: once more, on a new connection
        conn = await self._connect_within(origin, connect_s)
        try:
            return await self._exchange(origin, conn, head, body, read_s)
        except _StaleConnection as exc:
            raise httpx.RemoteProtocolError("server closed the connection") from exc

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                await _close(conn)

    # --- connections -------------------------------------------------------------

    def _checkout(self, origin: Origin) -> _Conn | None:
        conns = self._idle.get(origin)
        now = time.monotonic()
        while conns:
            conn = conns.pop()
            if now - conn.idle_since < self._idle_timeout_s:
                return conn
            # Too old to trust: closing needs no await for a plain socket.
            _abort(conn)
        return None

    def _checkin(self, origin: Origin, conn: _Conn) -> None:
        conns = self._idle.setdefault(origin, [])
        if self._closed or len(conns) >= self._max_idle:
            _abort(conn)
            return
        conn.idle_since = time.monotonic()
        conns.append(conn)

    async def _connect_within(self, origin: Origin, connect_s: float | None) -> _Conn:
        if connect_s is None:
            return await self._connect(origin)
        try:
            with trio.fail_after(connect_s):
                return await self._connect(origin)
        except trio.TooSlowError:
            # Nothing was sent: a caller may retry safely (unlike a read timeout).
            raise httpx.ConnectTimeout("connect timed out") from None

    async def _connect(self, origin: Origin) -> _Conn:
        scheme, host, port = origin
        try:
            stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            raise httpx.ConnectError(type(exc).__name__) from exc
        if scheme == "https":
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()
            tls = trio.SSLStream(stream, self._ssl, server_hostname=host, https_compatible=True)
            try:
                await tls.do_handshake()
            except (trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
                await trio.aclose_forcefully(stream)
                raise httpx.ConnectError(f"TLS handshake failed ({type(exc).__name__})") from exc
            stream = tls
        return _Conn(stream)

    # --- one exchange --------------------------------------------------------------

    async def _exchange(
        self, origin: Origin, conn: _Conn, head: bytes, body: bytes, read_s: float | None
    ) -> Raw:
        reusable = False
        try:
            try:
                await conn.stream.send_all(head + body)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise _StaleConnection from exc
            if read_s is None:
                raw, reusable = await self._receive(conn)
            else:
                try:
                    with trio.fail_after(read_s):
                        raw, reusable = await self._receive(conn)
                except trio.TooSlowError:
                    raise httpx.ReadTimeout("no complete answer in time") from None
            return raw
        finally:
            # Cancelled, failed or not keep-alive: never hand the connection out again.
            if reusable:
                self._checkin(origin, conn)
            else:
                _abort(conn)

    async def _receive(self, conn: _Conn) -> tuple[Raw, bool]:
        answer = _Answer(self._max_body)
        first = True
        while not answer.complete:
            try:
                data = await conn.stream.receive_some(_RECV_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                if first:
                    raise _StaleConnection from exc
                raise httpx.ReadError(type(exc).__name__) from exc
            if not data:
                if first:
                    raise _StaleConnection
                if answer.headers_done:
                    break  # a body delimited by the end of the connection
                raise httpx.RemoteProtocolError("connection closed mid-answer")
            first = False
            try:
                answer.parser.feed_data(data)
            except httptools.HttpParserError as exc:
                raise httpx.RemoteProtocolError("malformed answer") from exc
            if answer.size > self._max_body:
                return _raw(answer), False
        reusable = answer.complete and answer.keep_alive
        return _raw(answer), reusable


class _NoCookies(httpx.Cookies):
    """A jar that keeps nothing: calls are stateless, and extracting costs ~15 %."""

    def extract_cookies(self, response: httpx.Response) -> None:
        pass


class CookielessClient(httpx.AsyncClient):
    """An httpx client that never stores a server's cookies (nor sends any).

    A webhook receiver's cookies mean nothing to us; an upstream's cookie set for
    one account must never travel with another account's request.
    """

    _NO_COOKIES = _NoCookies()

    @property  # type: ignore[override,misc]  # read-only on purpose: nothing to set
    def cookies(self) -> httpx.Cookies:
        return self._NO_COOKIES


class _StaleConnection(Exception):
    """Nothing of an answer arrived before the connection broke."""


def _origin(url: httpx.URL) -> Origin:
    return origin_of(url.scheme, url.host, url.port)


def origin_of(scheme: str, host: str, port: int | None) -> Origin:
    """``(scheme, host, port)`` for :meth:`TrioTransport.call`; UnsupportedProtocol if
    the scheme is not http(s) or there is no host."""
    if scheme not in ("http", "https"):
        raise httpx.UnsupportedProtocol(f"unsupported scheme {scheme!r}")
    if not host:
        raise httpx.UnsupportedProtocol("no host in the URL")
    return scheme, host, port or (443 if scheme == "https" else 80)


def _head(method: bytes, target: bytes, headers: Iterable[Header], body: bytes) -> bytes:
    """The request line and headers, with a Content-Length for the body in hand."""
    lines = [b"%s %s HTTP/1.1" % (method, target)]
    has_length = False
    for name, value in headers:
        if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name:
            raise httpx.LocalProtocolError("line break in a header")
        lower = name.lower()
        if lower == b"transfer-encoding":
            continue  # the body is in hand: always sent with a Content-Length
        has_length = has_length or lower == b"content-length"
        lines.append(name + b": " + value)
    if not has_length and (body or method not in (b"GET", b"HEAD")):
        lines.append(b"content-length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _raw(answer: _Answer) -> Raw:
    if not answer.headers_done:
        raise httpx.RemoteProtocolError("no response")
    # Framing headers described the wire, not the (possibly cut) body handed on.
    headers = [
        (k, v)
        for k, v in answer.headers
        if k.lower() not in (b"content-length", b"transfer-encoding")
    ]
    return Raw(answer.status, headers, b"".join(answer.chunks)[: answer.limit])


def _abort(conn: _Conn) -> None:
    # Close without awaiting: a plain socket closes at once; TLS skips close_notify,
    # which a receiver must tolerate anyway (and we are the side that gives up).
    stream = conn.stream
    transport = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if isinstance(transport, trio.SocketStream):
        transport.socket.close()


async def _close(conn: _Conn) -> None:
    with trio.move_on_after(1, shield=True):
        await trio.aclose_forcefully(conn.stream)
