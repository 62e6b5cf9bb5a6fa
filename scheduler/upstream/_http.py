"""One HTTP exchange with an upstream, every failure translated into our errors.

The adapters build the request and read the answer; this module owns what is
common: timeouts (connect, the whole answer, and one overall deadline that also
covers the wait for a connection slot), the per-platform
connection limit, and the translation of transport failures. The wire is
:meth:`scheduler.core.transport.TrioTransport.call`: no httpx models per request
(bench/simulator.py: CPU per fetch through httpx + httpcore, httpx + the lean
transport, and this). For a submit the
question that matters is whether the request may have reached the upstream: a
failure to connect is ``Transient`` (nothing was sent, retry is safe), anything
after the request went out is ``Ambiguous``.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import math
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeVar

import httpx
import msgspec
import trio

from ..core.transport import Header, Origin, TrioTransport, origin_of
from .errors import Ambiguous, AuthFailed, RateLimited, Rejected, Transient, UpstreamError

T = TypeVar("T")

# Characters left as they are in a request path (RFC 3986 pchar and "/"; "%"
# keeps an already encoded path as it is).
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
# A path (and query) that needs no encoding: sent as it is.
_PLAIN_TARGET = re.compile(r"/[A-Za-z0-9/:@!$&'()*+,;=._~%?-]*")
# Beyond an hour a Retry-After is garbage or a daily quota; either way not a delay to sleep.
MAX_RETRY_AFTER_S = 3600.0


class Reply(msgspec.Struct, frozen=True):
    status: int
    headers: Mapping[str, str]  # names lower-cased; a repeated header keeps its last value
    body: bytes


class Exchange:
    """Sends requests for one platform through the shared transport."""

    def __init__(
        self,
        transport: TrioTransport,
        platform: str,
        *,
        connect_timeout_s: float,
        timeout_s: float,
        submit_timeout_s: float,
        max_connections: int,
        shared: trio.CapacityLimiter | None = None,
    ) -> None:
        self.transport = transport
        self.platform = platform
        self._connect_s = connect_timeout_s
        self._timeout_s = timeout_s
        self._submit_s = submit_timeout_s
        self._limiter = trio.CapacityLimiter(max_connections)
        # Every platform's requests together (upstream.max_connections).
        self._shared = shared or trio.CapacityLimiter(max_connections)

    async def send(
        self,
        method: str,
        url: str,
        *,
        account_id: str | None,
        headers: Mapping[str, str],
        json: Any = None,
        params: Mapping[str, str] | None = None,
        submit: bool = False,
    ) -> Reply:
        """The upstream's answer (any status); raises Transient, or Ambiguous for a submit."""
        read_s = self._submit_s if submit else self._timeout_s
        content = msgspec.json.encode(json) if json is not None else b""
        lines = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        if json is not None:
            lines.append((b"content-type", b"application/json"))
        sent = False
        # The overall deadline covers the wait for a slot, connect, send and a slow body.
        with trio.move_on_after(self._connect_s * 2 + read_s) as deadline:
            try:
                origin, target = _split(url, params)
                async with _slot(self._limiter), _slot(self._shared):
                    sent = True
                    raw = await self.transport.call(
                        method.encode("ascii"),
                        origin,
                        target,
                        lines,
                        content,
                        connect_timeout_s=self._connect_s,
                        read_timeout_s=read_s,
                    )
                return Reply(raw.status, _header_map(raw.headers), raw.body)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol) as exc:
                # Nothing went out (an unusable base URL is the account's problem).
                raise self._transient(
                    f"cannot reach upstream ({type(exc).__name__})", account_id
                ) from None
            except httpx.HTTPError as exc:
                what = f"no complete answer ({type(exc).__name__})"
                raise self._lost(what, account_id, submit) from None
        assert deadline.cancelled_caught
        raise self._lost("no complete answer in time", account_id, submit and sent)

    def _transient(self, message: str, account_id: str | None) -> Transient:
        return Transient(message, platform=self.platform, account_id=account_id)

    def _lost(self, message: str, account_id: str | None, submit: bool) -> UpstreamError:
        if submit:
            return Ambiguous(
                f"submit outcome unknown: {message}", platform=self.platform, account_id=account_id
            )
        return self._transient(message, account_id)

    def decode(self, reply: Reply, type_: type[T], *, account_id: str | None, submit: bool) -> T:
        """The body as ``type_``; a body we cannot read is Transient (Ambiguous on submit)."""
        try:
            return msgspec.json.decode(reply.body, type=type_)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            # The decoder's message names the field, never the body's content.
            raise self._lost(
                f"unreadable answer (HTTP {reply.status}): {exc}", account_id, submit
            ) from None

    def error(
        self,
        reply: Reply,
        reason: str,
        *,
        account_id: str | None,
        submit: bool = False,
    ) -> UpstreamError:
        """The generic classification of a non-2xx answer by its HTTP status."""
        status = reply.status
        msg = f"HTTP {status}: {reason}"
        if status == 429:
            return RateLimited(
                msg,
                platform=self.platform,
                account_id=account_id,
                retry_after_s=retry_after_s(reply.headers),
            )
        if status in (401, 403):
            return AuthFailed(msg, platform=self.platform, account_id=account_id)
        if submit and status in (502, 504):
            # A gateway in front timed out: the origin may have created the task.
            return self._lost(msg, account_id, submit=True)
        if status >= 500 or status == 408:
            return self._transient(msg, account_id)
        return Rejected(msg, platform=self.platform, account_id=account_id)


