-- The settings document: one row, versioned for compare-and-set writes.
-- `document` holds only what an operator set (a partial JSON object); readers merge
-- it onto the built-in defaults. No row at all means version 0 and all defaults.
CREATE TABLE settings (
    id          smallint PRIMARY KEY CHECK (id = 1),
    version     bigint NOT NULL CHECK (version >= 0),
    document    jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(document) = 'object'),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
