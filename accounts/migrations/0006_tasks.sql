-- Async upstream tasks and the credit ledger (issue 12).
--
-- A task is recorded (status 'submitting') together with its credit hold before
-- anything is sent upstream. Every state change is a compare-and-set on `version`;
-- the terminal transition, its ledger entries and its outbox event commit in one
-- transaction. Defence in depth below: a trigger refuses any update that leaves a
-- terminal status, the ledger refuses updates and deletes, and (task_id, kind) is
-- unique so no path can settle a task twice.

CREATE TABLE tasks (
    id               uuid PRIMARY KEY,              -- UUID v7: time-ordered, keyset pages
    owner            text NOT NULL,
    idempotency_key  text,
    origin_task_id   uuid REFERENCES tasks (id),
    account_group    text NOT NULL,
    account_id       uuid,                          -- chosen at submit; NULL until then
    platform         text NOT NULL,
    kind             text NOT NULL,
    model            text NOT NULL,
    params           jsonb NOT NULL,
    webhook_url      text,
    session_hash     text,
    upstream_id      text,
    status           text NOT NULL
                     CHECK (status IN ('submitting', 'pending', 'running', 'succeeded',
                                       'failed', 'cancelled', 'timed_out')),
    progress         real,
    result_urls      text[] NOT NULL DEFAULT '{}',
    failure_reason   text,
    usage            jsonb,
    -- Price, ratio and held amount, fixed at submit: settlement never re-derives them.
    billing          jsonb NOT NULL,
    cost_held        bigint NOT NULL CHECK (cost_held >= 0),
    cost_charged     bigint,
    cost_released    bigint,
    version          bigint NOT NULL DEFAULT 1,
    -- The lease: the token of the poller holding the task (its expiry lives in
    -- task_leases, renewed once per instance, not once per task).
    lease_owner      text,
    next_poll_at     timestamptz,
    deadline         timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    submitted_at     timestamptz,
    finished_at      timestamptz,
    CONSTRAINT tasks_idempotency UNIQUE (owner, idempotency_key),
    CONSTRAINT tasks_terminal_unleased CHECK (
        status IN ('submitting', 'pending', 'running') OR lease_owner IS NULL)
);
-- The claim query: due, unleased, pollable tasks in due order.
CREATE INDEX tasks_due ON tasks (next_poll_at)
    WHERE lease_owner IS NULL AND status IN ('pending', 'running');
-- Reaping a dead poller's tasks; counting an instance's held tasks.
CREATE INDEX tasks_lease_owner ON tasks (lease_owner) WHERE lease_owner IS NOT NULL;
-- The sweeper: deadlines of live tasks, SUBMITTING rows by age.
CREATE INDEX tasks_live_deadline ON tasks (deadline)
    WHERE status IN ('submitting', 'pending', 'running');
CREATE INDEX tasks_submitting ON tasks (created_at) WHERE status = 'submitting';
-- An owner's list (keyset on id) and the in-flight count at submit.
CREATE INDEX tasks_owner ON tasks (owner, id);
CREATE INDEX tasks_owner_live ON tasks (owner)
    WHERE status IN ('submitting', 'pending', 'running');
CREATE INDEX tasks_status ON tasks (status, id);

CREATE FUNCTION tasks_terminal_is_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status IN ('succeeded', 'failed', 'cancelled', 'timed_out')
       AND NEW.status IS DISTINCT FROM OLD.status THEN
        RAISE EXCEPTION 'task % is % (terminal): refusing status %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER tasks_terminal_is_final BEFORE UPDATE ON tasks
    FOR EACH ROW EXECUTE FUNCTION tasks_terminal_is_final();

