"""Declaring HTTP endpoints once: routing, auth, body decoding, errors and OpenAPI.

Each API module lists :class:`Endpoint` values; :func:`wrap` turns one into a
transport-neutral handler (an :class:`Incoming` request in, an :class:`Answer`
out), and :func:`scheduler.http.openapi.openapi_document` documents the same
list, so a route cannot exist without appearing in ``/openapi.json``. Two
transports serve those handlers (:mod:`scheduler.http.planes`): the control plane
on hypercorn + starlette (:mod:`scheduler.http.app`) and the data plane on the
lean wire server (:mod:`scheduler.http.data_plane`); neither routes anything by hand.

A handler is ``async def handler(call: Call) -> Any``. ``call.body`` is the
decoded, validated request struct (or None), ``call.query`` the decoded query
struct (or None), ``call.headers`` the request headers (lower-case names),
``call.path_params`` the percent-decoded path parameters, ``call.services`` the
daemon's services. Returning a msgspec Struct, dict or list sends it as JSON
with ``Endpoint.status``; returning an :class:`Answer` sends it as is.
Raising a :class:`~accounts.errors.StationmasterError` sends the error body with
its status.

What the wrapper answers before a handler runs, in order: 401/403 (token), 415
(a route with a JSON body sent another ``Content-Type``), 400/413 (the body),
422 (query or body invalid). (The data plane's wire refuses a body over the
limit, 413, while reading it: before the token is looked at.) The published
schema is generated from the same structs that decode the request (body, query,
path and header types), so what it says is what the server enforces.

A store outage (:class:`~accounts.errors.StoreUnavailable`) is a 503
``store_unavailable`` with ``Retry-After``, on every route, and is logged once
per outage (:class:`Outages`), not once per request: with Redis down a busy
gateway would otherwise write a line per select. The outage is over, and said
so once, when a route that needs that store (``Endpoint.stores``) answers again.
"""

from __future__ import annotations

import enum
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol

import msgspec
import structlog

from accounts.errors import (
    Forbidden,
    MethodNotAllowed,
    StationmasterError,
    StoreUnavailable,
    Unauthorized,
    UnsupportedMediaType,
)
from accounts.validation import convert_query, decode_json

from ..core.logs import get_logger
from ._wire_messages import Response as Answer

log = get_logger("http")


class Scope(enum.Enum):
    """Who may call an endpoint. Tokens of one scope are refused (403) on the other."""

    ADMIN = "admin"
    GATEWAY = "gateway"


class Plane(enum.Enum):
    """Which listener serves an endpoint (``Endpoint.planes``).

    DATA: the gateway's per-request routes and the load balancer's probes, on the
    lean wire server (``http.data_host``/``http.data_port``). CONTROL: admin,
    metrics, OpenAPI, on hypercorn + starlette (``http.host``/``http.port``).
    """

    DATA = "data"
    CONTROL = "control"


# The gateway's routes: the data plane only (the control port may be firewalled off it).
DATA = (Plane.DATA,)
# The probes and the OpenAPI document: on both (each plane documents its own routes).
BOTH = (Plane.DATA, Plane.CONTROL)


class ErrorDetail(msgspec.Struct, frozen=True):
    code: str
    message: str
    details: dict[str, Any] = msgspec.field(default_factory=dict)


class ErrorBody(msgspec.Struct, frozen=True):
    """Every error answer: ``{"error": {"code", "message", "details"}}``."""

    error: ErrorDetail


class Incoming(Protocol):
    """A request as a transport hands it to :func:`wrap` (starlette's or the wire's)."""

    method: str

    @property
    def headers(self) -> Mapping[str, str]:
        """Header values by lower-case name."""

    @property
    def path_params(self) -> Mapping[str, str]:
        """The route template's parameters, percent-decoded."""

    @property
    def query_params(self) -> Mapping[str, str]:
        """Query parameters (the last value of a repeated name)."""

    async def read_body(self, limit: int) -> bytes:
        """The body, refusing (413) one over ``limit`` bytes."""


