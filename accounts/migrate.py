"""Numbered SQL migrations, applied in order under an advisory lock.

Files are ``NNNN_name.sql`` in :data:`MIGRATIONS_DIR`. All pending files run in
one transaction together with their rows in ``schema_migrations``, so a crash
leaves either everything applied and recorded, or nothing. A transaction-level
advisory lock serialises instances that start at the same moment: the second
waits, then finds everything applied and does nothing. (A transaction lock, not
a session lock, so an error can never leave a pooled connection holding it.) An applied file whose
text changed afterwards is refused (the checksum differs), because silently
running a schema that differs from the file would hide the mistake.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from .db import Database
from .errors import StationmasterError

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Arbitrary but fixed: the advisory-lock key every instance agrees on.
_LOCK_KEY = 0x5_7A71_0A57
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(StationmasterError):
    code = "migration_failed"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Read and order the migration files; a misnamed or duplicate number is an error."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(f"migration file name not NNNN_name.sql: {path.name}")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migrations numbered {version:04d}")
        found[version] = Migration(version, match.group(2), path.read_text())
    return [found[v] for v in sorted(found)]


async def migrate(db: Database, directory: Path = MIGRATIONS_DIR) -> list[int]:
    """Apply pending migrations; returns the versions this call applied."""
    migrations = load_migrations(directory)
    applied_now: list[int] = []
    async with db.transaction() as conn:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
        done = {r["version"]: r["checksum"] for r in rows}
        for m in migrations:
            if m.version in done:
                if done[m.version] != m.checksum:
                    raise MigrationError(
                        f"migration {m.version:04d}_{m.name} changed after it was applied"
                    )
                continue
            await conn.execute(m.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                m.version,
                m.name,
                m.checksum,
            )
            applied_now.append(m.version)
    return applied_now


async def applied_versions(db: Database) -> list[int]:
    rows = await db.fetch("SELECT version FROM schema_migrations ORDER BY version")
    return [r["version"] for r in rows]
