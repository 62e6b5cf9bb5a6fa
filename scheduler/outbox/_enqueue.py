"""Writing an event into the outbox, inside the caller's transaction."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from accounts.db import Connection

from . import _queries as q

_TOKEN = re.compile(r"[\x21-\x7e]{1,200}")


async def enqueue(
    conn: Connection,
    *,
    event_key: str,
    type: str,  # the agreed keyword (CONTRACTS.md); shadows the builtin only here
    payload: Mapping[str, Any],
    destination: str | None,
    max_attempts: int | None = None,
) -> bool:
    """Insert one event unless ``event_key`` exists already; True if this call inserted it.

    Run it on the connection of the transaction that makes the change the event
    announces: the row commits (and the dispatcher is woken) with that change, or
    rolls back with it. ``destination`` is the webhook URL, or None for a
    pull-only event. ``max_attempts`` (default: the column's, 8) bounds deliveries
    before the event goes dead. A repeated ``event_key`` is a no-op returning
    False, so a retried transition cannot announce itself twice. Raises
    ValueError for a key or type that is empty or not visible ASCII, or a
    destination that is not http(s).
    """
    if not _TOKEN.fullmatch(event_key) or not _TOKEN.fullmatch(type):
        # The key travels as the webhook-id header: visible ASCII only.
        raise ValueError("event_key and type must be 1-200 visible ASCII characters")
    if destination is not None and not destination.startswith(("http://", "https://")):
        raise ValueError("destination must be an http:// or https:// URL")
    if max_attempts is not None and max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    row = await conn.fetchrow(q.ENQUEUE, event_key, type, dict(payload), destination, max_attempts)
    return bool(row["inserted"])


async def enqueue_many(conn: Connection, events: Sequence[Mapping[str, Any]]) -> int:
    """:func:`enqueue` for many events in one round trip; how many were inserted.

    Each event is ``{event_key, type, payload, destination}`` (the default
    ``max_attempts``); the same checks as :func:`enqueue`, all before anything is
    written, and the same no-op for a key that exists already.
    """
    for event in events:
        if not _TOKEN.fullmatch(event["event_key"]) or not _TOKEN.fullmatch(event["type"]):
            raise ValueError("event_key and type must be 1-200 visible ASCII characters")
        destination = event["destination"]
        if destination is not None and not destination.startswith(("http://", "https://")):
            raise ValueError("destination must be an http:// or https:// URL")
    if not events:
        return 0
    row = await conn.fetchrow(q.ENQUEUE_MANY, list(events))
    return int(row["inserted"])
