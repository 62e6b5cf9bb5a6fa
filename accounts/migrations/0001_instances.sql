-- Every running daemon registers here at start-up and refreshes last_seen; operators
-- see which instances share this database, and a crashed one's rows age out.
CREATE TABLE instances (
    id          text PRIMARY KEY,
    hostname    text NOT NULL,
    pid         integer NOT NULL,
    version     text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now()
);
