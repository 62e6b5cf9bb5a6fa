-- Account names are unique in a deployment (an operator refers to accounts by name).
--
-- Existing duplicates are kept, not refused: the oldest account of each name
-- (created_at, then id) keeps it, every later one is renamed "<name> #<id>" (its
-- first 160 characters, then its own id, so the new name is unique and still
-- tells the account apart), its version bumped so a compare-and-set writer
-- holding the old version is told it changed. One schedule event makes the
-- snapshots carry the new names. Nothing else about those accounts changes.
WITH ranked AS (
    SELECT id, row_number() OVER (PARTITION BY name ORDER BY created_at, id) AS n
    FROM accounts
), renamed AS (
    UPDATE accounts a
    SET name = left(a.name, 160) || ' #' || a.id::text,
        version = a.version + 1,
        updated_at = now()
    FROM ranked r
    WHERE a.id = r.id AND r.n > 1
    RETURNING a.id
)
INSERT INTO schedule_events (kind)
SELECT 'accounts_renamed' WHERE EXISTS (SELECT 1 FROM renamed);

CREATE UNIQUE INDEX accounts_name_unique ON accounts (name);
