-- Issue 10: selection and snapshot housekeeping.

-- The snapshot builder deletes consumed schedule_events after a retention period,
-- oldest first, in small batches: this index finds them without a table scan.
CREATE INDEX schedule_events_consumed ON schedule_events (consumed_at)
    WHERE consumed_at IS NOT NULL;

-- scoring.queue (a weight for selects waiting on an account) is gone: nothing
-- ever counted waiting selects, so it did nothing. A stored document that set it
-- would no longer validate; drop the key (a reset to nothing).
UPDATE settings SET document = document #- '{scoring,queue}',
                    version = version + 1,
                    updated_at = now()
    WHERE document #> '{scoring,queue}' IS NOT NULL;
UPDATE settings SET document = document - 'scoring'
    WHERE document -> 'scoring' = '{}'::jsonb;