-- Record first: the task (SUBMITTING) and its credit hold, after the owner's
-- idempotency key, in-flight count and balance were checked under a per-owner
-- advisory lock. One call, so the lock is held for server-side time only (a
-- client round trip per check would hold it across the network). Each statement of a
-- VOLATILE plpgsql function takes a fresh snapshot under READ COMMITTED, so the
-- checks see every submit of this owner that committed before the lock was granted.
-- Outcome: 'created' or 'existing' (task_id set), 'limit' (429) or 'credit' (402),
-- the last two having written nothing.
CREATE FUNCTION tasks_record(
    p_id uuid, p_owner text, p_key text, p_origin uuid, p_group text, p_account uuid,
    p_platform text, p_kind text, p_model text, p_params jsonb, p_webhook text,
    p_session text, p_billing jsonb, p_hold bigint, p_deadline_s double precision,
    p_max_in_flight integer,
    OUT outcome text, OUT task_id uuid, OUT in_flight bigint, OUT balance bigint
) LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('tasks.owner:' || p_owner, 0));
    IF p_key IS NOT NULL THEN
        SELECT t.id INTO task_id FROM tasks t WHERE t.owner = p_owner AND t.idempotency_key = p_key;
        IF FOUND THEN
            outcome := 'existing';
            RETURN;
        END IF;
    END IF;
    SELECT count(*) INTO in_flight FROM tasks t
    WHERE t.owner = p_owner AND t.status IN ('submitting', 'pending', 'running');
    SELECT coalesce((SELECT b.balance FROM credit_balances b WHERE b.owner = p_owner), 0)
    INTO balance;
    IF in_flight >= p_max_in_flight THEN
        outcome := 'limit';
        RETURN;
    END IF;
    IF balance < p_hold THEN
        outcome := 'credit';
        RETURN;
    END IF;
    INSERT INTO tasks (id, owner, idempotency_key, origin_task_id, account_group, account_id,
        platform, kind, model, params, webhook_url, session_hash, status, billing, cost_held,
        deadline)
    VALUES (p_id, p_owner, p_key, p_origin, p_group, p_account, p_platform, p_kind, p_model,
        p_params, p_webhook, p_session, 'submitting', p_billing, p_hold,
        now() + make_interval(secs => p_deadline_s));
    INSERT INTO ledger (owner, kind, amount, task_id) VALUES (p_owner, 'hold', -p_hold, p_id);
    outcome := 'created';
    task_id := p_id;
END $$;

-- Pollers' leases: one row per poller token, renewed in one write per period. A
-- task whose lease_owner names an expired (or missing) token may be taken over.
CREATE TABLE task_leases (
    token        text PRIMARY KEY,
    instance_id  text NOT NULL,
    expires_at   timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX task_leases_expires ON task_leases (expires_at);

-- The credit ledger: append-only. `amount` is the signed effect on the owner's
-- balance: topup +, hold -, hold_adjust +/- (a submit answer changed the
-- estimate), release + (the whole hold lifted at settlement), capture - (the
-- final cost of a success). A balance is the sum of an owner's entries;
-- credit_balances keeps that sum (trigger-maintained) and is the per-owner lock
-- of the submit's balance check.
CREATE TABLE ledger (
    id          bigserial PRIMARY KEY,
    owner       text NOT NULL,
    kind        text NOT NULL
                CHECK (kind IN ('topup', 'hold', 'hold_adjust', 'release', 'capture')),
    amount      bigint NOT NULL,
    task_id     uuid REFERENCES tasks (id),
    topup_key   text UNIQUE,
    note        text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ledger_task_once UNIQUE (task_id, kind),
    CONSTRAINT ledger_shape CHECK (
        (kind = 'topup' AND task_id IS NULL AND topup_key IS NOT NULL AND amount > 0)
        OR (kind <> 'topup' AND task_id IS NOT NULL AND topup_key IS NULL))
);
CREATE INDEX ledger_owner ON ledger (owner, id);

CREATE TABLE credit_balances (
    owner       text PRIMARY KEY,
    balance     bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only (% refused)', TG_OP
        USING ERRCODE = 'check_violation';
END $$;
CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON ledger
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

CREATE FUNCTION ledger_balance() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO credit_balances (owner, balance) VALUES (NEW.owner, NEW.amount)
    ON CONFLICT (owner) DO UPDATE
        SET balance = credit_balances.balance + EXCLUDED.balance, updated_at = now();
    RETURN NEW;
END $$;
CREATE TRIGGER ledger_balance AFTER INSERT ON ledger
    FOR EACH ROW EXECUTE FUNCTION ledger_balance();