def retry_after_s(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``Retry-After`` (delay or HTTP date)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        value = _number(raw_ms)
        if value is not None:
            return min(value / 1000.0, MAX_RETRY_AFTER_S)
    raw = headers.get("retry-after")
    if not raw:
        return None
    value = _number(raw)
    if value is None:
        try:
            when = email.utils.parsedate_to_datetime(raw).timestamp()
        except (TypeError, ValueError):
            return None
        value = when - (time.time() if now is None else now)
    return min(max(value, 0.0), MAX_RETRY_AFTER_S)


@contextlib.asynccontextmanager
async def _slot(limiter: trio.CapacityLimiter) -> AsyncIterator[None]:
    """``async with limiter`` without its two scheduler passes when a slot is free
    (the request that follows yields anyway): ~8 µs a limiter, per poll."""
    try:
        limiter.acquire_nowait()
    except trio.WouldBlock:
        await limiter.acquire()
    try:
        yield
    finally:
        limiter.release()


def _split(url: str, params: Mapping[str, str] | None) -> tuple[Origin, bytes]:
    """The origin and the request target (path and query, percent-encoded) of ``url``."""
    if not params:
        # The common case, a plain URL: its origin parsed once per base URL.
        scheme_end = url.find("://")
        path_at = url.find("/", scheme_end + 3) if scheme_end > 0 else -1
        if path_at > 0 and _PLAIN_TARGET.fullmatch(url, path_at):
            return _origin(url[:path_at]), url[path_at:].encode("ascii")
    return _split_parsed(url, params)


def _split_parsed(url: str, params: Mapping[str, str] | None) -> tuple[Origin, bytes]:
    parts = urllib.parse.urlsplit(url)
    path = urllib.parse.quote(parts.path or "/", safe=_PATH_SAFE)
    query = parts.query
    if params:
        extra = urllib.parse.urlencode(params)
        query = f"{query}&{extra}" if query else extra
    target = f"{path}?{query}" if query else path
    return origin_of(parts.scheme, parts.hostname or "", parts.port), target.encode("ascii")


@functools.lru_cache(maxsize=1024)
def _origin(prefix: str) -> Origin:
    parts = urllib.parse.urlsplit(prefix)
    return origin_of(parts.scheme, parts.hostname or "", parts.port)


def _header_map(lines: list[Header]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in lines}


def _number(raw: str) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None
