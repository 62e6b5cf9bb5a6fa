-- Upstream accounts and the events that make schedule buckets dirty.
CREATE TABLE accounts (
    id                       uuid PRIMARY KEY,
    name                     text NOT NULL,
    platform                 text NOT NULL,
    kind                     text NOT NULL CHECK (kind IN ('apikey', 'oauth')),
    groups                   text[] NOT NULL CHECK (cardinality(groups) >= 1),
    models                   text[] NOT NULL DEFAULT '{}',
    priority                 integer NOT NULL DEFAULT 0,
    concurrency              integer NOT NULL CHECK (concurrency >= 1),
    load_factor              double precision CHECK (load_factor IS NULL OR load_factor > 0),
    base_url                 text,
    credentials_enc          text,
    status                   text NOT NULL DEFAULT 'active'
                             CHECK (status IN ('active', 'disabled', 'error')),
    error_reason             text,
    schedulable              boolean NOT NULL DEFAULT true,
    expires_at               timestamptz,
    auto_pause_on_expired    boolean NOT NULL DEFAULT true,
    auto_pause_5h_threshold  double precision
                             CHECK (auto_pause_5h_threshold IS NULL
                                    OR (auto_pause_5h_threshold > 0 AND auto_pause_5h_threshold <= 1)),
    auto_pause_7d_threshold  double precision
                             CHECK (auto_pause_7d_threshold IS NULL
                                    OR (auto_pause_7d_threshold > 0 AND auto_pause_7d_threshold <= 1)),
    auto_pause_5h_disabled   boolean NOT NULL DEFAULT false,
    auto_pause_7d_disabled   boolean NOT NULL DEFAULT false,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    version                  bigint NOT NULL DEFAULT 1
);
CREATE INDEX accounts_groups ON accounts USING gin (groups);
CREATE INDEX accounts_platform_status ON accounts (platform, status);

-- One row per change that makes buckets (group x platform) dirty. bucket_group /
-- bucket_platform NULL means "every bucket" (a settings change, a full rebuild).
-- The snapshot builder consumes rows and sets consumed_at after activation.
CREATE TABLE schedule_events (
    id               bigserial PRIMARY KEY,
    kind             text NOT NULL,
    account_id       uuid,
    bucket_group     text,
    bucket_platform  text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    consumed_at      timestamptz
);
CREATE INDEX schedule_events_pending ON schedule_events (id) WHERE consumed_at IS NULL;

-- Wake builders on every instance at once (LISTEN schedule_events); the 1 s poll
-- is the safety net for a missed notification.
CREATE FUNCTION schedule_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('schedule_events', NEW.id::text);
    RETURN NEW;
END $$;
CREATE TRIGGER schedule_events_notify AFTER INSERT ON schedule_events
    FOR EACH ROW EXECUTE FUNCTION schedule_events_notify();
