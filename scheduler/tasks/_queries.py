"""Every SQL statement of the tasks subsystem, named in one place (procrastinate's shape).

Only :class:`scheduler.tasks.store.TaskStore` runs these. Each state change is an
``UPDATE … WHERE id = $1 AND version = $2`` that also checks the current status,
so a lost race matches no row instead of overwriting; the trigger of migration
0006 refuses a change out of a terminal state whoever writes it.
"""

from __future__ import annotations

LIVE = "('submitting', 'pending', 'running')"
POLLABLE = "('pending', 'running')"

# Columns a poller holds in memory (no params: they can be large, and are read
# once at settlement).
HELD_COLUMNS = """id, version, status, progress, result_urls, failure_reason, upstream_id,
    platform, account_id, kind, model, billing, created_at, deadline, next_poll_at,
    lease_owner"""

VIEW_COLUMNS = """id, owner, idempotency_key, origin_task_id, account_group, account_id,
    platform, kind, model, webhook_url, upstream_id, status, progress, result_urls,
    failure_reason, usage, cost_held, cost_charged, cost_released, version, lease_owner,
    next_poll_at, deadline, created_at, updated_at, submitted_at, finished_at"""

# --- record first ------------------------------------------------------------------

# Record first: lock the owner, check key / in-flight / balance, insert the task
# and its hold; one call (see tasks_record in migration 0006). A 402 or 429 writes
# nothing, so nothing is left behind.
RECORD = """
SELECT outcome, task_id, in_flight, balance
FROM tasks_record($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
"""
INSERT_ENTRY = """
INSERT INTO ledger (owner, kind, amount, task_id, note) VALUES ($1, $2, $3, $4, $5)
"""
# A settlement's entries in one statement: release always, capture on success.
SETTLE_ENTRIES = """
INSERT INTO ledger (owner, kind, amount, task_id)
SELECT $1, e.kind, e.amount, $2
FROM (VALUES ('release', $3::bigint), ('capture', -$4::bigint)) AS e (kind, amount)
WHERE e.kind = 'release' OR $5
"""
# Not a state change (no version bump): where a SUBMITTING task is being sent, so
# the sweeper can look it up there if this instance dies mid-submit.
SET_ACCOUNT = "UPDATE tasks SET account_id = $2 WHERE id = $1 AND status = 'submitting'"
TASK_OWNER = "SELECT owner, platform, account_id, status FROM tasks WHERE id = $1"

# --- the one write path --------------------------------------------------------------

# SUBMITTING -> PENDING/RUNNING with the upstream id, the account and the
# (possibly adjusted) hold; the poll is due at once or after $7 seconds.
SUBMITTED = f"""
UPDATE tasks SET status = $3, upstream_id = $4, account_id = $5, billing = $6,
    cost_held = ($6::jsonb ->> 'hold')::bigint, submitted_at = now(),
    next_poll_at = now() + make_interval(secs => $7), version = version + 1, updated_at = now()
WHERE id = $1 AND version = $2 AND status = 'submitting'
RETURNING {VIEW_COLUMNS}, billing
"""
# A live change that is not terminal: status (forward only), progress, results.
CHANGE = """
UPDATE tasks SET status = $3, progress = $4, result_urls = $5, failure_reason = $6,
    upstream_id = $7, version = version + 1, updated_at = now()
WHERE id = $1 AND version = $2 AND status IN ('submitting', 'pending', 'running')
RETURNING version
"""
# The terminal transition: run in the transaction that writes the ledger entries
# and the outbox row; no row back means the compare-and-set lost, nothing settles.
FINISH = """
UPDATE tasks SET status = $3, progress = $4, result_urls = $5, failure_reason = $6,
    upstream_id = $7, usage = $8, cost_charged = $9, cost_released = $10,
    lease_owner = NULL, next_poll_at = NULL, finished_at = now(),
    version = version + 1, updated_at = now()
WHERE id = $1 AND version = $2 AND status IN ('submitting', 'pending', 'running')
RETURNING version, owner, webhook_url, cost_held, created_at, finished_at
"""
# FINISH for many tasks at once ($1: a JSON array, one object per task); each row
# is its own compare-and-set, and only the rows returned settle.
FINISH_MANY = f"""
UPDATE tasks t SET status = u.status, progress = u.progress, result_urls = u.result_urls,
    failure_reason = u.failure_reason, upstream_id = u.upstream_id, usage = u.usage,
    cost_charged = u.charged, cost_released = u.released,
    lease_owner = NULL, next_poll_at = NULL, finished_at = now(),
    version = t.version + 1, updated_at = now()
FROM jsonb_to_recordset($1::jsonb) AS u (id uuid, version bigint, status text, progress real,
    result_urls text[], failure_reason text, upstream_id text, usage jsonb, charged bigint,
    released bigint)
WHERE t.id = u.id AND t.version = u.version AND t.status IN {LIVE}
RETURNING t.id, t.version, t.owner, t.webhook_url, t.cost_held, t.finished_at
"""
# SETTLE_ENTRIES for many: the rows are built by the caller (winners only).
SETTLE_ENTRIES_MANY = """
INSERT INTO ledger (owner, kind, amount, task_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::uuid[])
"""
PARAMS = "SELECT params, billing FROM tasks WHERE id = $1"
PARAMS_MANY = "SELECT id, params, billing FROM tasks WHERE id = ANY($1::uuid[])"
CURRENT = f"SELECT {HELD_COLUMNS} FROM tasks WHERE id = $1"

