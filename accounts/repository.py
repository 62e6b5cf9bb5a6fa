"""Accounts in PostgreSQL: CRUD with compare-and-set and bucket reads.

Every write runs in one transaction with the ``schedule_events`` rows naming
the buckets (group x platform) it made dirty: a change that rolls back leaves
no event, and a committed change always leaves one. An update that moves an
account marks both its old and its new buckets. Writes take an optional
``conn`` so a caller can fold them into its own transaction (they then run in
a savepoint of it).

Compare-and-set: an update locks the row (``FOR UPDATE``) and compares its
``version`` with the caller's; of two writers holding the same version, the
second finds the bumped version once the first commits and gets
:class:`~accounts.errors.Conflict` with the current version, never a silent
overwrite.

Credentials are encrypted with :class:`~accounts.crypto.Cipher` before they
reach SQL and never decrypted here (key rotation: :mod:`accounts.key_rotation`).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import msgspec

from ._account_rows import (
    COLUMNS,
    EVENTS_SQL,
    INSERT_SQL,
    LIST_SQL,
    insert_args,
    to_account,
)
from .crypto import Cipher
from .db import CheckViolation, Connection, Database, UniqueViolation
from .errors import Conflict, NameTaken, NotFound, ValidationFailed
from .inputs import AccountCreate, AccountPatch
from .key_rotation import reencrypt
from .model import Account, Platform, Status

# A page can hold a whole large bucket (the snapshot builder and the bench read 10k at once).
MAX_PAGE = 10_000
# error_reason is free text from an upstream answer; bounded so a huge body cannot land in a row.
_MAX_REASON = 500

Bucket = tuple[str, Platform]


class AccountPage(msgspec.Struct, frozen=True):
    """One page of a listing; ``next_cursor`` is None on the last page."""

    items: list[Account]
    next_cursor: str | None


def _parse_id(account_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(account_id))
    except ValueError:
        # An id that cannot exist is simply not found; the text is not echoed back.
        raise NotFound("no account with this id") from None


def _buckets(groups: Iterable[str], platform: str) -> set[tuple[str, str]]:
    return {(g, str(platform)) for g in groups}


class AccountRepository:
    """Account rows through :mod:`accounts.db`; credentials encrypted with ``cipher``."""

    def __init__(self, db: Database, cipher: Cipher) -> None:
        self._db = db
        self.cipher = cipher

    @contextlib.asynccontextmanager
    async def _writing(self, conn: Connection | None) -> AsyncIterator[Connection]:
        if conn is None:
            async with self._db.transaction() as c:
                yield c
        else:
            async with conn.transaction() as c:
                yield c

    @staticmethod
    async def _events(
        conn: Connection, kind: str, account_id: uuid.UUID | None, buckets: set[tuple[str, str]]
    ) -> None:
        ordered = sorted(buckets)
        await conn.execute(
            EVENTS_SQL, kind, account_id, [g for g, _ in ordered], [p for _, p in ordered]
        )

    # --- writes -------------------------------------------------------------------

    async def create(self, data: AccountCreate, *, conn: Connection | None = None) -> Account:
        """Insert one account with a server-generated id; returns the stored record."""
        account_id = uuid.uuid4()
        args = insert_args(account_id, data, self.cipher.encrypt(data.credentials))
        async with self._writing(conn) as c:
            try:
                row = await c.fetchrow(f"{INSERT_SQL} RETURNING {COLUMNS}", *args)
            except CheckViolation as exc:
                raise _rejected(exc) from None
            except UniqueViolation:
                raise NameTaken(len(data.name)) from None
            await self._events(
                c, "account_created", account_id, _buckets(data.groups, data.platform)
            )
        return to_account(row)

    async def create_many(
        self, items: Sequence[AccountCreate], *, conn: Connection | None = None
    ) -> list[str]:
        """Insert all of ``items`` in one transaction (all or nothing); returns their ids."""
        ids = [uuid.uuid4() for _ in items]
        args = [
            insert_args(i, data, self.cipher.encrypt(data.credentials))
            for i, data in zip(ids, items, strict=True)
        ]
        buckets: set[tuple[str, str]] = set()
        for data in items:
            buckets |= _buckets(data.groups, data.platform)
        async with self._writing(conn) as c:
            try:
                await c.executemany(INSERT_SQL, args)
            except CheckViolation as exc:
                raise _rejected(exc) from None
            except UniqueViolation:
                raise _duplicate_in_import(items) from None
            await self._events(c, "accounts_imported", None, buckets)
        return [str(i) for i in ids]

    async def update(
        self,
        account_id: str,
        patch: AccountPatch,
        *,
        expected_version: int,
        conn: Connection | None = None,
    ) -> Account:
        """Apply ``patch`` if the stored version is ``expected_version``.

        Raises NotFound or Conflict (with ``current_version``). A patch naming no
        field changes nothing (a JSON merge patch ``{}`` is a no-op): the version is
        still checked and the stored account returned, its version not bumped.
        """
        changes = self._columns_of(patch)
        uid = _parse_id(account_id)
        if not changes:
            async with self._writing(conn) as c:
                await self._lock(c, uid, expected_version)
                row = await c.fetchrow(f"SELECT {COLUMNS} FROM accounts WHERE id = $1", uid)
            return to_account(row)
        sets = ", ".join(f"{col} = ${i}" for i, col in enumerate(changes, start=2))
        async with self._writing(conn) as c:
            old = await self._lock(c, uid, expected_version)
            try:
                row = await c.fetchrow(
                    f"UPDATE accounts SET {sets}, version = version + 1, updated_at = now()"
                    f" WHERE id = $1 RETURNING {COLUMNS}",
                    uid,
                    *changes.values(),
                )
            except CheckViolation as exc:
                raise _rejected(exc) from None
            except UniqueViolation:
                raise NameTaken(len(changes.get("name", ""))) from None
            new = to_account(row)
            dirty = _buckets(old["groups"], old["platform"]) | _buckets(new.groups, new.platform)
            await self._events(c, "account_updated", uid, dirty)
        return new

    def _columns_of(self, patch: AccountPatch) -> dict[str, Any]:
        changes = patch.changes()
        out: dict[str, Any] = {}
        for name, value in changes.items():
            if name == "credentials":
                out["credentials_enc"] = self.cipher.encrypt(value)
            elif name in ("groups", "models"):
                out[name] = list(value)
            elif name in ("platform", "kind"):
                out[name] = value.value
            else:
                out[name] = value
        if "status" in changes:
            # An admin status change ends any error episode; its reason goes with it.
            out["error_reason"] = None
        return out

    @staticmethod
    async def _lock(c: Connection, uid: uuid.UUID, expected_version: int | None) -> Any:
        """Lock the row; NotFound if missing, Conflict if its version is not the expected one."""
        old = await c.fetchrow(
            "SELECT version, groups, platform, status FROM accounts WHERE id = $1 FOR UPDATE", uid
        )
        if old is None:
            raise NotFound("no account with this id")
        if expected_version is not None and old["version"] != expected_version:
            raise Conflict(
                f"the account is at version {old['version']}, not {expected_version}",
                current_version=old["version"],
            )
        return old

    async def disable(
        self,
        account_id: str,
        *,
        expected_version: int | None = None,
        conn: Connection | None = None,
    ) -> Account:
        """Soft-disable (status ``disabled``); a no-op on an already disabled account."""
        uid = _parse_id(account_id)
        async with self._writing(conn) as c:
            old = await self._lock(c, uid, expected_version)
            if old["status"] == Status.DISABLED:
                row = await c.fetchrow(f"SELECT {COLUMNS} FROM accounts WHERE id = $1", uid)
                return to_account(row)
            row = await c.fetchrow(
                "UPDATE accounts SET status = 'disabled', error_reason = NULL,"
                " version = version + 1, updated_at = now()"
                f" WHERE id = $1 RETURNING {COLUMNS}",
                uid,
            )
            await self._events(c, "account_disabled", uid, _buckets(old["groups"], old["platform"]))
        return to_account(row)

    async def delete(
        self,
        account_id: str,
        *,
        expected_version: int | None = None,
        conn: Connection | None = None,
    ) -> None:
        """Delete the row (NotFound if missing; Conflict if ``expected_version`` is stale)."""
        uid = _parse_id(account_id)
        async with self._writing(conn) as c:
            old = await self._lock(c, uid, expected_version)
            await c.execute("DELETE FROM accounts WHERE id = $1", uid)
            await self._events(c, "account_deleted", uid, _buckets(old["groups"], old["platform"]))

    async def mark_error(
        self, account_id: str, reason: str, *, conn: Connection | None = None
    ) -> bool:
        """Set an active account to ``error`` with ``reason`` (selection calls this on 401/403).

        Returns True if this call changed the row. Accounts already in error or
        disabled by an admin are left alone, so a burst of failing requests makes
        one write and one event, not one per request. ``reason`` must not carry
        secrets (it is shown to admins); it is cut to 500 characters.
        """
        uid = _parse_id(account_id)
        async with self._writing(conn) as c:
            row = await c.fetchrow(
                "UPDATE accounts SET status = 'error', error_reason = $2,"
                " version = version + 1, updated_at = now()"
                " WHERE id = $1 AND status = 'active' RETURNING groups, platform",
                uid,
                reason[:_MAX_REASON],
            )
            if row is None:
                return False
            await self._events(c, "account_error", uid, _buckets(row["groups"], row["platform"]))
        return True

    # --- reads --------------------------------------------------------------------

    async def get(self, account_id: str) -> Account:
        """The account, or NotFound."""
        row = await self._db.fetchrow(
            f"SELECT {COLUMNS} FROM accounts WHERE id = $1", _parse_id(account_id)
        )
        if row is None:
            raise NotFound("no account with this id")
        return to_account(row)

    async def list_accounts(
        self,
        *,
        group: str | None = None,
        platform: Platform | None = None,
        status: Status | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> AccountPage:
        """One page in id order, after ``cursor`` (opaque: the previous page's next_cursor)."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValidationFailed.one("limit", f"must be between 1 and {MAX_PAGE}")
        after: uuid.UUID | None = None
        if cursor is not None:
            try:
                after = uuid.UUID(cursor)
            except ValueError:
                raise ValidationFailed.one("cursor", "not a cursor from a previous page") from None
        rows = await self._db.fetch(
            LIST_SQL,
            group,
            platform.value if platform else None,
            status.value if status else None,
            after,
            limit + 1,
        )
        items = [to_account(r) for r in rows[:limit]]
        more = len(rows) > limit
        return AccountPage(items, items[-1].id if more else None)

    async def bucket_accounts(self, group: str, platform: Platform) -> list[Account]:
        """The schedulable accounts of one bucket (active, admin switch on), by priority, id.

        Expiry and runtime deadlines are not applied here: they change with time,
        so selection checks them on every request.
        """
        rows = await self._db.fetch(
            f"SELECT {COLUMNS} FROM accounts WHERE groups @> ARRAY[$1::text]"
            " AND platform = $2 AND status = 'active' AND schedulable"
            " ORDER BY priority, id",
            group,
            platform.value,
        )
        return [to_account(r) for r in rows]

    async def buckets(self) -> list[Bucket]:
        """Every (group, platform) that has at least one account, whatever its status.

        Buckets whose accounts are all disabled are included so a full rebuild
        publishes them empty instead of leaving a stale snapshot behind.
        """
        rows = await self._db.fetch(
            "SELECT DISTINCT g, platform FROM accounts, unnest(groups) AS g ORDER BY 1, 2"
        )
        return [(r["g"], Platform(r["platform"])) for r in rows]

    # --- keys ---------------------------------------------------------------------

    async def reencrypt(self) -> int:
        """Rewrite every stored credential under the newest key (:func:`key_rotation.reencrypt`)."""
        return await reencrypt(self._db, self.cipher)


def _duplicate_in_import(items: Sequence[AccountCreate]) -> Conflict:
    """The 409 for an import that names an account twice, or a name already in use."""
    seen: dict[str, int] = {}
    for row, data in enumerate(items, start=1):
        if data.name in seen:
            err = NameTaken(len(data.name))
            err.message = f"row {row}: the same name as row {seen[data.name]}"
            err.details["row"] = row
            return err
        seen[data.name] = row
    err = NameTaken(0)
    err.message = "a row names an account that already exists (names are unique)"
    return err


def _rejected(exc: Exception) -> ValidationFailed:
    # Input structs validate first; this is the schema's last word, named by its constraint.
    name = getattr(exc, "constraint_name", None) or "check"
    return ValidationFailed.one("$", f"rejected by the database constraint {name}")
