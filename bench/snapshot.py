"""Schedule snapshot figures: rebuild time (1,000 / 10,000), view reload, change -> visible.

Run against the machine's Redis (no PostgreSQL needed: accounts are synthetic):
``PYTHONPATH=. .venv/bin/python -P bench/snapshot.py`` (``-P``: bench/ is not put first
on sys.path); STATIONMASTER_BENCH_REDIS_URL overrides the URL.
Prints figures and the setup; not a pass/fail test. Target: 10,000-account rebuild <= 0.5 s.
"""

from __future__ import annotations

import os
import platform
import secrets
import statistics
import time
from importlib.metadata import version

import trio
import trio.lowlevel

from accounts.model import Account, Kind, Platform
from snapshot.keys import Bucket
from snapshot.redis import RedisConfig, open_redis
from snapshot.schedule import read_active, set_snapshot
from snapshot.source import AccountSource
from snapshot.view import ScheduleView
from snapshot.watcher import ScheduleWatcher

ROUNDS = 10  # per size; enough for a stable median on 2 cores


def accounts(n: int, tag: str) -> list[Account]:
    return [
        Account(
            id=f"{i:08d}-0000-4000-8000-000000000000",
            name=f"account-{tag}-{i}",
            platform=Platform.OPENAI,
            kind=Kind.APIKEY,
            groups=("bench",),
            models=("gpt-4o*", "o3"),
            priority=i % 10,
            concurrency=3,
            base_url="https://api.example.com/v1",
            credentials_enc="gAAAAAB" + "x" * 180,
        )
        for i in range(n)
    ]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


class NoSource:
    async def bucket_accounts(self, bucket: Bucket) -> list[Account]:
        raise RuntimeError("not used")

    async def buckets(self) -> list[Bucket]:
        return []


async def main() -> None:
    url = os.environ.get("STATIONMASTER_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"smbench:{secrets.token_hex(3)}:"
    print(
        f"setup: python {platform.python_version()}, cores {os.cpu_count()}, "
        f"coredis {version('coredis')}, msgspec {version('msgspec')}, trio {version('trio')}"
    )
    async with open_redis(RedisConfig(url=url, key_prefix=prefix)) as store:
        info = await store.client.info("server")
        print(f"redis {info.get('redis_version')} at {url}")
        try:
            for size in (1_000, 10_000):
                bucket = Bucket(f"b{size}", Platform.OPENAI)
                builds, reloads = [], []
                for r in range(ROUNDS):
                    data = accounts(size, str(r))
                    result = await set_snapshot(store, bucket, data, grace_s=5)
                    builds.append(result.seconds)
                    t = time.perf_counter()
                    snap = await read_active(store, bucket)
                    reloads.append(time.perf_counter() - t)
                    assert snap is not None and len(snap.accounts) == size
                print(
                    f"rebuild {size:>6} accounts: p50 {statistics.median(builds) * 1000:7.1f} ms"
                    f"  max {max(builds) * 1000:7.1f} ms   view reload: p50 "
                    f"{statistics.median(reloads) * 1000:7.1f} ms"
                    f"  max {max(reloads) * 1000:7.1f} ms"
                )
            await change_to_visible(store)
        finally:
            await store.delete_prefix()


async def change_to_visible(store: object) -> None:
    """Publish -> a second view (pub/sub watcher) holds the new version; 500-account bucket."""
    source: AccountSource = NoSource()
    view = ScheduleView(store, source, poll_s=1.0)  # type: ignore[arg-type]
    bucket = Bucket("visible", Platform.OPENAI)
    await set_snapshot(store, bucket, accounts(500, "seed"), grace_s=5)  # type: ignore[arg-type]
    delays = []
    async with trio.open_nursery() as nursery:
        await nursery.start(ScheduleWatcher(view).run)
        await view.ensure(bucket)
        for r in range(50):
            start = time.perf_counter()
            res = await set_snapshot(store, bucket, accounts(500, str(r)), grace_s=5)  # type: ignore[arg-type]
            with trio.fail_after(5):
                # Busy-wait on purpose: the figure is when the copy changes, to the tick.
                while view.get(bucket).stamp < res.version:  # type: ignore[union-attr]
                    await trio.lowlevel.checkpoint()
            delays.append(time.perf_counter() - start)
        nursery.cancel_scope.cancel()
    print(
        f"change -> visible in another view (500 accounts, incl. publish): "
        f"p50 {pct(delays, 0.5) * 1000:.1f} ms  p99 {pct(delays, 0.99) * 1000:.1f} ms"
        f"  (n={len(delays)})"
    )


if __name__ == "__main__":
    trio.run(main)
