"""Where the snapshot reads the system of record: the schedulable accounts of a bucket.

:class:`AccountSource` is the seam the builder and the view's fallback use.
:class:`RepositorySource` adapts ``accounts.repository.AccountRepository``
(``bucket_accounts`` / ``buckets``); :class:`SqlSource` is the same two queries
written directly against the ``accounts`` table, for when no repository is
wired (tools, benchmarks). Both return accounts ordered by (priority, id).
"""

from __future__ import annotations

from typing import Any, Protocol

from accounts.db import Database
from accounts.model import Account, Kind, Platform, Status

from .keys import Bucket


class AccountSource(Protocol):
    """The schedulable accounts of buckets, from PostgreSQL."""

    async def bucket_accounts(self, bucket: Bucket) -> list[Account]: ...

    async def buckets(self) -> list[Bucket]: ...


class RepositorySource:
    """Adapts an AccountRepository (``bucket_accounts(group, platform)``, ``buckets()``)."""

    def __init__(self, repository: Any) -> None:
        self._repo = repository

    async def bucket_accounts(self, bucket: Bucket) -> list[Account]:
        return list(await self._repo.bucket_accounts(bucket.group, bucket.platform))

    async def buckets(self) -> list[Bucket]:
        return [Bucket(g, Platform(p)) for g, p in await self._repo.buckets()]


_COLUMNS = (
    "id, name, platform, kind, groups, models, priority, concurrency, load_factor, base_url,"
    " credentials_enc, status, error_reason, schedulable, expires_at, auto_pause_on_expired,"
    " auto_pause_5h_threshold, auto_pause_7d_threshold, auto_pause_5h_disabled,"
    " auto_pause_7d_disabled, created_at, updated_at, version"
)


def account_from_row(row: Any) -> Account:
    """An ``accounts`` row as an Account (ciphertext credentials kept as they are)."""
    d = dict(row)
    d["id"] = str(d["id"])
    d["platform"] = Platform(d["platform"])
    d["kind"] = Kind(d["kind"])
    d["status"] = Status(d["status"])
    d["groups"] = tuple(d["groups"])
    d["models"] = tuple(d["models"])
    return Account(**d)


class SqlSource:
    """The two builder queries written against the ``accounts`` table directly."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def bucket_accounts(self, bucket: Bucket) -> list[Account]:
        rows = await self._db.fetch(
            f"SELECT {_COLUMNS} FROM accounts"
            " WHERE $1 = ANY(groups) AND platform = $2 AND status = 'active' AND schedulable"
            " ORDER BY priority, id",
            bucket.group,
            bucket.platform.value,
        )
        return [account_from_row(r) for r in rows]

    async def buckets(self) -> list[Bucket]:
        rows = await self._db.fetch(
            "SELECT DISTINCT g, platform FROM accounts, unnest(groups) AS g ORDER BY 1, 2"
        )
        return [Bucket(r["g"], Platform(r["platform"])) for r in rows]
