"""Every SQL statement of the outbox, named in one place (procrastinate's queries.sql shape).

Only :mod:`scheduler.outbox._store` (and :func:`~scheduler.outbox.enqueue`)
run these. State changes compare-and-set on the current status, so an illegal
move matches no row instead of happening; the ``outbox_guard`` trigger in
migration 0005 refuses whatever slips past.
"""

from __future__ import annotations

# NOTIFY channel the dispatcher LISTENs on: a wake-up hint, never relied on alone.
CHANNEL = "stationmaster_outbox"

# One round trip: insert (or not), and wake dispatchers when a webhook row went in.
# pg_notify inside the transaction is delivered at commit and dropped on rollback.
ENQUEUE = f"""
WITH ins AS (
    INSERT INTO outbox (event_key, type, payload, destination, max_attempts)
    VALUES ($1, $2, $3, $4, coalesce($5::integer, 8))
    ON CONFLICT (event_key) DO NOTHING
    RETURNING destination
), wake AS (
    SELECT pg_notify('{CHANNEL}', '') FROM ins WHERE destination IS NOT NULL
)
SELECT EXISTS (SELECT FROM ins) AS inserted, (SELECT count(*) FROM wake) AS woken
"""
# Many events in one round trip ($1: a JSON array of {event_key, type, payload,
# destination}); one wake-up for the lot.
ENQUEUE_MANY = f"""
WITH ins AS (
    INSERT INTO outbox (event_key, type, payload, destination)
    SELECT e.event_key, e.type, e.payload, e.destination
    FROM jsonb_to_recordset($1::jsonb) AS e (event_key text, type text, payload jsonb,
        destination text)
    ON CONFLICT (event_key) DO NOTHING
    RETURNING destination
), wake AS (
    SELECT pg_notify('{CHANNEL}', '') FROM ins WHERE destination IS NOT NULL LIMIT 1
)
SELECT (SELECT count(*) FROM ins) AS inserted, (SELECT count(*) FROM wake) AS woken
"""

# --- the dispatcher -------------------------------------------------------------

# The claim, in one round trip (river's JobGetAvailable shape): due pending rows
# and published rows whose lease expired (their holder died between delivery and
# commit), each arm served by its own partial index, locked with SKIP LOCKED so
# instances never wait on each other, then marked published under our lease. The
# attempt is counted here, so a crash mid-delivery still uses one up.
# $1 limit, $2 lease owner, $3 lease seconds, $4 origins to leave alone
# (at their per-destination limit here).
CLAIM = """
WITH due AS MATERIALIZED (
    SELECT id FROM outbox
     WHERE status = 'pending' AND destination IS NOT NULL AND next_attempt_at <= now()
       AND NOT (substring(destination FROM '^[a-zA-Z]+://[^/?#]+') = ANY ($4::text[]))
     ORDER BY next_attempt_at
     LIMIT $1
     FOR UPDATE SKIP LOCKED
), lapsed AS MATERIALIZED (
    SELECT id FROM outbox
     WHERE status = 'published' AND destination IS NOT NULL AND lease_expires_at <= now()
     ORDER BY lease_expires_at
     LIMIT $1
     FOR UPDATE SKIP LOCKED
), picked AS (
    -- At most $1 in all, lapsed first (they are the oldest work). Rows locked but
    -- not picked are unlocked at the end of this statement's transaction.
    (SELECT id FROM lapsed) UNION ALL (SELECT id FROM due) LIMIT $1
)
UPDATE outbox o
   SET status = 'published',
       attempts = o.attempts + 1,
       lease_owner = $2,
       lease_expires_at = now() + make_interval(secs => $3),
       published_at = now(),
       updated_at = now()
  FROM picked
 WHERE o.id = picked.id
RETURNING o.id, o.event_key, o.type, o.payload, o.destination, o.attempts, o.max_attempts,
          o.created_at
"""

# Results of many attempts in one statement. consumed needs only the row to be
# published (whoever holds it now: the receiver has the event, so a second holder
# must not send it again); retry and dead need our own claim (owner + attempt
# number), so a holder whose lease lapsed cannot reschedule someone else's claim.
# $1 ids, $2 verdicts, $3 attempt numbers, $4 status codes, $5 errors,
# $6 retry delays (s), $7 owner. Returns the ids changed.
RECORD = """
UPDATE outbox o
   SET status = r.verdict,
       next_attempt_at = CASE WHEN r.verdict = 'pending'
                              THEN now() + make_interval(secs => r.delay_s)
                              ELSE o.next_attempt_at END,
       lease_owner = NULL,
       lease_expires_at = NULL,
       last_status_code = r.code,
       last_error = left(r.error, 500),
       consumed_at = CASE WHEN r.verdict = 'consumed' THEN now() END,
       dead_at = CASE WHEN r.verdict = 'dead' THEN now() END,
       updated_at = now()
  FROM unnest($1::bigint[], $2::text[], $3::integer[], $4::integer[], $5::text[],
              $6::float8[]) AS r(id, verdict, attempts, code, error, delay_s)
 WHERE o.id = r.id
   AND o.status = 'published'
   AND (r.verdict = 'consumed' OR (o.lease_owner = $7 AND o.attempts = r.attempts))
RETURNING o.id
"""

