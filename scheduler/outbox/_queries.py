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
