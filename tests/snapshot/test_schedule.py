"""Publishing and reading the schedule snapshot against a real Redis.

Covers: activation compare-and-set (older version refused, no orphan keys), a
hypothesis property over activation orders, races of many publishers (trio
tasks and two processes) in which the active version only increases, the grace
period, lock fencing, the torture test (readers vs two rebuilding processes)
and the Redis Cluster one-slot-per-script check.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
from collections import Counter
from pathlib import Path

import hypothesis.strategies as st
import pytest
import trio
from hypothesis import HealthCheck, given, settings

from accounts.model import Platform
from snapshot.keys import (
    NO_VERSION,
    Bucket,
    BucketKeys,
    Stamp,
    activate_keys,
    alloc_keys,
    unlock_keys,
)
from snapshot.redis import RedisConfig, RedisStore, open_redis
from snapshot.schedule import (
    ACTIVATE_LUA,
    ALLOC_LUA,
    UNLOCK_LUA,
    PublishOutcome,
    acquire_lock,
    activate,
    active_version,
    lost_snapshots,
    read_active,
    read_version,
    release_lock,
    set_snapshot,
    write_version,
)

from ..support import ROOT, crc16_xmodem, key_slot
from .schedule_worker import tagged_accounts

BUCKET = Bucket("g1", Platform.OPENAI)


async def _keys(store: RedisStore) -> set[str]:
    return {k async for k in store.client.scan_iter(match=store.prefix + "*", count=1000)}


def _version_keys(keys: set[str], stamp: Stamp) -> set[str]:
    return {k for k in keys if f":v:{stamp.number}:{stamp.epoch}:" in k}


def _newer_than(keys: set[str], stamp: Stamp) -> list[str]:
    """Version keys of versions newer than ``stamp`` (key: ...:v:<n>:<epoch>:<part>)."""
    out = []
    for k in keys:
        if ":v:" in k:
            number, epoch = k.split(":v:")[1].split(":")[:2]
            if Stamp(int(epoch), int(number)) > stamp:
                out.append(k)
    return out


# --- activation compare-and-set ----------------------------------------------


async def test_older_version_after_newer_is_stale_and_leaves_no_orphans(redis: RedisStore) -> None:
    token = await acquire_lock(redis, BUCKET, 30)
    assert token is not None
    older = await write_version(redis, BUCKET, tagged_accounts("g1", "old", 3))
    newer = await write_version(redis, BUCKET, tagged_accounts("g1", "new", 4))
    assert await activate(redis, BUCKET, newer, token, grace_s=60) == (
        PublishOutcome.ACTIVATED,
        newer,
    )
    assert await activate(redis, BUCKET, older, token, grace_s=60) == (PublishOutcome.STALE, newer)

    keys = await _keys(redis)
    assert _version_keys(keys, older) == set()
    assert len(_version_keys(keys, newer)) == 3
    snap = await read_active(redis, BUCKET)
    assert snap is not None and snap.stamp == newer
    assert [a.name for a in snap.accounts] == ["new"] * 4


async def test_empty_bucket_is_a_snapshot_and_unknown_bucket_is_none(redis: RedisStore) -> None:
    result = await set_snapshot(redis, BUCKET, [], grace_s=60)
    assert result.outcome is PublishOutcome.ACTIVATED
    snap = await read_active(redis, BUCKET)
    assert snap is not None and snap.accounts == () and snap.stamp == result.version
    assert await read_active(redis, Bucket("other", Platform.OPENAI)) is None


async def test_records_keep_order_and_only_ciphertext(redis: RedisStore) -> None:
    accounts = tagged_accounts("g1", "t", 2500)  # more than one pipeline chunk
    await set_snapshot(redis, BUCKET, accounts, grace_s=60)
    snap = await read_active(redis, BUCKET)
    assert snap is not None
    assert snap.accounts == tuple(accounts)
    assert snap.by_id["acct-00007"] is snap.accounts[7]
    assert snap.accounts[0].credentials_enc == "gAAAA-ciphertext"


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(order=st.permutations(range(6)), grace_ms=st.sampled_from([0, 50_000]))
def test_property_activation_order_never_goes_back(
    redis_url: str, order: list[int], grace_ms: int
) -> None:
    """Activate six written versions in any order: active == running max; losers leave no keys."""

    async def main() -> None:
        prefix = f"smt:prop:{secrets.token_hex(4)}:"
        async with open_redis(RedisConfig(url=redis_url, key_prefix=prefix)) as store:
            try:
                token = await acquire_lock(store, BUCKET, 30)
                assert token is not None
                versions = [
                    await write_version(store, BUCKET, tagged_accounts("g1", str(i), 2))
                    for i in range(6)
                ]
                best = NO_VERSION
                for i in order:
                    outcome, active = await activate(
                        store, BUCKET, versions[i], token, grace_s=grace_ms / 1000
                    )
                    expected = (
                        PublishOutcome.ACTIVATED if versions[i] > best else PublishOutcome.STALE
                    )
                    best = max(best, versions[i])
                    assert (outcome, active) == (expected, best)
                    if outcome is PublishOutcome.STALE:
                        assert _version_keys(await _keys(store), versions[i]) == set()
                assert await active_version(store, BUCKET) == max(versions)
            finally:
                await store.delete_prefix()

    trio.run(main)


# --- races: trio tasks and processes ------------------------------------------


async def _sample_monotonic(store: RedisStore, seen: list[int], stop: trio.Event) -> None:
    while not stop.is_set():
        v = await active_version(store, BUCKET)
        assert not seen or v >= seen[-1], f"active went back from {seen[-1]} to {v}"
        seen.append(v)


async def test_concurrent_activations_with_one_token_only_increase(redis: RedisStore) -> None:
    """Twenty tasks write and activate concurrently (same lock token): CAS decides each."""
    token = await acquire_lock(redis, BUCKET, 30)
    assert token is not None
    outcomes: list[PublishOutcome] = []
    seen: list[int] = []
    stop = trio.Event()

    async def publisher(n: int) -> None:
        for r in range(5):
            v = await write_version(redis, BUCKET, tagged_accounts("g1", f"{n}-{r}", 3))
            await trio.sleep(0.001 * ((n * 7 + r) % 5))  # shuffle activation order
            outcome, _ = await activate(redis, BUCKET, v, token, grace_s=60)
            outcomes.append(outcome)

    with trio.fail_after(30):
        async with trio.open_nursery() as outer:
            outer.start_soon(_sample_monotonic, redis, seen, stop)
            async with trio.open_nursery() as nursery:
                for n in range(20):
                    nursery.start_soon(publisher, n)
            stop.set()
    assert PublishOutcome.ACTIVATED in outcomes and PublishOutcome.STALE in outcomes
    active = await active_version(redis, BUCKET)
    keys = await _keys(redis)
    assert _newer_than(keys, active) == []


def _spawn_workers(
    redis_url: str, prefix: str, n: int, rounds: int, size: int, ttl: str, grace: float
) -> list[subprocess.Popen[bytes]]:
    args = [redis_url, prefix, "g1", str(rounds), str(size), str(ttl), str(grace)]
    return [
        subprocess.Popen(
            [sys.executable, "-m", "tests.snapshot.schedule_worker", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        for _ in range(n)
    ]


async def _wait_workers(procs: list[subprocess.Popen[bytes]]) -> list[dict[str, int]]:
    results = []
    for p in procs:
        out, _ = await trio.to_thread.run_sync(p.communicate)
        assert p.returncode == 0
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    return results


@pytest.mark.slow
async def test_publishers_in_tasks_and_processes_never_roll_back(
    redis: RedisStore, redis_url: str
) -> None:
    """Two processes and eight tasks publish, many with 5 ms lock TTLs (expiring mid-publish)."""
    procs = _spawn_workers(redis_url, redis.prefix, 2, 40, 20, "0.005,0.5", 0.5)
    seen: list[int] = []
    stop = trio.Event()
    outcomes: list[PublishOutcome] = []

    async def task_publisher(n: int) -> None:
        for r in range(15):
            accounts = tagged_accounts("g1", f"task{n}-{r}", 20)
            while True:
                ttl = 0.005 if r % 2 else 0.5  # short ones expire mid-publish
                result = await set_snapshot(redis, BUCKET, accounts, grace_s=0.5, lock_ttl_s=ttl)
                outcomes.append(result.outcome)
                if result.outcome is not PublishOutcome.BUSY:
                    break
                await trio.sleep(0.001)

    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as outer:
                outer.start_soon(_sample_monotonic, redis, seen, stop)
                async with trio.open_nursery() as nursery:
                    for n in range(8):
                        nursery.start_soon(task_publisher, n)
                results = await _wait_workers(procs)
                stop.set()
    finally:
        for p in procs:
            p.kill()
    assert all(r.get("activated", 0) > 0 for r in results), results
    assert PublishOutcome.ACTIVATED in outcomes
    assert len(set(seen)) > 10
    print(f"\nrace: tasks={Counter(outcomes)} processes={results} samples={len(seen)}")
    snap = await read_active(redis, BUCKET)
    assert snap is not None and len({a.name for a in snap.accounts}) == 1
    # Only versions that were active at some point (within grace) remain; nothing newer.
    keys = await _keys(redis)
    assert _newer_than(keys, snap.stamp) == []


# --- grace period and fencing -----------------------------------------------------


async def test_reader_of_old_version_finishes_then_keys_expire(redis: RedisStore) -> None:
    first = await set_snapshot(redis, BUCKET, tagged_accounts("g1", "one", 5), grace_s=0.3)
    held = await active_version(redis, BUCKET)  # a reader got N ...
    second = await set_snapshot(redis, BUCKET, tagged_accounts("g1", "two", 5), grace_s=0.3)
    assert second.version > first.version == held
    old = await read_version(redis, BUCKET, held)  # ... and finishes reading N after N+1
    assert old is not None and {a.name for a in old.accounts} == {"one"}
    with trio.fail_after(5):
        while _version_keys(await _keys(redis), held):
            await trio.sleep(0.05)
    assert await read_version(redis, BUCKET, held) is None
    snap = await read_active(redis, BUCKET)
    assert snap is not None and snap.stamp == second.version


async def test_lock_fencing(redis: RedisStore) -> None:
    """A's lock expires, B takes it; A's late unlock keeps B's lock; A's activation is refused."""
    keys = BucketKeys(redis.prefix, BUCKET)
    token_a = await acquire_lock(redis, BUCKET, 0.05)
    assert token_a is not None
    version_a = await write_version(redis, BUCKET, tagged_accounts("g1", "A", 3))
    with trio.fail_after(5):
        while await redis.client.exists([keys.lock]):
            await trio.sleep(0.01)
    token_b = await acquire_lock(redis, BUCKET, 30)
    assert token_b is not None and token_b != token_a
    assert await acquire_lock(redis, BUCKET, 30) is None  # held: a third party is refused

    assert await release_lock(redis, BUCKET, token_a) is False
    assert await redis.client.get(keys.lock) == token_b
    assert await activate(redis, BUCKET, version_a, token_a, grace_s=60) == (
        PublishOutcome.FENCED,
        NO_VERSION,
    )
    assert _version_keys(await _keys(redis), version_a) == set()
    assert await read_active(redis, BUCKET) is None

    version_b = await write_version(redis, BUCKET, tagged_accounts("g1", "B", 3))
    assert await activate(redis, BUCKET, version_b, token_b, grace_s=60) == (
        PublishOutcome.ACTIVATED,
        version_b,
    )
    assert await release_lock(redis, BUCKET, token_b) is True
    assert (await set_snapshot(redis, BUCKET, [], grace_s=60)).outcome is PublishOutcome.ACTIVATED


async def test_busy_when_lock_is_held(redis: RedisStore) -> None:
    token = await acquire_lock(redis, BUCKET, 30)
    assert token is not None
    result = await set_snapshot(redis, BUCKET, tagged_accounts("g1", "x", 1), grace_s=60)
    assert result.outcome is PublishOutcome.BUSY
    assert await read_active(redis, BUCKET) is None
    assert await redis.client.get(BucketKeys(redis.prefix, BUCKET).lock) == token


# --- torture ----------------------------------------------------------------------------


@pytest.mark.slow
async def test_torture_readers_vs_two_rebuilding_processes(
    redis: RedisStore, redis_url: str
) -> None:
    """Readers loop on read_active while two processes rebuild the bucket 100 times each.

    Zero empty reads, zero mixed-version reads (all records of a read carry one
    publish tag), zero rollbacks per reader; bounded by fail_after.
    """
    size = 50
    await set_snapshot(redis, BUCKET, tagged_accounts("g1", "seed", size), grace_s=0.2)
    procs = _spawn_workers(redis_url, redis.prefix, 2, 100, size, "5", 0.2)
    stats = {"reads": 0, "empty": 0, "mixed": 0, "rollbacks": 0}
    done = trio.Event()

    async def reader() -> None:
        last = NO_VERSION
        while not done.is_set():
            snap = await read_active(redis, BUCKET)
            stats["reads"] += 1
            if snap is None or len(snap.accounts) != size:
                stats["empty"] += 1
                continue
            if len({a.name for a in snap.accounts}) != 1:
                stats["mixed"] += 1
            if snap.stamp < last:
                stats["rollbacks"] += 1
            last = snap.stamp

    try:
        with trio.fail_after(90):
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(reader)
                results = await _wait_workers(procs)
                done.set()
    finally:
        for p in procs:
            p.kill()
    assert sum(r.get("activated", 0) for r in results) >= 100
    assert stats["reads"] > 100
    assert (stats["empty"], stats["mixed"], stats["rollbacks"]) == (0, 0, 0), stats
    print(f"\ntorture: {stats} publishers={results}")


# --- Redis Cluster: one slot per script call ------------------------------------------------


def test_crc16_matches_redis_reference_values() -> None:
    assert crc16_xmodem(b"123456789") == 0x31C3
    assert key_slot("foo") == 12182
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers")


@pytest.mark.parametrize(
    "bucket",
    [
        Bucket("g1", Platform.OPENAI),
        Bucket("team.a-b_c", Platform.ANTHROPIC),
        Bucket("x", Platform.GEMINI),
    ],
)
def test_every_script_call_touches_one_slot(bucket: Bucket) -> None:
    keys = BucketKeys("sm:", bucket)
    calls = {
        "activate": activate_keys(keys, Stamp(5, 12), Stamp(5, 11)),
        "activate-new-epoch": activate_keys(keys, Stamp(9, 1), Stamp(5, 11)),
        "activate-first": activate_keys(keys, Stamp(5, 1), NO_VERSION),
        "alloc": alloc_keys(keys),
        "unlock": unlock_keys(keys),
        "read (MULTI)": list(keys.version(Stamp(5, 7))),
        "write": [keys.seq, *keys.version(Stamp(5, 8))],
    }
    for name, touched in calls.items():
        assert len({key_slot(k) for k in touched}) == 1, name
    # And the whole bucket shares one slot with its lock and counter.
    all_keys = [keys.seq, keys.active, keys.ready, keys.lock, *keys.version(Stamp(5, 3))]
    assert len({key_slot(k) for k in all_keys}) == 1


def test_the_documented_key_shapes_are_the_ones_built() -> None:
    """Issue 10 item 13: keys.py documented a hash-tag shape the code did not build. Each key
    line of its docstring, filled in for one bucket and version, is a key BucketKeys builds."""
    import snapshot.keys

    bucket, stamp = Bucket("team.a-b_c", Platform.ANTHROPIC), Stamp(epoch=7, number=3)
    documented = {
        line.split()[0]
        .replace("<prefix>", "sm:")
        .replace("<group>", bucket.group)
        .replace("<platform>", bucket.platform.value)
        .replace("<n>", str(stamp.number))
        .replace("<epoch>", str(stamp.epoch))
        for line in (snapshot.keys.__doc__ or "").splitlines()
        if line.strip().startswith("<prefix>sched:{")
    }
    keys = BucketKeys("sm:", bucket)
    assert documented == {keys.seq, keys.active, keys.ready, keys.lock, *keys.version(stamp)}


@pytest.mark.parametrize("script", [ACTIVATE_LUA, ALLOC_LUA, UNLOCK_LUA])
def test_scripts_touch_only_declared_keys(script: Path) -> None:
    """Every redis.call names its key through KEYS[i] (PUBLISH takes a channel, not a key)."""
    text = script.read_text()
    calls = re.findall(r"redis\.call\('(\w+)',\s*([^,)]+)", text)
    assert calls
    for command, first in calls:
        if command == "PUBLISH":
            continue
        assert first.startswith("KEYS["), (command, first)


# --- activation guards: a version must exist, contention is not failure ----------------


async def test_a_version_whose_meta_is_gone_is_never_activated(redis: RedisStore) -> None:
    """Issue 10 item 11: a build whose safety TTL ran out (meta expired) must not go live:
    'missing', its remaining keys deleted, the previous version still active and readable."""
    first = await set_snapshot(redis, BUCKET, tagged_accounts("g1", "one", 3), grace_s=60)
    token = await acquire_lock(redis, BUCKET, 30)
    assert token is not None
    late = await write_version(redis, BUCKET, tagged_accounts("g1", "late", 3))
    meta, _members, _records = BucketKeys(redis.prefix, BUCKET).version(late)
    await redis.client.delete([meta])  # what BUILD_TTL_MS does to a build that took too long
    assert await activate(redis, BUCKET, late, token, grace_s=60) == (
        PublishOutcome.MISSING,
        first.version,
    )
    assert _version_keys(await _keys(redis), late) == set()
    snap = await read_active(redis, BUCKET)
    assert snap is not None and snap.stamp == first.version
    assert {a.name for a in snap.accounts} == {"one"}


async def test_activation_outlasts_any_number_of_moves(redis: RedisStore) -> None:
    """Issue 16 (the flaky test's cause): activate() gave up after 5 'moved' answers, raising
    StoreUnavailable under mere contention. Here ten other activations slip in, one before
    each of our attempts (deterministically, through the script call): ours still lands."""
    token = await acquire_lock(redis, BUCKET, 30)
    assert token is not None
    others = [
        await write_version(redis, BUCKET, tagged_accounts("g1", f"o{i}", 1)) for i in range(10)
    ]
    ours = await write_version(redis, BUCKET, tagged_accounts("g1", "ours", 1))
    script = redis.script(ACTIVATE_LUA)
    attempts: list[int] = []

    async def contended(keys: list[str], args: list[object]) -> object:
        if args[0] == ours.encode() and len(attempts) < len(others):
            # Another activation lands between our read of the active version and our call.
            other = others[len(attempts)]
            attempts.append(1)
            assert (await activate(redis, BUCKET, other, token, grace_s=60))[
                0
            ] is PublishOutcome.ACTIVATED
        return await script(keys, args)

    redis._scripts[str(ACTIVATE_LUA)] = contended  # the one seam: RedisStore.script's cache
    try:
        assert await activate(redis, BUCKET, ours, token, grace_s=60) == (
            PublishOutcome.ACTIVATED,
            ours,
        )
    finally:
        redis._scripts[str(ACTIVATE_LUA)] = script
    assert len(attempts) == 10


async def test_a_snapshot_lost_whole_or_in_part_is_found(redis: RedisStore) -> None:
    """What healing looks for: no active version, or an active version whose keys are gone
    (a flush racing a rebuild, eviction)."""
    whole, part, fine, never = (Bucket(g, Platform.OPENAI) for g in ("w", "p", "f", "n"))
    for bucket in (whole, part, fine):
        await set_snapshot(redis, bucket, tagged_accounts(bucket.group, "x", 2), grace_s=60)
    await redis.client.delete([BucketKeys(redis.prefix, whole).active])
    stamp = await active_version(redis, part)
    await redis.client.delete([BucketKeys(redis.prefix, part).version(stamp)[0]])
    assert await lost_snapshots(redis, [whole, part, fine, never]) == sorted([never, part, whole])