# Hand claims back unsent (over the per-destination limit, or stopping): the
# attempt is refunded when nothing was sent ($3), kept when a send may have begun.
RELEASE = """
UPDATE outbox
   SET status = 'pending',
       attempts = CASE WHEN $3 THEN greatest(attempts - 1, 0) ELSE attempts END,
       next_attempt_at = now() + make_interval(secs => $4),
       lease_owner = NULL,
       lease_expires_at = NULL,
       updated_at = now()
 WHERE id = ANY ($1::bigint[]) AND status = 'published' AND lease_owner = $2
RETURNING id
"""

# --- the pull path --------------------------------------------------------------

# One page of the feed after cursor ($1 xid, $2 id), at most $3 rows, in (xid, id)
# order, only from transactions older than this statement's snapshot xmin (see the
# package docstring: this is what keeps a late-committing row from being skipped).
# In the same statement, pull-only rows move on: served ones pending -> published,
# and those at or before the cursor the consumer came back with (it has them)
# published -> consumed, so retention can purge them. The open-status index keeps
# the acknowledgement cheap however long the table is.
FEED = """
WITH page AS (
    SELECT id, xid, event_key, type, payload, destination IS NULL AS pull_only, created_at
      FROM outbox
     WHERE (xid, id) > ($1::text::xid8, $2::bigint)
       AND xid < pg_snapshot_xmin(pg_current_snapshot())
     ORDER BY xid, id
     LIMIT $3
), served AS (
    UPDATE outbox o
       SET status = 'published', published_at = now(), updated_at = now()
      FROM page
     WHERE o.id = page.id AND page.pull_only AND o.status = 'pending'
), acked AS (
    UPDATE outbox
       SET status = 'consumed', consumed_at = now(), updated_at = now()
     WHERE status = 'published' AND destination IS NULL
       AND (xid, id) <= ($1::text::xid8, $2::bigint)
)
SELECT id, xid::text AS xid, event_key, type, payload, created_at FROM page ORDER BY xid, id
"""

# --- operators ------------------------------------------------------------------

_COLUMNS = """id, event_key, type, payload, destination, status, attempts, max_attempts,
    next_attempt_at, lease_expires_at, last_status_code, last_error, created_at, updated_at,
    consumed_at, dead_at"""

# Keyset pages by id. Two statements, not one with "$1 IS NULL OR status = $1": a
# prepared statement's generic plan could not then use the open-status index, and a
# dead-letter page would walk every consumed row.
LIST_BY_STATUS = f"""
SELECT {_COLUMNS} FROM outbox WHERE status = $1 AND id > $2 ORDER BY id LIMIT $3
"""
LIST_ALL = f"SELECT {_COLUMNS} FROM outbox WHERE id > $1 ORDER BY id LIMIT $2"

GET = f"SELECT {_COLUMNS} FROM outbox WHERE id = $1"

# An operator's retry: dead -> pending with the attempts reset, or a pending
# webhook row made due now. Anything else matches nothing (the caller reads the
# row to say why). Wakes the dispatchers.
RETRY = f"""
WITH changed AS (
    UPDATE outbox
       SET status = 'pending', attempts = CASE WHEN status = 'dead' THEN 0 ELSE attempts END,
           next_attempt_at = now(), dead_at = NULL, last_error = NULL,
           last_status_code = NULL, updated_at = now()
     WHERE id = $1 AND destination IS NOT NULL AND status IN ('dead', 'pending')
    RETURNING {_COLUMNS}
), wake AS (
    SELECT pg_notify('{CHANNEL}', '') FROM changed
)
SELECT *, (SELECT count(*) FROM wake) AS woken FROM changed
"""

# Backlog by status (the open-status index; consumed rows are not counted) and the
# oldest pending event (its id is the oldest insert).
STATS = """
SELECT (SELECT count(*) FROM outbox WHERE status = 'pending') AS pending,
       (SELECT count(*) FROM outbox WHERE status = 'published') AS published,
       (SELECT count(*) FROM outbox WHERE status = 'dead') AS dead,
       (SELECT extract(epoch FROM now() - created_at) FROM outbox
         WHERE status = 'pending' ORDER BY id LIMIT 1) AS oldest_pending_s
"""

# Purge one small batch of consumed rows past retention. Locked rows are skipped
# and the status re-checked, so pending/published/dead rows are never touched. The
# batch is a MATERIALIZED CTE, not "id IN (SELECT ... LIMIT n)": the planner may
# run such a subquery more than once and delete more than n rows.
PURGE = """
WITH doomed AS MATERIALIZED (
    SELECT id FROM outbox
     WHERE status = 'consumed' AND consumed_at < now() - make_interval(secs => $1)
     ORDER BY consumed_at
     LIMIT $2
     FOR UPDATE SKIP LOCKED
)
DELETE FROM outbox o USING doomed WHERE o.id = doomed.id AND o.status = 'consumed'
"""
