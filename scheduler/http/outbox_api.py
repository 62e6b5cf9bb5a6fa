"""The outbox over HTTP: the pull feed for gateways and the operators' view.

``GET /v1/events?after=<cursor>&limit=`` (gateway token) serves every event,
whatever its destination, in the feed's order: a consumer stores
``next_cursor`` and asks again with it, and resumes exactly where it stopped
(no event twice, none skipped, also when transactions commit out of order; see
:mod:`scheduler.outbox`). Coming back with a cursor acknowledges the pull-only
events before it, which lets retention purge them.

``GET /v1/admin/outbox?status=`` lists events (keyset pages by id),
``GET /v1/admin/outbox/{id}`` shows one, ``POST /v1/admin/outbox/{id}/retry``
sends a dead event again (attempts reset) or makes a pending one due now; a
consumed or in-flight event answers 409 and nothing changes. Destinations are
shown without userinfo or query values.

Bad input (each 422 naming the field, nothing changed): an unknown ``status``,
a ``limit`` out of range or not a number, a malformed ``after`` cursor or id.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

from accounts.errors import StoreUnavailable, ValidationFailed

from ..outbox import CURSOR_PATTERN, Cursor, FeedPage, OutboxEvent, OutboxStore, Status
from .endpoints import DATA, Call, Endpoint, Scope

MAX_FEED_PAGE = 1000
MAX_ADMIN_PAGE = 500
_ID_MAX = 2**63 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")


class FeedQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    after: (
        Annotated[
            str,
            msgspec.Meta(
                pattern=CURSOR_PATTERN,
                description="next_cursor of the previous page (omit to start from the oldest kept)",
            ),
        ]
        | None
    ) = None
    limit: Annotated[
        int,
        msgspec.Meta(ge=1, le=MAX_FEED_PAGE, description=f"page size, 1..{MAX_FEED_PAGE}"),
    ] = 100


class OutboxQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    status: (
        Annotated[
            Literal["pending", "published", "consumed", "dead"],
            msgspec.Meta(description="only events in this status (default: all)"),
        ]
        | None
    ) = None
    after: Annotated[
        int, msgspec.Meta(ge=0, le=_ID_MAX, description="next_after of the previous page")
    ] = 0
    limit: Annotated[
        int,
        msgspec.Meta(ge=1, le=MAX_ADMIN_PAGE, description=f"page size, 1..{MAX_ADMIN_PAGE}"),
    ] = 100


# An outbox event id in a path: a positive integer that fits a bigint.
EventId = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,19}$", description="outbox event id")]


class OutboxList(msgspec.Struct, frozen=True):
    items: list[OutboxEvent]
    # Pass as ``after`` for the next page; null on the last one.
    next_after: int | None


def _store(call: Call) -> OutboxStore:
    store: OutboxStore | None = call.services.outbox
    if store is None:
        raise StoreUnavailable("postgres", "the outbox is not running")
    return store


def _event_id(call: Call) -> int:
    text = call.path_params["id"]
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
    if not _DIGITS.fullmatch(text) or int(text) > _ID_MAX:
        raise ValidationFailed.one("id", "must be an outbox event id (a positive integer)")
    return int(text)


async def pull_events(call: Call) -> FeedPage:
    query: FeedQuery = call.query
    after = Cursor() if query.after is None else Cursor.parse(query.after, field="after")
    return await _store(call).feed(after, query.limit)


async def list_outbox(call: Call) -> OutboxList:
    query: OutboxQuery = call.query
    status = None if query.status is None else Status(query.status)
    items = await _store(call).list(status, after_id=query.after, limit=query.limit)
    return OutboxList(items, items[-1].id if len(items) == query.limit else None)


async def get_outbox_event(call: Call) -> OutboxEvent:
    return await _store(call).get(_event_id(call))


async def retry_outbox_event(call: Call) -> OutboxEvent:
    return await _store(call).retry(_event_id(call))


_ADMIN = "/v1/admin/outbox"
_TAGS = ("outbox",)
ENDPOINTS = [
    Endpoint(
        "GET",
        "/v1/events",
        pull_events,
        "Events after a cursor, in commit-safe order (resume with next_cursor)",
        scope=Scope.GATEWAY,
        response=FeedPage,
        errors=(422, 503),
        tags=("events",),
        query=FeedQuery,
        # The gateway's feed: on the port the gateway talks to.
        planes=DATA,
    ),
    Endpoint(
        "GET",
        _ADMIN,
        list_outbox,
        "List outbox events by status (keyset pages by id)",
        scope=Scope.ADMIN,
        response=OutboxList,
        errors=(422, 503),
        tags=_TAGS,
        query=OutboxQuery,
    ),
    Endpoint(
        "GET",
        _ADMIN + "/{id}",
        get_outbox_event,
        "One outbox event",
        scope=Scope.ADMIN,
        response=OutboxEvent,
        errors=(404, 422, 503),
        path_types={"id": EventId},
        tags=_TAGS,
    ),
    Endpoint(
        "POST",
        _ADMIN + "/{id}/retry",
        retry_outbox_event,
        "Deliver a dead event again (attempts reset) or a pending one now; 409 otherwise",
        scope=Scope.ADMIN,
        response=OutboxEvent,
        errors=(404, 409, 422, 503),
        path_types={"id": EventId},
        tags=_TAGS,
    ),
]
