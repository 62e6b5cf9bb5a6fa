"""Account rows: the SQL text and the row <-> record conversions the repository uses.

Private to :mod:`accounts.repository`; kept apart so the repository reads as
the operations it offers.
"""

from __future__ import annotations

import uuid
from typing import Any

from .inputs import AccountCreate
from .model import Account, Kind, Platform, Status

COLUMNS = (
    "id, name, platform, kind, groups, models, priority, concurrency, load_factor, base_url,"
    " credentials_enc, status, error_reason, schedulable, expires_at, auto_pause_on_expired,"
    " auto_pause_5h_threshold, auto_pause_7d_threshold, auto_pause_5h_disabled,"
    " auto_pause_7d_disabled, created_at, updated_at, version"
)
# Columns a create writes, in the order of insert_args.
INSERT_COLUMNS = (
    "id",
    "name",
    "platform",
    "kind",
    "groups",
    "models",
    "priority",
    "concurrency",
    "load_factor",
    "base_url",
    "credentials_enc",
    "status",
    "schedulable",
    "expires_at",
    "auto_pause_on_expired",
    "auto_pause_5h_threshold",
    "auto_pause_7d_threshold",
    "auto_pause_5h_disabled",
    "auto_pause_7d_disabled",
)
INSERT_SQL = (
    f"INSERT INTO accounts ({', '.join(INSERT_COLUMNS)}) VALUES "
    f"({', '.join(f'${i}' for i in range(1, len(INSERT_COLUMNS) + 1))})"
)
EVENTS_SQL = (
    "INSERT INTO schedule_events (kind, account_id, bucket_group, bucket_platform)"
    " SELECT $1, $2, b.g, b.p FROM unnest($3::text[], $4::text[]) AS b(g, p)"
)
LIST_SQL = f"""
SELECT {COLUMNS} FROM accounts
WHERE ($1::text IS NULL OR groups @> ARRAY[$1::text])
  AND ($2::text IS NULL OR platform = $2)
  AND ($3::text IS NULL OR status = $3)
  AND ($4::uuid IS NULL OR id > $4)
ORDER BY id LIMIT $5
"""


# Enum members by value: a dict lookup costs a fraction of calling the enum per row.
_PLATFORMS = {p.value: p for p in Platform}
_KINDS = {k.value: k for k in Kind}
_STATUSES = {s.value: s for s in Status}


def to_account(row: Any) -> Account:
    """A row selected as ``COLUMNS`` (in that order) as an Account; hot for 10k-row reads."""
    (
        aid, name, platform, kind, groups, models, priority, concurrency, load_factor,
        base_url, credentials_enc, status, error_reason, schedulable, expires_at,
        on_expired, t5h, t7d, off5h, off7d, created_at, updated_at, version,
    ) = row  # fmt: skip
    return Account(
        id=str(aid),
        name=name,
        platform=_PLATFORMS[platform],
        kind=_KINDS[kind],
        groups=tuple(groups),
        models=tuple(models),
        priority=priority,
        concurrency=concurrency,
        load_factor=load_factor,
        base_url=base_url,
        credentials_enc=credentials_enc,
        status=_STATUSES[status],
        error_reason=error_reason,
        schedulable=schedulable,
        expires_at=expires_at,
        auto_pause_on_expired=on_expired,
        auto_pause_5h_threshold=t5h,
        auto_pause_7d_threshold=t7d,
        auto_pause_5h_disabled=off5h,
        auto_pause_7d_disabled=off7d,
        created_at=created_at,
        updated_at=updated_at,
        version=version,
    )


def insert_args(
    account_id: uuid.UUID, data: AccountCreate, credentials_enc: str
) -> tuple[Any, ...]:
    """Parameters for INSERT_SQL, in INSERT_COLUMNS order."""
    return (
        account_id,
        data.name,
        data.platform.value,
        data.kind.value,
        list(data.groups),
        list(data.models),
        data.priority,
        data.concurrency,
        data.load_factor,
        data.base_url,
        credentials_enc,
        data.status,
        data.schedulable,
        data.expires_at,
        data.auto_pause_on_expired,
        data.auto_pause_5h_threshold,
        data.auto_pause_7d_threshold,
        data.auto_pause_5h_disabled,
        data.auto_pause_7d_disabled,
    )
