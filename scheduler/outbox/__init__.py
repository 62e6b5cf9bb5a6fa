"""The transactional outbox: events written with the change they announce, delivered later.

A caller (the tasks' terminal transition) writes an event with :func:`enqueue`
*inside its own transaction*, so the event exists if and only if the change
committed. The dispatcher then delivers it as a signed webhook (Standard
Webhooks) with retries, and any pull consumer reads every event through
``GET /v1/events`` with a cursor that never skips a late-committing row.
Knows nothing of tasks beyond the rows it is given: imports ``core`` only.

Why the pull cursor is ``(xid, id)`` and not ``id``: ids come from a sequence
when the row is *inserted*, but rows become visible when their transaction
*commits*. A transaction holding id 7 open while id 8 commits would let a
reader serve 8, advance its cursor past 7, and never see 7. Each row therefore
records the top-level transaction that inserted it (``xid xid8 DEFAULT
pg_current_xact_id()``), and a reader serves only rows whose ``xid`` is below
``pg_snapshot_xmin(pg_current_snapshot())``: every transaction below that xmin
has ended, so the set of rows below it is final, and ordering by ``(xid, id)``
with ``(xid, id) > cursor`` can never skip a row. The price: an event becomes
pullable only once every transaction older than it has ended, so one long
transaction anywhere on the server holds the feed back for its duration
(delays, never gaps). Webhook delivery does not wait for this.

Public surface (everything else lives in private modules):

- :func:`enqueue` — insert an event in the caller's transaction; idempotent on
  ``event_key``; :func:`enqueue_many` — the same for many in one round trip.
- :class:`OutboxStore` — every read and write of the table (claims, outcomes,
  the feed, operators' list and retry, stats, purge); :class:`Cursor` for the feed.
- :class:`Dispatcher`, :class:`Purger`, :class:`BacklogMonitor` — the actors;
  :func:`build_outbox` wires them for a daemon.
- :mod:`._rules` — the pure rules (states, verdicts, backoff), re-exported below.
"""

from ._delivery import Signer
from ._dispatcher import Dispatcher
from ._enqueue import enqueue, enqueue_many
from ._install import Outbox, build_outbox
from ._metrics import OutboxMetrics
from ._rules import Status, Verdict, classify, may_move, retry_delay_s, settle
from ._store import (
    CURSOR_PATTERN,
    Backlog,
    Claim,
    Cursor,
    DeliveryOutcome,
    FeedEvent,
    FeedPage,
    OutboxEvent,
    OutboxStore,
    StateConflict,
)
from ._upkeep import BacklogMonitor, Purger

__all__ = [
    "CURSOR_PATTERN",
    "Backlog",
    "BacklogMonitor",
    "Claim",
    "Cursor",
    "DeliveryOutcome",
    "Dispatcher",
    "FeedEvent",
    "FeedPage",
    "Outbox",
    "OutboxEvent",
    "OutboxMetrics",
    "OutboxStore",
    "Purger",
    "Signer",
    "StateConflict",
    "Status",
    "Verdict",
    "build_outbox",
    "classify",
    "enqueue",
    "enqueue_many",
    "may_move",
    "retry_delay_s",
    "settle",
]
