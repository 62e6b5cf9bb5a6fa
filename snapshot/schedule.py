"""Publishing and reading the versioned schedule snapshot of a bucket in Redis.

Publishing (:func:`set_snapshot`): take the bucket's rebuild lock (``SET NX PX``
with a random owner token), allocate the next version from the counter, write
the version's meta, membership and records in pipelined chunks (each key with a
build TTL, so a writer that dies leaves nothing behind), then run
``activate.lua``: fencing check, newer-only compare-and-set, previous version
expired after the grace period, PUBLISH. The lock is released with
``unlock.lua`` (compare-and-delete).

Reading (:func:`read_active`): GET the active version, then read its meta,
members and records in one MULTI. A version whose keys expired in between (it
was replaced more than a grace period ago) is detected by the count check and
retried against the new active version. No active version means "no snapshot"
(None), which differs from an empty bucket (a snapshot with zero accounts).

Redis failures become :class:`~accounts.errors.StoreUnavailable`.
"""

from __future__ import annotations

import contextlib
import enum
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import msgspec
import trio

from accounts.errors import StoreUnavailable
from accounts.model import Account

from .keys import Bucket, BucketKeys, activate_keys, activation_message, channel, unlock_keys
from .redis import SET_NX, UNAVAILABLE, RedisStore

_HERE = Path(__file__).parent
ACTIVATE_LUA = _HERE / "activate.lua"
UNLOCK_LUA = _HERE / "unlock.lua"

# Records per pipeline: big enough that 10,000 accounts take a handful of round
# trips, small enough that one pipeline does not hold Redis for long.
CHUNK = 2000
# A version being written expires by itself after this unless activated: a
# crashed builder cannot leave orphan keys. Far above any real build time.
BUILD_TTL_MS = 600_000
# A reader retries this many times when the version it read was replaced and
# expired under it; each retry targets the newer active version.
READ_ATTEMPTS = 5
# "moved" (another activation slipped in) is retried this many times.
ACTIVATE_ATTEMPTS = 5

_encode = msgspec.json.Encoder().encode
_decode_account = msgspec.json.Decoder(Account).decode


# activate.lua's answer when the active version changed since the caller read it:
# activate() retries with the new one, so callers never see it.
MOVED = "moved"


class PublishOutcome(enum.StrEnum):
    ACTIVATED = "activated"
    STALE = "stale"  # a newer version is already active; ours was deleted
    FENCED = "fenced"  # our lock expired and was taken; ours was deleted
    BUSY = "busy"  # another holder has the lock; nothing written


class PublishResult(msgspec.Struct, frozen=True):
    outcome: PublishOutcome
    version: int  # the version we wrote (0 when BUSY)
    active: int  # the active version after the call
    seconds: float = 0.0
    size: int = 0  # accounts written


class Meta(msgspec.Struct, frozen=True):
    count: int
    built_at: float


class BucketSnapshot:
    """One immutable version of a bucket, as selection reads it.

    ``accounts`` is in priority order (priority, then id); ``by_id`` maps id to
    the same records. ``source`` is ``"redis"`` or ``"postgres"`` (fallback,
    ``version`` 0). Never mutated after construction: a reload builds a new one.
    """

    __slots__ = ("accounts", "bucket", "built_at", "by_id", "loaded_at", "source", "version")

    def __init__(
        self,
        bucket: Bucket,
        version: int,
        accounts: Sequence[Account],
        *,
        loaded_at: float,
        built_at: float,
        source: str = "redis",
    ) -> None:
        self.bucket = bucket
        self.version = version
        self.accounts: tuple[Account, ...] = tuple(accounts)
        self.by_id: MappingProxyType[str, Account] = MappingProxyType(
            {a.id: a for a in self.accounts}
        )
        self.loaded_at = loaded_at
        self.built_at = built_at
        self.source = source

    def __repr__(self) -> str:
        return (
            f"BucketSnapshot({self.bucket}, v{self.version}, {len(self.accounts)} accounts, "
            f"{self.source})"
        )