# --- claiming and leases (river's shape: one round trip) -----------------------------

CLAIM = f"""
WITH due AS (
    SELECT id FROM tasks
    WHERE lease_owner IS NULL AND status IN {POLLABLE} AND next_poll_at <= now()
    ORDER BY next_poll_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks t SET lease_owner = $1
FROM due
WHERE t.id = due.id
  AND EXISTS (SELECT FROM task_leases l WHERE l.token = $1 AND l.expires_at > now())
RETURNING {", ".join("t." + c.strip() for c in HELD_COLUMNS.split(","))}
"""
LEASE_REGISTER = """
INSERT INTO task_leases (token, instance_id, expires_at)
VALUES ($1, $2, now() + make_interval(secs => $3))
"""
# Renewing a poller's lease renews every task it holds: one row, not one per task.
# A lease past its expiry is still ours as long as its row exists: the reaper
# deletes the row and frees its tasks in one statement, so a surviving row means
# no task of it was handed to anyone.
LEASE_RENEW = """
UPDATE task_leases SET expires_at = now() + make_interval(secs => $2)
WHERE token = $1
RETURNING expires_at
"""
# Tasks handed back on shutdown keep the next poll time their holder planned.
GIVE_BACK = """
UPDATE tasks t SET lease_owner = NULL, next_poll_at = g.next_poll_at
FROM unnest($2::uuid[], $3::timestamptz[]) AS g (id, next_poll_at)
WHERE t.id = g.id AND t.lease_owner = $1
"""
COUNT_LEASED = "SELECT count(*) FROM tasks WHERE lease_owner = $1"
LEASED_IDS = "SELECT id FROM tasks WHERE lease_owner = $1"
GIVE_BACK_ALL = "UPDATE tasks SET lease_owner = NULL WHERE lease_owner = $1"
LEASE_DROP = "DELETE FROM task_leases WHERE token = $1"
# Expired pollers' tasks become claimable: delete the lease and free its tasks in
# one statement, so no task is left pointing at a vanished lease. A poller never
# reaps its own lease ($1): late, it renews it instead (see LEASE_RENEW).
REAP = """
WITH dead AS (
    DELETE FROM task_leases WHERE expires_at <= now() AND token <> $1 RETURNING token
)
UPDATE tasks SET lease_owner = NULL
WHERE lease_owner IN (SELECT token FROM dead)
"""
# A claim racing the reap of its own (expired) lease can leave a task naming a
# token that no longer exists; the sweeper frees such tasks.
ORPHANS = f"""
UPDATE tasks t SET lease_owner = NULL
WHERE t.lease_owner IS NOT NULL AND t.status IN {LIVE}
  AND NOT EXISTS (SELECT FROM task_leases l WHERE l.token = t.lease_owner)
"""

# --- the sweeper --------------------------------------------------------------------

OVERDUE = f"""
SELECT {HELD_COLUMNS} FROM tasks
WHERE status IN {POLLABLE} AND deadline <= now()
ORDER BY deadline
LIMIT $1
"""
STALE_SUBMITTING = f"""
SELECT {HELD_COLUMNS}, owner FROM tasks
WHERE status = 'submitting' AND created_at <= now() - make_interval(secs => $1)
ORDER BY created_at
LIMIT $2
"""

# --- reads ------------------------------------------------------------------------------

GET = f"SELECT {VIEW_COLUMNS} FROM tasks WHERE id = $1"
# Keyset pages, newest first (ids are UUID v7, so id order is creation order).
LIST = f"""
SELECT {VIEW_COLUMNS} FROM tasks
WHERE ($1::text IS NULL OR owner = $1)
  AND ($2::text IS NULL OR status = $2)
  AND ($3::text IS NULL OR platform = $3)
  AND ($4::uuid IS NULL OR id < $4)
ORDER BY id DESC
LIMIT $5
"""
COUNT_BY_STATUS = "SELECT status, count(*) AS n FROM tasks GROUP BY status"
LEDGER_OF_TASK = "SELECT kind, amount FROM ledger WHERE task_id = $1 ORDER BY id"

# --- credits ------------------------------------------------------------------------------

TOPUP = """
INSERT INTO ledger (owner, kind, amount, topup_key, note) VALUES ($1, 'topup', $2, $3, $4)
ON CONFLICT (topup_key) DO NOTHING
RETURNING id
"""
TOPUP_BY_KEY = "SELECT owner, amount FROM ledger WHERE topup_key = $1"
OWNER_CREDIT = f"""
SELECT
    coalesce((SELECT balance FROM credit_balances WHERE owner = $1), 0) AS balance,
    coalesce((SELECT sum(amount) FROM ledger WHERE owner = $1 AND kind = 'topup'), 0)::bigint
        AS topups,
    coalesce((SELECT -sum(amount) FROM ledger WHERE owner = $1 AND kind = 'capture'), 0)::bigint
        AS captured,
    coalesce((SELECT sum(cost_held) FROM tasks WHERE owner = $1 AND status IN {LIVE}), 0)::bigint
        AS held
"""
BALANCES = """
SELECT owner, balance FROM credit_balances
WHERE ($1::text IS NULL OR owner > $1)
ORDER BY owner
LIMIT $2
"""
