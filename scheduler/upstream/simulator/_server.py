"""A small HTTP/1.1 server on trio + httptools, just enough for the simulator.

Why not hypercorn + starlette: they cost ~500 µs of CPU per request here, and the
simulator must serve the task poller's benchmark (1,000 polls/s) from few
processes. This server parses with httptools (the C parser uvicorn uses), keeps
connections alive, answers requests on one connection in order, and supports the
two deliberate misbehaviours the simulator needs: a *hang* (read the request,
never answer, hold the connection until the client gives up) and a *truncated*
body (announce more bytes than are sent, then close).
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qsl

import httptools
import trio

# Larger bodies are not something any simulated API accepts.
MAX_BODY = 8 * 1024 * 1024
_REASONS = {s.value: s.phrase for s in HTTPStatus}


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased
    body: bytes


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json"
    hang: bool = False  # never answer; hold the connection until the client closes it
    truncate: bool = False  # send half the body under a full Content-Length, then close

    def encode(self) -> bytes:
        body = self.body
        length = len(body)
        if self.truncate:
            body = body[: length // 2]
        lines = [f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}"]
        lines.append(f"content-type: {self.content_type}")
        lines.append(f"content-length: {length}")
        lines.extend(f"{k}: {v}" for k, v in self.headers)
        if self.truncate:
            lines.append("connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


Handler = Callable[[Request], Awaitable[Response]]


class _Parser:
    """httptools callbacks collecting complete requests."""

    def __init__(self) -> None:
        self.ready: deque[tuple[Request, bool]] = deque()
        self.parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0

    def on_message_begin(self) -> None:
        self._url, self._headers, self._body, self._size = b"", {}, [], 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_BODY:
            raise httptools.HttpParserError("body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        url = httptools.parse_url(self._url)
        query = dict(parse_qsl(url.query.decode("latin-1"))) if url.query else {}
        method = self.parser.get_method().decode("ascii")
        request = Request(
            method, url.path.decode("latin-1"), query, self._headers, b"".join(self._body)
        )
        self.ready.append((request, self.parser.should_keep_alive()))


async def _connection(handler: Handler, stream: trio.SocketStream) -> None:
    proto = _Parser()
    try:
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            try:
                proto.parser.feed_data(data)
            except httptools.HttpParserError:
                await stream.send_all(Response(400, b'{"error":"bad request"}').encode())
                return
            while proto.ready:
                request, keep_alive = proto.ready.popleft()
                response = await handler(request)
                if response.hang:
                    # Read (and drop) until the client gives up and closes.
                    while await stream.receive_some(65536):
                        pass
                    return
                await stream.send_all(response.encode())
                if response.truncate or not keep_alive:
                    return
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return
    finally:
        await trio.aclose_forcefully(stream)


async def serve_http(
    handler: Handler,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``started()`` hands back the bound ``(host, port)``."""
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=1024)
    bound = listeners[0].socket.getsockname()
    async with trio.open_nursery() as nursery:
        # started() only once the sockets listen: a client may connect at once.
        task_status.started((bound[0], bound[1]))
        await trio.serve_listeners(
            functools.partial(_connection, handler), listeners, handler_nursery=nursery
        )
