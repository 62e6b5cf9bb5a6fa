"""Admin API for schedule buckets (admin bearer token).

``GET /v1/admin/buckets``: every bucket PostgreSQL knows plus any this instance
rebuilt or holds in its view, each with the active Redis version, its size and
age, this instance's last rebuild (outcome, time, duration, lag) and the
version its view serves.

``POST /v1/admin/buckets/rebuild``: body ``{"bucket": "group/platform"}``
rebuilds one bucket, ``{}`` (or ``{"bucket": null}``) rebuilds all. A bucket
whose lock another instance holds answers ``busy`` (that instance's activation
reaches everyone). A malformed bucket name is a 422 naming ``bucket``.
"""

from __future__ import annotations

import time
from typing import Annotated

import msgspec

from accounts.errors import StoreUnavailable
from snapshot.builder import SnapshotBuilder
from snapshot.keys import BUCKET_PATTERN, Bucket
from snapshot.schedule import describe

from .endpoints import Call, Endpoint, Scope, UtcTime, utc

BucketName = Annotated[str, msgspec.Meta(pattern=BUCKET_PATTERN)]


class LastRebuild(msgspec.Struct, frozen=True):
    outcome: str
    # RFC 3339, UTC.
    at: UtcTime
    seconds: float
    lag_s: float | None


class BucketRow(msgspec.Struct, frozen=True):
    bucket: str
    active_version: int
    size: int | None
    age_s: float | None
    view_version: int | None
    view_source: str | None
    last_rebuild: LastRebuild | None
    # Epochs of the active version and of this instance's copy (see snapshot.keys).
    active_epoch: int = 0
    view_epoch: int | None = None


class BucketList(msgspec.Struct, frozen=True):
    buckets: list[BucketRow]


class RebuildRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """No body, ``{}`` or ``{"bucket": null}``: every bucket; else the one named."""

    bucket: BucketName | None = None


class RebuildRow(msgspec.Struct, frozen=True):
    bucket: str
    outcome: str
    # The active version after the rebuild: its number and its epoch (see snapshot.keys).
    version: int
    epoch: int
    size: int
    seconds: float


class RebuildAnswer(msgspec.Struct, frozen=True):
    results: list[RebuildRow]


def _builder(call: Call) -> SnapshotBuilder:
    schedule = call.services.schedule
    if schedule is None:
        raise StoreUnavailable("redis", "the schedule snapshot is not running")
    builder: SnapshotBuilder = schedule.builder
    return builder


async def list_buckets(call: Call) -> BucketList:
    builder = _builder(call)
    view = call.services.schedule.view
    known = set(await builder.source.buckets()) | set(builder.status) | set(view.buckets())
    now = time.time()
    rows = []
    for info in await describe(call.services.redis, sorted(known)):
        held = view.get(info.bucket)
        last = builder.status.get(info.bucket)
        rows.append(
            BucketRow(
                str(info.bucket),
                info.active_version,
                info.size,
                round(now - info.built_at, 3) if info.built_at is not None else None,
                held.version if held is not None else None,
                held.source if held is not None else None,
                LastRebuild(last.outcome, utc(last.at), last.seconds, last.lag_s) if last else None,
                active_epoch=info.active.epoch,
                view_epoch=held.epoch if held is not None else None,
            )
        )
    return BucketList(rows)


async def rebuild(call: Call) -> RebuildAnswer:
    builder = _builder(call)
    body: RebuildRequest = call.body
    if body.bucket is not None:
        bucket = Bucket.parse(body.bucket)
        results = {bucket: await builder.rebuild(bucket)}
    else:
        results = await builder.rebuild_all()
    return RebuildAnswer(
        [
            RebuildRow(
                str(b),
                r.outcome.value,
                r.active.number,
                r.active.epoch,
                r.size,
                round(r.seconds, 4),
            )
            for b, r in results.items()
        ]
    )


ENDPOINTS = [
    Endpoint(
        "GET",
        "/v1/admin/buckets",
        list_buckets,
        "Schedule buckets: active version, size, age, last rebuild, lag",
        scope=Scope.ADMIN,
        response=BucketList,
        errors=(503,),
        tags=("buckets",),
        stores=("redis", "postgres"),
    ),
    Endpoint(
        "POST",
        "/v1/admin/buckets/rebuild",
        rebuild,
        "Rebuild one bucket ({'bucket': 'group/platform'}) or all (no body, or {})",
        scope=Scope.ADMIN,
        body=RebuildRequest,
        response=RebuildAnswer,
        errors=(503,),
        tags=("buckets",),
        stores=("redis", "postgres"),
    ),
]
