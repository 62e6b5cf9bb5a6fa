-- The transactional outbox (issue 13). A row is written in the same transaction as
-- the state change it announces (a task's terminal transition) and delivered later:
-- by the dispatcher as a signed webhook when `destination` is set, and to any pull
-- consumer through GET /v1/events (every row, whatever its destination).
--
-- States: pending -> published -> consumed; pending/published -> pending (retry
-- later, or a claim handed back); pending/published -> dead; dead -> pending only by
-- an operator's retry. consumed is final. The store's statements compare-and-set on
-- the current status; the trigger below is the safety net that refuses any other
-- move, whoever writes.
CREATE TABLE outbox (
    id                bigserial PRIMARY KEY,
    event_key         text NOT NULL UNIQUE CHECK (length(event_key) BETWEEN 1 AND 200),
    type              text NOT NULL CHECK (length(type) BETWEEN 1 AND 100),
    payload           jsonb NOT NULL CHECK (jsonb_typeof(payload) = 'object'),
    -- The webhook URL; NULL = pull only (the dispatcher never claims the row).
    destination       text NULL,
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'published', 'consumed', 'dead')),
    -- Deliveries started (counted at claim, so a crash mid-delivery counts too).
    attempts          integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- 1 + the 7 retries of the default backoff schedule.
    max_attempts      integer NOT NULL DEFAULT 8 CHECK (max_attempts >= 1),
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    -- The claim: who holds the row while delivering, until when. Another instance
    -- re-claims a published row whose lease expired (its holder died).
    lease_owner       text NULL,
    lease_expires_at  timestamptz NULL,
    last_error        text NULL CHECK (length(last_error) <= 500),
    last_status_code  integer NULL,
    -- The pull cursor: the top-level transaction that inserted the row. A reader
    -- serves only rows whose xid is below its snapshot's xmin (every such
    -- transaction has ended, so no row can still appear below the cursor) in
    -- (xid, id) order. See scheduler/outbox/_queries.py.
    xid               xid8 NOT NULL DEFAULT pg_current_xact_id(),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    published_at      timestamptz NULL,
    consumed_at       timestamptz NULL,
    dead_at           timestamptz NULL,
    CHECK ((status = 'published') = (lease_expires_at IS NOT NULL) OR destination IS NULL)
);

-- The claim query, exactly: due pending rows with a destination, oldest due first.
CREATE INDEX outbox_due ON outbox (next_attempt_at)
    WHERE status = 'pending' AND destination IS NOT NULL;
-- The same query's second arm: published rows whose claim lease expired.
CREATE INDEX outbox_lease ON outbox (lease_expires_at)
    WHERE status = 'published' AND destination IS NOT NULL;
-- The pull path: rows in (xid, id) order after a cursor.
CREATE INDEX outbox_feed ON outbox (xid, id);
-- Operators list by status; consumed rows (the bulk) stay out of this index.
CREATE INDEX outbox_open ON outbox (status, id) WHERE status <> 'consumed';
-- Purge: consumed rows past retention, oldest first, in small batches.
CREATE INDEX outbox_consumed ON outbox (consumed_at) WHERE status = 'consumed';

CREATE FUNCTION outbox_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = OLD.status AND NEW.status IN ('pending', 'published') THEN
        RETURN NEW;   -- a reschedule, or a lease taken over
    END IF;
    IF (OLD.status, NEW.status) IN (
        ('pending', 'published'), ('published', 'consumed'), ('published', 'pending'),
        ('pending', 'dead'), ('published', 'dead'), ('dead', 'pending')
    ) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'outbox % may not move from % to %', OLD.id, OLD.status, NEW.status
        USING ERRCODE = 'check_violation';
END
$$;

CREATE TRIGGER outbox_guard BEFORE UPDATE OF status ON outbox
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.status IN ('consumed', 'dead'))
    EXECUTE FUNCTION outbox_guard();
