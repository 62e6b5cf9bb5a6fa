"""The settings row in PostgreSQL and the Redis invalidation channel.

PostgreSQL is the system of record: one row (``id = 1``) with a version and the
partial document. A write is a compare-and-set on that version, done under
``SELECT … FOR UPDATE`` so the merge of the patch onto the stored document can
never lose a concurrent write; the same transaction inserts a ``schedule_events``
row with a NULL bucket (every bucket dirty), so the snapshot builders re-rank
with the new weights.

After the commit, the writer PUBLISHes the new version on :func:`settings_channel`.
That message is only a hint to reload: receivers read PostgreSQL again, so a
lost, duplicated, reordered or forged message can delay a change (or cost a
read) but never make one.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec
import structlog
import trio

from accounts.db import Connection, Database
from accounts.errors import Conflict, StoreUnavailable, ValidationFailed
from snapshot.redis import UNAVAILABLE, RedisStore

from ._settings_model import Settings, merge_patch, parse_document, unknown_keys

log = structlog.get_logger("settings")

_LOAD = "SELECT version, document, updated_at FROM settings WHERE id = 1"
_VERSION = "SELECT version FROM settings WHERE id = 1"
# Publishing is a hint; a Redis that does not answer quickly must not hold up an
# admin write that already committed (the periodic version check covers it).
PUBLISH_TIMEOUT_S = 1.0
_PUBLISH_ERRORS: tuple[type[BaseException], ...] = (
    trio.TooSlowError,
    StoreUnavailable,
    *UNAVAILABLE,
)


class SettingsRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One stored version: the partial ``document`` and the effective ``settings``."""

    version: int
    document: dict[str, Any]
    settings: Settings
    updated_at: datetime | None = None


EMPTY_RECORD = SettingsRecord(version=0, document={}, settings=Settings())


class SettingsStore:
    """Reads and compare-and-set writes of the one settings row."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def load(self) -> SettingsRecord:
        """The stored version (version 0 and defaults when there is no row).

        Raises StoreUnavailable, or ValidationFailed if the stored document is no
        longer valid (written by hand, or by a newer release with more fields).
        """
        row = await self._db.fetchrow(_LOAD)
        if row is None:
            return EMPTY_RECORD
        document = dict(row["document"])
        return SettingsRecord(
            version=row["version"],
            document=document,
            settings=parse_document(document),
            updated_at=row["updated_at"],
        )

    async def version(self) -> int:
        """Just the stored version: the cheap periodic check."""
        value = await self._db.fetchval(_VERSION)
        return 0 if value is None else int(value)

    async def write(
        self, patch: Mapping[str, Any], *, expected_version: int | None = None
    ) -> SettingsRecord:
        """Merge ``patch`` onto the stored document and bump the version, atomically.

        ``expected_version`` None applies the patch to whatever is current (still
        atomic: the row is locked while merging). Raises Conflict (with the current
        version) if it does not match, ValidationFailed if the merged document is
        invalid (nothing is written), StoreUnavailable.
        """
        # Checked on the patch itself too: resetting (null) or setting an empty
        # object under an unknown key would otherwise vanish in the merge unnoticed.
        unknown = unknown_keys(patch)
        if unknown:
            raise ValidationFailed([(path, "unknown field") for path in unknown])
        async with self._db.transaction() as conn:
            current, document = await self._lock_row(conn)
            if expected_version is not None and expected_version != current:
                raise Conflict(
                    f"settings are at version {current}, not {expected_version}",
                    current_version=current,
                )
            merged = merge_patch(document, patch)
            settings = parse_document(merged)
            row = await conn.fetchrow(
                """UPDATE settings SET version = version + 1, document = $1, updated_at = now()
                   WHERE id = 1 RETURNING version, updated_at""",
                merged,
            )
            await conn.execute("INSERT INTO schedule_events (kind) VALUES ('settings')")
        return SettingsRecord(
            version=row["version"],
            document=merged,
            settings=settings,
            updated_at=row["updated_at"],
        )

    @staticmethod
    async def _lock_row(conn: Connection) -> tuple[int, dict[str, Any]]:
        # The row may not exist yet (fresh database): create version 0 first so
        # there is always a row to lock; concurrent creators meet on the primary key.
        await conn.execute(
            "INSERT INTO settings (id, version, document) VALUES (1, 0, '{}')"
            " ON CONFLICT (id) DO NOTHING"
        )
        row = await conn.fetchrow("SELECT version, document FROM settings WHERE id = 1 FOR UPDATE")
        return int(row["version"]), dict(row["document"])


def settings_channel(redis: RedisStore) -> str:
    """The pub/sub channel carrying "settings are now at version N"."""
    return redis.key("settings", "changed")


class Invalidation(msgspec.Struct, frozen=True, omit_defaults=True):
    """The message on :func:`settings_channel`: "settings are at version N now".

    A hint only: receivers reload from PostgreSQL when N is newer than theirs.
    ``document`` is what earlier releases sent along; it is never installed (the
    channel is not trusted) and no longer sent. A bare integer means the same.
    """

    version: int
    document: dict[str, Any] | None = None


async def publish_invalidation(redis: RedisStore, change: SettingsRecord | int) -> bool:
    """PUBLISH the new version; False (logged) if Redis did not take it.

    Never raises for an unavailable Redis: the write has committed already, and
    every instance's periodic version check picks it up without the message.
    """
    channel = settings_channel(redis)
    message = Invalidation(change.version if isinstance(change, SettingsRecord) else change)
    try:
        with trio.fail_after(PUBLISH_TIMEOUT_S):
            await redis.client.publish(channel, msgspec.json.encode(message).decode())
    except _PUBLISH_ERRORS as exc:
        log.warning(
            "settings invalidation not published; other instances will see it by polling",
            version=message.version,
            reason=type(exc).__name__,
        )
        return False
    return True
