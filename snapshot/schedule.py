"""Publishing and reading the versioned schedule snapshot of a bucket in Redis.

Publishing (:func:`set_snapshot`): take the bucket's rebuild lock (``SET NX PX``
with a random owner token), allocate the next version (``alloc.lua``: a number
and the counter's epoch, see :mod:`snapshot.keys`), write the version's meta,
membership and records in pipelined chunks (each key with a build TTL, so a
writer that dies leaves nothing behind), then run ``activate.lua``: fencing
check, newer-only compare-and-set, a version whose meta is gone is refused,
previous version expired after the grace period, PUBLISH. The lock is released
with ``unlock.lua`` (compare-and-delete).

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

from .keys import (
    NO_VERSION,
    Bucket,
    BucketKeys,
    Stamp,
    activate_keys,
    activation_message,
    alloc_keys,
    channel,
    unlock_keys,
)
from .redis import SET_NX, UNAVAILABLE, RedisStore

_HERE = Path(__file__).parent
ACTIVATE_LUA = _HERE / "activate.lua"
ALLOC_LUA = _HERE / "alloc.lua"
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

_encode = msgspec.json.Encoder().encode
_decode_account = msgspec.json.Decoder(Account).decode


# activate.lua's answer when the active version changed since the caller read it:
# activate() retries with the new one, so callers never see it.
MOVED = "moved"


class PublishOutcome(enum.StrEnum):
    ACTIVATED = "activated"
    STALE = "stale"  # a newer version is already active; ours was deleted
    FENCED = "fenced"  # our lock expired and was taken; ours was deleted
    MISSING = "missing"  # our version's meta expired before activation; ours was deleted
    BUSY = "busy"  # another holder has the lock; nothing written


class PublishResult(msgspec.Struct, frozen=True):
    outcome: PublishOutcome
    version: Stamp  # the version we wrote (NO_VERSION when BUSY)
    active: Stamp  # the active version after the call
    seconds: float = 0.0
    size: int = 0  # accounts written


class Meta(msgspec.Struct, frozen=True):
    count: int
    built_at: float


class BucketSnapshot:
    """One immutable version of a bucket, as selection reads it.

    ``accounts`` is in priority order (priority, then id); ``by_id`` maps id to
    the same records. ``stamp`` is the version (``version`` its number, ``epoch``
    its epoch). ``source`` is ``"redis"`` or ``"postgres"`` (fallback, no version).
    Never mutated after construction: a reload builds a new one.
    """

    __slots__ = ("accounts", "bucket", "built_at", "by_id", "loaded_at", "source", "stamp")

    def __init__(
        self,
        bucket: Bucket,
        stamp: Stamp,
        accounts: Sequence[Account],
        *,
        loaded_at: float,
        built_at: float,
        source: str = "redis",
    ) -> None:
        self.bucket = bucket
        self.stamp = stamp
        self.accounts: tuple[Account, ...] = tuple(accounts)
        self.by_id: MappingProxyType[str, Account] = MappingProxyType(
            {a.id: a for a in self.accounts}
        )
        self.loaded_at = loaded_at
        self.built_at = built_at
        self.source = source

    @property
    def version(self) -> int:
        """The version's number (its epoch aside): what operators see."""
        return self.stamp.number

    @property
    def epoch(self) -> int:
        return self.stamp.epoch

    def __repr__(self) -> str:
        return (
            f"BucketSnapshot({self.bucket}, v{self.stamp}, {len(self.accounts)} accounts, "
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


async def write_version(
    store: RedisStore, bucket: Bucket, accounts: Sequence[Account], *, known: Stamp = NO_VERSION
) -> Stamp:
    """Allocate the next version and write it (not yet active); returns its stamp.

    ``known`` is the newest version the caller has seen of the bucket: a counter
    found at or below it within its epoch went back (lost increments), and the
    version gets a new epoch (see ``alloc.lua``).
    """
    keys = BucketKeys(store.prefix, bucket)
    client = store.client
    try:
        number, epoch = await store.script(ALLOC_LUA)(
            alloc_keys(keys), [str(known.epoch), str(known.number)]
        )
        stamp = Stamp(int(epoch), int(number))
        meta_key, members_key, records_key = keys.version(stamp)
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
    return stamp


async def activate(
    store: RedisStore, bucket: Bucket, stamp: Stamp, token: str, *, grace_s: float
) -> tuple[PublishOutcome, Stamp]:
    """Run the activation script for a written version; (outcome, active version).

    "moved" (another activation slipped in between our read of the active version
    and the script) is retried with the new active version until the script
    decides. That ends: each "moved" means the active version rose, and once it is
    at or above ours the answer is "stale". A fixed retry limit failed under
    contention (twenty activations at once on a loaded machine) for no reason.
    """
    keys = BucketKeys(store.prefix, bucket)
    script = store.script(ACTIVATE_LUA)
    try:
        raw = await store.client.get(keys.active) or ""
        while True:
            previous = Stamp.decode(raw)
            outcome, raw = await script(
                activate_keys(keys, stamp, previous),
                [
                    stamp.encode(),
                    token,
                    raw,
                    max(0, int(grace_s * 1000)),
                    channel(store.prefix),
                    activation_message(bucket, stamp),
                ],
            )
            if outcome != MOVED:
                return PublishOutcome(outcome), Stamp.decode(raw)
    except UNAVAILABLE as exc:
        raise _unavailable(exc) from exc


Loader = Callable[[], Awaitable[Sequence[Account]]]


async def set_snapshot(
    store: RedisStore,
    bucket: Bucket,
    accounts: Sequence[Account] | Loader,
    *,
    grace_s: float,
    lock_ttl_s: float = 30.0,
    known: Stamp = NO_VERSION,
) -> PublishResult:
    """Publish the bucket's accounts (in priority order) as its next version.

    ``accounts`` may be a loader, called while the lock is held: reading the
    system of record under the lock is what keeps an older read from being
    published as a newer version. Returns BUSY without writing when another
    holder has the rebuild lock. The lock is released (compare-and-delete)
    before returning, whatever happens. ``known``: see :func:`write_version`.
    """
    started = time.perf_counter()
    token = await acquire_lock(store, bucket, lock_ttl_s)
    if token is None:
        return PublishResult(PublishOutcome.BUSY, NO_VERSION, NO_VERSION)
    try:
        records = await accounts() if callable(accounts) else accounts
        version = await write_version(store, bucket, records, known=known)
        outcome, active = await activate(store, bucket, version, token, grace_s=grace_s)
    finally:
        # If Redis is gone the lock expires by itself after lock_ttl_s.
        with trio.move_on_after(2, shield=True), contextlib.suppress(StoreUnavailable):
            await release_lock(store, bucket, token)
    return PublishResult(outcome, version, active, time.perf_counter() - started, len(records))


async def active_version(store: RedisStore, bucket: Bucket) -> Stamp:
    """The active version of ``bucket`` (NO_VERSION: no snapshot)."""
    try:
        return Stamp.decode(await store.client.get(BucketKeys(store.prefix, bucket).active))
    except UNAVAILABLE as exc:
        raise _unavailable(exc) from exc


async def active_versions(store: RedisStore, buckets: Sequence[Bucket]) -> dict[Bucket, Stamp]:
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
    return {b: Stamp.decode(v) for b, v in zip(buckets, results, strict=True)}


async def read_version(store: RedisStore, bucket: Bucket, stamp: Stamp) -> BucketSnapshot | None:
    """Read one version; None when its keys are gone (expired after a newer activation)."""
    meta_key, members_key, records_key = BucketKeys(store.prefix, bucket).version(stamp)
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
    return BucketSnapshot(bucket, stamp, accounts, loaded_at=time.time(), built_at=meta.built_at)


async def read_active(store: RedisStore, bucket: Bucket) -> BucketSnapshot | None:
    """The bucket's active version; None when the bucket has no snapshot at all.

    Retries when the version read was replaced and expired mid-load.
    """
    for _ in range(READ_ATTEMPTS):
        stamp = await active_version(store, bucket)
        if stamp == NO_VERSION:
            return None
        snap = await read_version(store, bucket, stamp)
        if snap is not None:
            return snap
    raise StoreUnavailable("redis", f"snapshot of {bucket} kept changing while loading; retry")


async def lost_snapshots(store: RedisStore, buckets: Sequence[Bucket]) -> list[Bucket]:
    """Buckets whose snapshot is gone from Redis: no active version, or one whose keys are gone.

    Two pipelined round trips. A data loss can take any subset of keys (a flush
    racing a rebuild, eviction): an active version pointing at nothing is as lost
    as no active version.
    """
    stamps = await active_versions(store, buckets)
    held = [b for b in buckets if stamps[b] != NO_VERSION]
    lost = [b for b in buckets if stamps[b] == NO_VERSION]
    if held:
        try:
            async with store.client.pipeline(transaction=False) as pipe:
                for b in held:
                    pipe.exists([BucketKeys(store.prefix, b).version(stamps[b])[0]])
            found: Any = pipe.results or ()
        except UNAVAILABLE as exc:
            raise _unavailable(exc) from exc
        lost.extend(b for b, n in zip(held, found, strict=True) if not int(n))
    return sorted(lost)


class BucketInfo(msgspec.Struct, frozen=True):
    """What Redis holds for a bucket: active version (NO_VERSION: none), its size and build time."""

    bucket: Bucket
    active: Stamp
    size: int | None
    built_at: float | None

    @property
    def active_version(self) -> int:
        return self.active.number


async def describe(store: RedisStore, buckets: Sequence[Bucket]) -> list[BucketInfo]:
    """Active version and size of each bucket (two pipelined round trips in all)."""
    versions = await active_versions(store, buckets)
    live = [b for b in buckets if versions[b] != NO_VERSION]
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