@dataclass(frozen=True, slots=True)
class Call:
    headers: Mapping[str, str]
    path_params: Mapping[str, str]
    body: Any
    services: Any
    scope: Scope | None
    query: Any = None
    # The OpenAPI document of the plane answering (what /openapi.json serves there).
    openapi: Any = None


Handler = Callable[[Call], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Header:
    """A request header a route reads: documented as a parameter with this type's schema."""

    name: str
    type: Any
    description: str
    required: bool = False


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    scope: Scope | None = None
    body: type | None = None
    response: type | None = None
    status: int = 200
    # Extra documented error statuses beyond those the wrapper itself can answer.
    errors: tuple[int, ...] = ()
    tags: tuple[str, ...] = ()
    # A msgspec Struct of the query parameters (decoded into ``call.query``, documented
    # one parameter per field, ``required`` when the field has no default).
    query: type | None = None
    # Path parameter name -> its type (a constrained ``str``); unlisted ones are plain strings.
    path_types: Mapping[str, Any] = field(default_factory=dict)
    headers: tuple[Header, ...] = ()
    description: str = ""
    # Statuses whose body is not the error body (a probe's 503 is its own report).
    other_responses: Mapping[int, type] = field(default_factory=dict)
    # Media type of a non-JSON answer (``/metrics``).
    media_type: str = "application/json"
    # Stores a successful answer of this route proves reachable (ends an outage's log).
    stores: tuple[str, ...] = ()
    # The listeners that serve it (see Plane).
    planes: tuple[Plane, ...] = (Plane.CONTROL,)

    @property
    def reads_body(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH")


# Every time in an answer: RFC 3339 with its offset (UTC, "Z"); published as date-time.
UtcTime = Annotated[datetime, msgspec.Meta(tz=True)]


def utc(epoch_s: float) -> datetime:
    """Epoch seconds as an aware UTC datetime: every time in an answer is RFC 3339."""
    return datetime.fromtimestamp(epoch_s, UTC)


def utc_or_none(epoch_s: float | None) -> datetime | None:
    return None if epoch_s is None else utc(epoch_s)


def json_response(
    value: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Answer:
    return Answer(status, msgspec.json.encode(value), headers=list((headers or {}).items()))


def error_response(exc: StationmasterError, request_id: str = "") -> Answer:
    headers = {"x-request-id": request_id} if request_id else {}
    retry = exc.details.get("retry_after_s")
    if isinstance(retry, (int, float)):
        headers["retry-after"] = str(max(1, round(retry)))
    if exc.status == 401:
        headers["www-authenticate"] = "Bearer"
    if isinstance(exc, MethodNotAllowed):
        headers["allow"] = ", ".join(exc.allowed)
    body = ErrorBody(ErrorDetail(exc.code, exc.message, exc.details))
    return json_response(body, exc.status, headers)


class TokenTable:
    """Bearer tokens by scope, compared in constant time."""

    def __init__(self, admin: list[str], gateway: list[str]) -> None:
        self._tokens = [(t.encode(), Scope.ADMIN) for t in admin] + [
            (t.encode(), Scope.GATEWAY) for t in gateway
        ]

    def scope_of(self, presented: str) -> Scope | None:
        """The scope of ``presented``; every stored token is compared, so timing says nothing."""
        candidate = presented.encode()
        found: Scope | None = None
        for token, scope in self._tokens:
            if hmac.compare_digest(token, candidate):
                found = scope
        return found


def authorize(headers: Mapping[str, str], tokens: TokenTable, needed: Scope) -> Scope:
    header = headers.get("authorization", "")
    kind, _, presented = header.partition(" ")
    if kind.lower() != "bearer" or not presented.strip():
        raise Unauthorized("a bearer token is required")
    scope = tokens.scope_of(presented.strip())
    if scope is None:
        raise Unauthorized("the bearer token is not valid")
    if scope is not needed:
        raise Forbidden(f"this route needs a token with the {needed.value} scope")
    return scope


def _request_id(headers: Mapping[str, str]) -> str:
    given = headers.get("x-request-id", "")
    # Accept the gateway's id when it is a plausible token; never echo arbitrary bytes.
    if 0 < len(given) <= 64 and all(c.isalnum() or c in "-_." for c in given):
        return given
    return secrets.token_hex(8)


class Outages:
    """Store outages as requests meet them: one log line when one starts, one when it ends."""

    def __init__(self) -> None:
        # store -> monotonic time the first failing request met the outage
        self._down: dict[str, float] = {}

    def failed(self, exc: StoreUnavailable) -> None:
        if exc.store not in self._down:
            self._down[exc.store] = time.monotonic()
            log.warning(
                "store unavailable: answering 503 until it is back",
                store=exc.store,
                reason=exc.message,
            )

    def succeeded(self, stores: tuple[str, ...]) -> None:
        for store in stores:
            since = self._down.pop(store, None)
            if since is not None:
                log.info(
                    "store back: requests succeed again",
                    store=store,
                    outage_s=round(time.monotonic() - since, 3),
                )

    def down(self) -> list[str]:
        return sorted(self._down)


def wrap(
    endpoint: Endpoint,
    *,
    services: Any,
    tokens: TokenTable,
    max_body: int,
    metrics: Any,
    outages: Outages | None = None,
    openapi: Any = None,
) -> Callable[[Incoming], Awaitable[Answer]]:
    """The handler of ``endpoint`` for any transport: auth, body, call, errors, metrics, logs.

    ``openapi`` is the document of the plane serving it (``call.openapi``).
    """
    outages = outages if outages is not None else Outages()
    requests_total = metrics.http_requests

    async def handle(request: Incoming) -> Answer:
        rid = _request_id(request.headers)
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(request_id=rid):
            answer, unavailable = await _run(
                endpoint, request, rid, services, tokens, max_body, openapi
            )
            if not any(name == "x-request-id" for name, _ in answer.headers):
                answer.headers.append(("x-request-id", rid))
            requests_total.labels(endpoint.path, str(answer.status)).inc()
            if unavailable is not None:
                outages.failed(unavailable)
            elif answer.status >= 500:
                log.warning(
                    "request failed",
                    method=endpoint.method,
                    route=endpoint.path,
                    status=answer.status,
                    ms=round((time.perf_counter() - started) * 1000, 2),
                )
            elif answer.status < 400:
                outages.succeeded(endpoint.stores)
            return answer

    handle.__name__ = endpoint.handler.__name__
    return handle


def is_json(content_type: str) -> bool:
    """``application/json`` or any ``+json`` type, parameters (charset) ignored."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def _decode(endpoint: Endpoint, request: Incoming, max_body: int) -> tuple[Any, Any]:
    """The body and query structs (415, 400/413, 422 when they cannot be)."""
    body: Any = None
    if endpoint.body is not None:
        content_type = request.headers.get("content-type")
        if content_type is not None and not is_json(content_type):
            raise UnsupportedMediaType(
                "this route takes a JSON body (Content-Type: application/json)"
            )
        raw = await request.read_body(max_body)
        body = decode_json(raw or b"{}", endpoint.body)
    elif endpoint.reads_body:
        # Still bounded: a route without a body must not buffer an unbounded one.
        await request.read_body(max_body)
    query = None if endpoint.query is None else convert_query(request.query_params, endpoint.query)
    return body, query


async def _run(
    endpoint: Endpoint,
    request: Incoming,
    rid: str,
    services: Any,
    tokens: TokenTable,
    max_body: int,
    openapi: Any,
) -> tuple[Answer, StoreUnavailable | None]:
    """The answer, and the store outage behind it if that is what it answers."""
    try:
        headers = request.headers
        scope = authorize(headers, tokens, endpoint.scope) if endpoint.scope else None
        body, query = await _decode(endpoint, request, max_body)
        call = Call(headers, request.path_params, body, services, scope, query, openapi)
        result = await endpoint.handler(call)
    except StoreUnavailable as exc:
        return error_response(exc, rid), exc
    except StationmasterError as exc:
        return error_response(exc, rid), None
    except Exception:
        # Log the traceback (redacted by the log pipeline); answer without details.
        log.exception("unhandled error", route=endpoint.path)
        return error_response(
            StationmasterError("internal error; see the daemon log with this request id"), rid
        ), None
    if isinstance(result, Answer):
        return result, None
    return json_response(result, endpoint.status), None
