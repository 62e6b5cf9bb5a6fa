"""The wire's messages: limits, the request and response values, and the response bytes.

The small values a handler of :mod:`scheduler.http.wire` sees, and how an answer
becomes bytes (status line, headers, Content-Length framing, one buffer).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate

import msgspec

# Reason phrases of the statuses this project answers; any other goes out with an
# empty phrase, which RFC 9112 allows.
REASONS = {
    100: "Continue",
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    422: "Unprocessable Content",
    428: "Precondition Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class WireLimits:
    """Sizes and timeouts of the wire (the HTTP config passes its values in)."""

    max_body_bytes: int = 1024 * 1024
    # Request line plus every header name and value (+4 bytes each for ": " and CRLF).
    max_header_bytes: int = 16 * 1024
    max_headers: int = 64
    # From a request's first byte to its last (head and body): a slow loris's budget.
    read_timeout_s: float = 10.0
    keep_alive_timeout_s: float = 120.0  # longer than clients' idle pools (config.py)
    drain_timeout_s: float = 10.0


@dataclass(slots=True)
class Request:
    """One parsed request. ``path`` and ``query`` are raw (not percent-decoded)."""

    method: str
    path: str
    query: str
    # Lower-case names; repeated fields joined with ", " (RFC 9110 5.3).
    headers: dict[str, str]
    body: bytes = b""


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Request], Awaitable[Response]]


class Refuse(Exception):
    """Raised from a parser callback: answer ``status`` and close the connection."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str) -> Response:
    """The project's error body, ``{"error": {"code", "message", "details"}}``."""
    body = {"error": {"code": code, "message": message, "details": {}}}
    return Response(status, msgspec.json.encode(body))


class _Date:
    """The Date header, formatted at most once a second."""

    second = 0
    value = b""

    @classmethod
    def now(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.second, cls.value = now, formatdate(now, usegmt=True).encode()
        return cls.value


def encode_response(response: Response, *, head_only: bool, close: bool) -> bytes:
    """Status line, headers and body in one buffer (always Content-Length framing)."""
    reason = REASONS.get(response.status, "")
    lines = [
        b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\ndate: %s\r\n"
        % (
            response.status,
            reason.encode(),
            response.content_type.encode(),
            len(response.body),
            _Date.now(),
        )
    ]
    for name, value in response.headers:
        lines.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
    if close:
        lines.append(b"connection: close\r\n")
    lines.append(b"\r\n")
    if not head_only:
        lines.append(response.body)
    return b"".join(lines)
