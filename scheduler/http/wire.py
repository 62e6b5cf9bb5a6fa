"""A lean HTTP/1.1 server on trio and httptools: the data plane's wire.

hypercorn + starlette cost ~500 µs of server CPU per trivial request on this
machine; this server parses with httptools (llhttp, in C) and answers with one
write, for a few tens of µs (bench/lean.py). It serves one coroutine,
``handler(Request) -> Response``; what a route is (auth, body decoding, errors,
OpenAPI) stays in the declarative Endpoint table above it.

Per connection (one trio task, requests answered strictly in order)::

    read ──► httptools ──► complete requests queue ──► handler, one at a time ──► write
      │          │
      │          └─ framing refused (CL + TE, duplicate CL, bad chunking, bare LF,
      │             obs-fold, invalid TE...: llhttp is strict): 400, then close
      ├─ head over max_header_bytes or more than max_headers fields: 431, close
      ├─ body over max_body_bytes (declared or while streaming a chunked body): 413,
      │  close; never a 100 Continue for a body we would refuse
      ├─ a request not complete within read_timeout_s of its first byte (slow
      │  loris, stalled body): 408, close
      └─ nothing for keep_alive_timeout_s between requests: close

Pipelined requests already received are answered, in order, before any error
answer for a later one. ``Expect: 100-continue`` gets ``100 Continue`` once the
requests before it are answered, and only when the body is still to come. A
client that closes in the middle of a request never reaches the handler. An
``Upgrade`` request (h2c, websocket) is answered over HTTP/1.1 as if the header
were absent, then the connection closes.

Drain (:meth:`WireServer.drain`): the listeners close (new connections are
refused), idle keep-alive connections close at once, a connection in the middle
of a request finishes it and the requests already received, answers them with
``Connection: close`` and closes; whatever still runs after ``drain_timeout_s``
is cancelled.
"""

from __future__ import annotations

import errno
import os
from collections import deque

import httptools
import trio

from ..core.logs import get_logger
from ._wire_messages import (
    Handler,
    Refuse,
    Request,
    Response,
    WireLimits,
    encode_response,
    error_response,
)

__all__ = [
    "Handler",
    "Request",
    "Response",
    "WireLimits",
    "WireServer",
    "encode_response",
    "error_response",
]

log = get_logger("http.wire")

# One receive takes up to this much; also the slack of the raw head-size bound.
_RECV_BYTES = 65536
# accept() errors that mean "out of resources for now": wait and accept again,
# as trio.serve_listeners does, rather than crash the server.
_ACCEPT_RETRY = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# After refusing a request, how long we read and drop what the client still sends
# before closing (see _Connection._refuse).
_LINGER_S = 1.0


def _origin_form(target: bytes) -> bytes:
    """``/path?query`` from a request target; absolute-form (RFC 9112 3.2.2) reduced to it."""
    if target.startswith(b"/"):
        return target
    for scheme in (b"http://", b"https://"):
        if target[: len(scheme)].lower() == scheme:
            slash = target.find(b"/", len(scheme))
            query = target.find(b"?", len(scheme))
            if slash == -1 or (query != -1 and query < slash):
                return b"/" + (target[query:] if query != -1 else b"")
            return target[slash:]
    raise Refuse(400, "bad_request", "the request target must be a path")


