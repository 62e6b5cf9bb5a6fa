"""Task records as the store hands them out: what a poller holds, what the API shows."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from ._states import Billing, Snapshot, TaskStatus


def uuid7() -> uuid.UUID:
    """A UUID version 7 (RFC 9562): 48-bit Unix milliseconds, then 74 random bits.

    Time-ordered, so ``ORDER BY id`` is creation order and keyset pages need no
    second column. (Python 3.11 has no ``uuid.uuid7``.)
    """
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | rand & ((1 << 80) - 1)
    value = value & ~(0xF << 76) | (0x7 << 76)  # version 7
    value = value & ~(0x3 << 62) | (0x2 << 62)  # RFC 4122 variant
    return uuid.UUID(int=value)


@dataclass(slots=True)
class Held:
    """A live task as a poller holds it (no params: read once, at settlement)."""

    id: str
    version: int
    snapshot: Snapshot
    platform: str
    account_id: str | None
    kind: str
    model: str
    billing: Billing
    created_at: float  # epoch s
    deadline: float  # epoch s
    next_poll_at: float | None = None  # epoch s
    lease_owner: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> Held:
        return cls(
            id=str(row["id"]),
            version=row["version"],
            snapshot=snapshot_of(row),
            platform=row["platform"],
            account_id=str(row["account_id"]) if row["account_id"] is not None else None,
            kind=row["kind"],
            model=row["model"],
            billing=Billing.from_json(row["billing"]),
            created_at=row["created_at"].timestamp(),
            deadline=row["deadline"].timestamp(),
            next_poll_at=row["next_poll_at"].timestamp() if row["next_poll_at"] else None,
            lease_owner=row["lease_owner"],
        )


def snapshot_of(row: Any) -> Snapshot:
    return Snapshot(
        status=TaskStatus(row["status"]),
        progress=row["progress"],
        result_urls=tuple(row["result_urls"] or ()),
        failure_reason=row["failure_reason"],
        upstream_id=row["upstream_id"],
    )


class TaskView(msgspec.Struct, frozen=True, kw_only=True):
    """A task as the API shows it. Costs in credits (integers)."""

    id: str
    owner: str
    status: TaskStatus
    platform: str
    kind: str
    model: str
    group: str
    progress: float | None
    result_urls: list[str]
    failure_reason: str | None
    upstream_id: str | None
    account_id: str | None
    origin_task_id: str | None
    idempotency_key: str | None
    webhook_url: str | None
    usage: dict[str, Any] | None
    cost_held: int
    cost_charged: int | None
    cost_released: int | None
    version: int
    leased: bool
    deadline: datetime
    created_at: datetime
    updated_at: datetime
    submitted_at: datetime | None
    finished_at: datetime | None
    next_poll_at: datetime | None


def view_of(row: Any) -> TaskView:
    return TaskView(
        id=str(row["id"]),
        owner=row["owner"],
        status=TaskStatus(row["status"]),
        platform=row["platform"],
        kind=row["kind"],
        model=row["model"],
        group=row["account_group"],
        progress=row["progress"],
        result_urls=list(row["result_urls"] or ()),
        failure_reason=row["failure_reason"],
        upstream_id=row["upstream_id"],
        account_id=str(row["account_id"]) if row["account_id"] else None,
        origin_task_id=str(row["origin_task_id"]) if row["origin_task_id"] else None,
        idempotency_key=row["idempotency_key"],
        webhook_url=row["webhook_url"],
        usage=row["usage"],
        cost_held=row["cost_held"],
        cost_charged=row["cost_charged"],
        cost_released=row["cost_released"],
        version=row["version"],
        leased=row["lease_owner"] is not None,
        deadline=row["deadline"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        submitted_at=row["submitted_at"],
        finished_at=row["finished_at"],
        next_poll_at=row["next_poll_at"],
    )


@dataclass(frozen=True, slots=True)
class NewTask:
    """What ``POST /v1/tasks`` records (validated by the API layer)."""

    owner: str
    group: str
    platform: str
    kind: str
    model: str
    params: dict[str, Any]
    billing: Billing
    deadline_s: float
    idempotency_key: str | None = None
    origin_task_id: str | None = None
    account_id: str | None = None
    webhook_url: str | None = None
    session_hash: str | None = None