def _unavailable(exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable("redis", type(exc).__name__)


def _chunks(items: Sequence[Account]) -> Iterator[Sequence[Account]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


async def acquire_lock(store: RedisStore, bucket: Bucket, ttl_s: float) -> str | None:
    """Take the bucket's rebuild lock; the owner token, or None if someone holds it."""
    token = secrets.token_hex(16)
    keys = BucketKeys(store.prefix, bucket)
    try:
        ok = await store.client.set(
            keys.lock, token, px=max(1, int(ttl_s * 1000)), condition=SET_NX
        )
    except UNAVAILABLE as exc:
        raise _unavailable(exc) from exc
    return token if ok else None


async def release_lock(store: RedisStore, bucket: Bucket, token: str) -> bool:
    """Delete the lock only if ``token`` still owns it; True if deleted."""
    keys = BucketKeys(store.prefix, bucket)
    try:
        deleted = await store.script(UNLOCK_LUA)(unlock_keys(keys), [token])
    except UNAVAILABLE as exc:
        raise _unavailable(exc) from exc
    return bool(deleted)


async def write_version(store: RedisStore, bucket: Bucket, accounts: Sequence[Account]) -> int:
    """Allocate the next version and write it (not yet active); returns the version."""
    keys = BucketKeys(store.prefix, bucket)
    client = store.client
    try:
        version = int(await client.incr(keys.counter))
        meta_key, members_key, records_key = keys.version(version)
        for part in _chunks(accounts):
            async with client.pipeline(transaction=False) as pipe:
                pipe.rpush(members_key, [a.id for a in part])
                pipe.hset(records_key, {a.id: _encode(a).decode() for a in part})
                pipe.pexpire(members_key, BUILD_TTL_MS)
                pipe.pexpire(records_key, BUILD_TTL_MS)
        # Meta last: its presence says the version is complete, even when empty.
        meta = _encode(Meta(len(accounts), time.time())).decode()
        await client.set(meta_key, meta, px=BUILD_TTL_MS)
    except UNAVAILABLE as exc:
        raise _unavailable(exc) from exc
    return version


async def activate(
    store: RedisStore, bucket: Bucket, version: int, token: str, *, grace_s: float
) -> tuple[PublishOutcome, int]:
    """Run the activation script for a written ``version``; (outcome, active version)."""
    keys = BucketKeys(store.prefix, bucket)
    script = store.script(ACTIVATE_LUA)
    try:
        previous = int(await store.client.get(keys.active) or 0)
        for _ in range(ACTIVATE_ATTEMPTS):
            outcome, active = await script(
                activate_keys(keys, version, previous),
                [
                    version,
                    token,
                    previous,
                    max(0, int(grace_s * 1000)),
                    channel(store.prefix),
                    activation_message(bucket, version),
                ],
            )
            if outcome != MOVED:
                return PublishOutcome(outcome), int(active)
            previous = int(active)
    except UNAVAILABLE as exc:
        raise _unavailable(exc) from exc
    raise StoreUnavailable("redis", f"activation of {bucket} kept racing; retry")


Loader = Callable[[], Awaitable[Sequence[Account]]]


async def set_snapshot(
    store: RedisStore,
    bucket: Bucket,
    accounts: Sequence[Account] | Loader,
    *,
    grace_s: float,
    lock_ttl_s: float = 30.0,
) -> PublishResult:
    """Publish the bucket's accounts (in priority order) as its next version.

    ``accounts`` may be a loader, called while the lock is held: reading the
    system of record under the lock is what keeps an older read from being
    published as a newer version. Returns BUSY without writing when another
    holder has the rebuild lock. The lock is released (compare-and-delete)
    before returning, whatever happens.
    """
    started = time.perf_counter()
    token = await acquire_lock(store, bucket, lock_ttl_s)
    if token is None:
        return PublishResult(PublishOutcome.BUSY, 0, 0)
    try:
        records = await accounts() if callable(accounts) else accounts
        version = await write_version(store, bucket, records)
        outcome, active = await activate(store, bucket, version, token, grace_s=grace_s)
    finally:
        # If Redis is gone the lock expires by itself after lock_ttl_s.
        with trio.move_on_after(2, shield=True), contextlib.suppress(StoreUnavailable):
            await release_lock(store, bucket, token)
    return PublishResult(outcome, version, active, time.perf_counter() - started, len(records))


async def active_version(store: RedisStore, bucket: Bucket) -> int:
    """The active version of ``bucket`` (0: no snapshot)."""
    try:
        return int(await store.client.get(BucketKeys(store.prefix, bucket).active) or 0)
    except UNAVAILABLE as exc:
        raise _unavailable(exc) from exc


async def active_versions(store: RedisStore, buckets: Sequence[Bucket]) -> dict[Bucket, int]:
    """Active versions of many buckets in one pipeline (one GET per bucket: cluster-safe)."""
    if not buckets:
        return {}
    try:
        async with store.client.pipeline(transaction=False) as pipe:
            for b in buckets:
                pipe.get(BucketKeys(store.prefix, b).active)
        results: Any = pipe.results or ()
    except UNAVAILABLE as exc:
        raise _unavailable(exc) from exc
    return {b: int(v or 0) for b, v in zip(buckets, results, strict=True)}


async def read_version(store: RedisStore, bucket: Bucket, version: int) -> BucketSnapshot | None:
    """Read one version; None when its keys are gone (expired after a newer activation)."""
    meta_key, members_key, records_key = BucketKeys(store.prefix, bucket).version(version)
    try:
        async with store.client.pipeline(transaction=True) as pipe:
            pipe.get(meta_key)
            pipe.lrange(members_key, 0, -1)
            pipe.hgetall(records_key)
        raw_meta, members, records = pipe.results or (None, [], {})
    except UNAVAILABLE as exc:
        raise _unavailable(exc) from exc
    if raw_meta is None:
        return None
    meta = msgspec.json.decode(raw_meta, type=Meta)
    if len(members) != meta.count or len(records) != meta.count:
        return None  # expired between commands (cannot happen in MULTI, kept as a guard)
    accounts = [_decode_account(records[i]) for i in members]
    return BucketSnapshot(bucket, version, accounts, loaded_at=time.time(), built_at=meta.built_at)


async def read_active(store: RedisStore, bucket: Bucket) -> BucketSnapshot | None:
    """The bucket's active version; None when the bucket has no snapshot at all.

    Retries when the version read was replaced and expired mid-load.
    """
    for _ in range(READ_ATTEMPTS):
        version = await active_version(store, bucket)
        if version == 0:
            return None
        snap = await read_version(store, bucket, version)
        if snap is not None:
            return snap
    raise StoreUnavailable("redis", f"snapshot of {bucket} kept changing while loading; retry")


class BucketInfo(msgspec.Struct, frozen=True):
    """What Redis holds for a bucket: active version (0: none), its size and build time."""

    bucket: Bucket
    active_version: int
    size: int | None
    built_at: float | None


async def describe(store: RedisStore, buckets: Sequence[Bucket]) -> list[BucketInfo]:
    """Active version and size of each bucket (two pipelined round trips in all)."""
    versions = await active_versions(store, buckets)
    live = [b for b in buckets if versions[b] > 0]
    metas: dict[Bucket, Meta] = {}
    if live:
        try:
            async with store.client.pipeline(transaction=False) as pipe:
                for b in live:
                    pipe.get(BucketKeys(store.prefix, b).version(versions[b])[0])
            raw: Any = pipe.results or ()
        except UNAVAILABLE as exc:
            raise _unavailable(exc) from exc
        metas = {b: msgspec.json.decode(r, type=Meta) for b, r in zip(live, raw, strict=True) if r}
    return [
        BucketInfo(
            b,
            versions[b],
            metas[b].count if b in metas else None,
            metas[b].built_at if b in metas else None,
        )
        for b in buckets
    ]