class _Connection:
    """One client connection: the httptools protocol callbacks and the serve loop."""

    def __init__(self, stream: trio.SocketStream, server: WireServer) -> None:
        self.stream = stream
        self.fd = stream.socket.fileno() if stream is not None else -1
        self.server = server
        self.limits = server.limits
        self.parser = httptools.HttpRequestParser(self)
        self.ready: deque[tuple[Request, bool]] = deque()  # complete, with keep-alive
        self.idle_scope: trio.CancelScope | None = None
        # Set by an Upgrade request: answered over HTTP/1.1 (the upgrade ignored,
        # RFC 9110 7.8), then the connection closes; the parser cannot go on after it.
        self.last = False
        # The message being parsed.
        self.in_message = False
        self.in_head = False
        self.started_at = 0.0
        self.url = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.head_raw = 0
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.lengths = self.declared = self.hosts = 0
        self.wants_continue = False
        self.continued = False

    # --- httptools callbacks (names fixed by httptools) --------------------------------

    def on_message_begin(self) -> None:
        self.in_message = self.in_head = True
        self.started_at = trio.current_time()
        self.url = b""
        self.fields = []
        self.head_bytes = self.head_raw = self.body_bytes = 0
        self.lengths = self.declared = self.hosts = 0
        self.body = []
        self.wants_continue = self.continued = False

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))
        if len(self.fields) > self.limits.max_headers:
            raise Refuse(431, "headers_too_large", f"more than {self.limits.max_headers} headers")
        self._count_head(len(name) + len(value) + 4)
        lower = name.lower()
        if lower == b"content-length":
            self.lengths += 1
            self.declared = int(value)  # llhttp has checked the digits
        elif lower == b"host":
            self.hosts += 1
        elif lower == b"expect" and value.lower() == b"100-continue":
            self.wants_continue = True

    def _count_head(self, n: int) -> None:
        self.head_bytes += n
        if self.head_bytes > self.limits.max_header_bytes:
            raise Refuse(
                431,
                "headers_too_large",
                f"request head exceeds {self.limits.max_header_bytes} bytes",
            )

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_raw = 0
        # llhttp already refuses CL with TE and differing duplicates; equal duplicates too.
        if self.lengths > 1:
            raise Refuse(400, "bad_request", "more than one Content-Length")
        # RFC 9112 3.2: an HTTP/1.1 request carries exactly one Host.
        if self.hosts != 1 and self.parser.get_http_version() == "1.1":
            raise Refuse(400, "bad_request", "an HTTP/1.1 request needs exactly one Host header")
        self.url = _origin_form(self.url)
        if self.declared > self.limits.max_body_bytes:
            raise Refuse(
                413,
                "payload_too_large",
                f"body of {self.declared} bytes exceeds the limit of "
                f"{self.limits.max_body_bytes} bytes",
            )

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > self.limits.max_body_bytes:
            raise Refuse(
                413,
                "payload_too_large",
                f"body exceeds the limit of {self.limits.max_body_bytes} bytes",
            )
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        target = self.url.decode("latin-1")
        path, _, query = target.partition("?")
        headers: dict[str, str] = {}
        for raw_name, raw_value in self.fields:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        method = self.parser.get_method().decode("ascii")
        self.ready.append(
            (Request(method, path, query, headers, body), self.parser.should_keep_alive())
        )

    # --- the loop ------------------------------------------------------------------------

    async def serve(self) -> None:
        """Read, parse, answer in order, until the client leaves or we close."""
        while True:
            if self.ready:
                if not await self._answer_ready():
                    return
                continue
            if self.in_message and self.wants_continue and not self.continued:
                self.continued = True
                if not await self._send(_CONTINUE):
                    return
            if self.last:
                return
            data = await self._receive()
            if not data:
                return  # client gone, idle timeout or drain; a partial request is dropped
            refusal = self._feed(data)
            if refusal is not None:
                # Requests that were complete before the bad one are answered first.
                if await self._answer_ready():
                    await self._refuse(refusal.status, refusal.code, refusal.message)
                return

    def _feed(self, data: bytes) -> Refuse | None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, Refuse):
                return exc.__context__
            raise
        except httptools.HttpParserUpgrade:
            self.last = True
        except httptools.HttpParserError as exc:
            # llhttp's messages are fixed texts ("Duplicate Content-Length"), never input.
            return Refuse(400, "bad_request", f"malformed request: {exc}")
        if self.in_head:
            # httptools buffers a partial header line itself: bound that buffer too.
            self.head_raw += len(data)
            if self.head_raw > self.limits.max_header_bytes + _RECV_BYTES:
                return Refuse(431, "headers_too_large", "request head too large")
        return None

    async def _receive(self) -> bytes:
        """The next bytes; b"" when the client closed, a timeout passed or drain closed us."""
        if self.in_message:
            deadline = self.started_at + self.limits.read_timeout_s
            with trio.move_on_at(deadline):
                return await self._receive_some()
            # A slow loris or a stalled body: say so, then close.
            await self._refuse(408, "request_timeout", "request not received in time")
            return b""
        if self.server.draining:
            return b""
        with trio.CancelScope(
            deadline=trio.current_time() + self.limits.keep_alive_timeout_s
        ) as scope:
            self.idle_scope = scope
            try:
                return await self._receive_some()
            finally:
                self.idle_scope = None
        return b""

    async def _receive_some(self) -> bytes:
        # Wait, then read the fd: trio's receive_some would first try a read that
        # finds nothing (the client is waiting for our answer), one wasted syscall
        # per request.
        try:
            while True:
                await trio.lowlevel.wait_readable(self.fd)
                try:
                    return os.read(self.fd, _RECV_BYTES)
                except BlockingIOError:
                    continue
        except (trio.ClosedResourceError, OSError):
            return b""

    async def _answer_ready(self) -> bool:
        """Answer every complete request in order, in one write; False once we must close."""
        out: list[bytes] = []
        keep = True
        while self.ready and keep:
            request, keep_alive = self.ready.popleft()
            response = await self.server.call(request)
            self.server.answered += 1
            keep = keep_alive and not ((self.server.draining or self.last) and not self.ready)
            out.append(
                encode_response(response, head_only=request.method == "HEAD", close=not keep)
            )
        sent = await self._send(out[0] if len(out) == 1 else b"".join(out))
        return sent and keep

    async def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer an error with ``Connection: close`` and close gently.

        The client may still be sending (a body we refused): closing a socket with
        unread input makes the kernel send RST, which can destroy our answer before
        the client reads it. So: answer, shut our side, and read (and drop) what
        is still coming for a moment before closing.
        """
        answer = encode_response(error_response(status, code, message), head_only=False, close=True)
        if not await self._send(answer):
            return
        with trio.move_on_after(_LINGER_S):
            try:
                await self.stream.send_eof()
                while await self.stream.receive_some(_RECV_BYTES):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _send(self, data: bytes) -> bool:
        """Write ``data``; False if the client is gone or does not read in time.

        One os.write first: an answer nearly always fits the socket buffer, and
        trio's send_all would add a scheduler pass after writing. The rest (a slow
        reader) goes through send_all, bounded by the read timeout.
        """
        try:
            sent = os.write(self.fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return False
        if sent == len(data):
            return True
        data = data[sent:]
        with trio.move_on_after(self.limits.read_timeout_s):
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
            return True
        return False


class WireServer:
    """The data-plane server actor; ``started()`` hands back the bound URLs.

    :meth:`drain` stops accepting, closes idle connections, lets requests in
    flight finish (see the module docstring) and returns when every connection
    is closed or ``drain_timeout_s`` passed (the rest is then cancelled).
    """

    name = "http-data"
    essential = True

    def __init__(
        self, handler: Handler, *, host: str, port: int, limits: WireLimits | None = None
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.limits = limits or WireLimits()
        self.urls: list[str] = []
        self.draining = False
        self.answered = 0
        self._connections: set[_Connection] = set()
        self._accept_scope = trio.CancelScope()
        self._stopped = trio.Event()

    async def call(self, request: Request) -> Response:
        """The handler's answer; a crash is logged and answered 500, the connection lives on."""
        try:
            return await self.handler(request)
        except Exception:
            log.exception("unhandled error", method=request.method, path=request.path)
            return error_response(500, "internal", "internal error; see the daemon log")

    async def run(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.draining = False
        self._accept_scope = trio.CancelScope()
        self._stopped = trio.Event()
        listeners = await trio.open_tcp_listeners(self.port, host=self.host, backlog=1024)
        self.urls = [_url(listener) for listener in listeners]
        try:
            async with trio.open_nursery() as connections:
                with self._accept_scope:
                    async with trio.open_nursery() as acceptors:
                        for listener in listeners:
                            acceptors.start_soon(self._accept_loop, listener, connections)
                        # Listening and accepting: callers may connect from now on.
                        log.info("listening", urls=self.urls, plane="data")
                        task_status.started(self.urls)
                _close_listeners(listeners)
                # Drain: connections finish (or are cancelled at the deadline).
                connections.cancel_scope.deadline = (
                    trio.current_time() + self.limits.drain_timeout_s
                )
        finally:
            _close_listeners(listeners)
            self._stopped.set()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_RETRY:
                    raise
                log.warning("accept failed; retrying", errno=exc.errno)
                await trio.sleep(0.1)
                continue
            nursery.start_soon(self._serve, stream)

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = _Connection(stream, self)
        self._connections.add(conn)
        try:
            await conn.serve()
        finally:
            self._connections.discard(conn)
            await trio.aclose_forcefully(stream)

    async def drain(self) -> None:
        """Stop intake, close idle connections, wait for requests in flight (bounded)."""
        self.draining = True
        self._accept_scope.cancel()
        for conn in list(self._connections):
            if conn.idle_scope is not None:
                conn.idle_scope.cancel()
        with trio.move_on_after(self.limits.drain_timeout_s + 1):
            await self._stopped.wait()


def _close_listeners(listeners: list[trio.SocketListener]) -> None:
    # Synchronous on purpose: also runs when run() is cancelled, where awaiting is not possible.
    for listener in listeners:
        listener.socket.close()


def _url(listener: trio.SocketListener) -> str:
    host, port, *_ = listener.socket.getsockname()
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
