"""The outbox store: the only caller of :mod:`._queries` (procrastinate's manager shape).

Actors and HTTP handlers talk to :class:`OutboxStore`; it turns rows into typed
values and compare-and-set misses into answers (``False``, an empty set,
:class:`StateConflict`), never into silent changes. Errors: StoreUnavailable
when PostgreSQL does not answer (from :mod:`accounts.db`), NotFound, and
StateConflict (409) for a move the current state does not allow.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from accounts.db import Database, Record
from accounts.errors import Conflict, NotFound, StationmasterError, ValidationFailed

from . import _queries as q
from ._rules import Status, display_url

# xid8 is an unsigned 64-bit counter; ids are bigint.
_MAX_XID = 2**64 - 1
_MAX_ID = 2**63 - 1
# ASCII digits, at most 19 / 18 of them: every such number fits xid8 / bigint, so the
# published pattern (CURSOR_PATTERN) is exactly what parse() accepts.
CURSOR_PATTERN = r"^([0-9]{1,19})\.([0-9]{1,18})$"
_CURSOR = re.compile(CURSOR_PATTERN)


class StateConflict(Conflict):
    """The event's current status does not allow the asked move (409); ``current_status`` says
    which."""

    code = "state_conflict"

    def __init__(self, message: str, *, current_status: str) -> None:
        StationmasterError.__init__(self, message, details={"current_status": current_status})
        self.current_version = None
        self.current_status = current_status


@dataclass(frozen=True, slots=True, order=True)
class Cursor:
    """A position in the pull feed: (inserting transaction, id). Text form ``<xid>.<id>``."""

    xid: int = 0
    id: int = 0

    def __str__(self) -> str:
        return f"{self.xid}.{self.id}"

    @classmethod
    def parse(cls, text: str, *, field: str = "after") -> Cursor:
        """The cursor in ``text``; ValidationFailed naming ``field`` if it is not one."""
        match = _CURSOR.match(text)
        if match is None:
            raise ValidationFailed.one(field, "must be a cursor from a previous page (<n>.<n>)")
        xid, id_ = int(match.group(1)), int(match.group(2))
        if xid > _MAX_XID or id_ > _MAX_ID:
            raise ValidationFailed.one(field, "cursor out of range")
        return cls(xid, id_)


@dataclass(frozen=True, slots=True)
class Claim:
    """A row this instance holds under its lease, to deliver."""

    id: int
    event_key: str
    type: str
    payload: dict[str, Any]
    destination: str
    attempts: int  # including this one
    max_attempts: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """What to record for one attempt: the new status (pending = retry later)."""

    claim: Claim
    status: Status
    status_code: int | None = None
    error: str | None = None
    delay_s: float = 0.0


class FeedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One event as the pull path serves it."""

    id: int
    cursor: str
    event_key: str
    type: str
    payload: dict[str, Any]
    created_at: datetime


class FeedPage(msgspec.Struct, frozen=True, kw_only=True):
    events: list[FeedEvent]
    # Resume from here (the same cursor again when the page is empty).
    next_cursor: str


class OutboxEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event as operators see it (the destination without userinfo or query values)."""

    id: int
    event_key: str
    type: str
    payload: dict[str, Any]
    destination: str | None
    status: str
    attempts: int
    max_attempts: int
    next_attempt_at: datetime
    lease_expires_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    consumed_at: datetime | None
    dead_at: datetime | None


@dataclass(frozen=True, slots=True)
class Backlog:
    pending: int
    published: int
    dead: int
    oldest_pending_s: float | None


def _event(row: Record) -> OutboxEvent:
    values = dict(row.items())
    values.pop("woken", None)
    if values["destination"] is not None:
        values["destination"] = display_url(values["destination"])
    return OutboxEvent(**values)


class OutboxStore:
    """Every read and write of the ``outbox`` table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def claim(
        self, owner: str, *, limit: int, lease_s: float, exclude: Sequence[str] = ()
    ) -> list[Claim]:
        """Claim up to ``limit`` rows for ``owner``: lapsed leases first, then due pending rows.

        ``exclude`` lists origins not to take new rows for (see ``_rules.origin``).
        """
        rows = await self.db.fetch(q.CLAIM, limit, owner, lease_s, list(exclude))
        return [Claim(**dict(r.items())) for r in rows]

    async def record(self, owner: str, outcomes: Sequence[DeliveryOutcome]) -> set[int]:
        """Write the outcomes in one statement; returns the ids whose compare-and-set held."""
        if not outcomes:
            return set()
        rows = await self.db.fetch(
            q.RECORD,
            [o.claim.id for o in outcomes],
            [o.status.value for o in outcomes],
            [o.claim.attempts for o in outcomes],
            [o.status_code for o in outcomes],
            [o.error for o in outcomes],
            [o.delay_s for o in outcomes],
            owner,
        )
        return {r["id"] for r in rows}

    async def release(
        self, owner: str, ids: Sequence[int], *, refund: bool, delay_s: float = 0.0
    ) -> set[int]:
        """Hand claims back to pending; ``refund`` when nothing was sent. Returns ids released."""
        if not ids:
            return set()
        rows = await self.db.fetch(q.RELEASE, list(ids), owner, refund, delay_s)
        return {r["id"] for r in rows}

    async def feed(self, after: Cursor, limit: int) -> FeedPage:
        """Events after ``after`` in (xid, id) order, never skipping one that commits late."""
        rows = await self.db.fetch(q.FEED, str(after.xid), after.id, limit)
        events = [
            FeedEvent(
                id=r["id"],
                cursor=str(Cursor(int(r["xid"]), r["id"])),
                event_key=r["event_key"],
                type=r["type"],
                payload=r["payload"],
                created_at=r["created_at"],
            )
            for r in rows
        ]
        return FeedPage(events=events, next_cursor=events[-1].cursor if events else str(after))

    async def list(self, status: Status | None, *, after_id: int, limit: int) -> list[OutboxEvent]:
        if status is None:
            rows = await self.db.fetch(q.LIST_ALL, after_id, limit)
        else:
            rows = await self.db.fetch(q.LIST_BY_STATUS, status.value, after_id, limit)
        return [_event(r) for r in rows]

    async def get(self, event_id: int) -> OutboxEvent:
        row = await self.db.fetchrow(q.GET, event_id)
        if row is None:
            raise NotFound(f"no outbox event {event_id}")
        return _event(row)

    async def retry(self, event_id: int) -> OutboxEvent:
        """An operator's retry: dead -> pending (attempts reset), or a pending one due now.

        Raises NotFound, or StateConflict for a consumed or in-flight event and for a
        pull-only event (nothing to deliver); nothing changes then.
        """
        row = await self.db.fetchrow(q.RETRY, event_id)
        if row is not None:
            return _event(row)
        current = await self.get(event_id)
        if current.destination is None:
            raise StateConflict(
                f"outbox event {event_id} is pull-only: there is nothing to deliver",
                current_status=current.status,
            )
        raise StateConflict(
            f"outbox event {event_id} is {current.status}; only dead or pending events "
            "can be retried",
            current_status=current.status,
        )

    async def stats(self) -> Backlog:
        row = await self.db.fetchrow(q.STATS)
        oldest = row["oldest_pending_s"]
        return Backlog(
            pending=row["pending"],
            published=row["published"],
            dead=row["dead"],
            oldest_pending_s=None if oldest is None else float(oldest),
        )

    async def purge_batch(self, retention_s: float, batch: int) -> int:
        """Delete one batch of consumed rows older than ``retention_s``; returns how many."""
        tag = await self.db.execute(q.PURGE, retention_s, batch)
        return int(tag.split()[-1])
