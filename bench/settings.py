"""Benchmark: settings ``get()`` cost and write -> other-instance propagation delay.

1. ``SettingsSnapshot.get()`` on a warmed, running snapshot (real PostgreSQL and
   Redis behind it): ns per call over 1,000,000 calls, median of 5 rounds; the
   target is <= 1 us.
2. Two daemon processes (``python -m scheduler run``) on one scratch database and
   one Redis prefix. Writes alternate between them (``PUT /v1/admin/settings``).
   Delay = the reader's "settings applied" log timestamp (taken right after it
   installed the version) - the writer's (taken once its write committed, just
   before it published). Both are this machine's wall clock. p50/p99/max over 100 writes; the
   target is p99 <= 100 ms.

    python bench/settings.py [--dsn postgresql://postgres@127.0.0.1:5432/postgres]
                             [--redis redis://127.0.0.1:6379/0] [--writes 100]
"""

# ruff: noqa: E402 - the path fix below must run before the project's imports.
from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this directory is sys.path[0]: the repository root instead, so
# `bench._common` and the project's packages import.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import os
import platform
import secrets
import statistics
import time
from datetime import datetime
from importlib import metadata

import trio

from accounts.db import DatabaseConfig, admin_execute, open_database, open_loop
from accounts.migrate import migrate
from snapshot.redis import RedisConfig, open_redis
from snapshot.settings import SettingsSnapshot, SettingsStore
from tests.support import DaemonProcess, admin_client, config_dict, with_database

DEFAULT_DSN = os.environ.get(
    "STATIONMASTER_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
DEFAULT_REDIS = os.environ.get("STATIONMASTER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def machine() -> str:
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("trio", "trio-asyncio", "asyncpg", "coredis", "msgspec", "hypercorn")
    )
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()} "
        f"({platform.python_implementation()}); {versions}"
    )


async def bench_get(dsn: str, redis_url: str, prefix: str) -> None:
    async with (
        open_loop(),
        open_database(DatabaseConfig(dsn=dsn)) as db,
        open_redis(RedisConfig(url=redis_url, key_prefix=prefix)) as redis,
        trio.open_nursery() as nursery,
    ):
        snapshot = SettingsSnapshot(SettingsStore(db), redis)
        await nursery.start(snapshot.run)
        await snapshot.write({"scoring": {"top_k": 5}, "quota": {"default_5h_threshold": 0.9}})
        get = snapshot.get
        n = 1_000_000
        rounds = []
        for _ in range(5):
            start = time.perf_counter_ns()
            for _ in range(n):
                get()
            rounds.append((time.perf_counter_ns() - start) / n)
        loop_only = []
        for _ in range(5):
            start = time.perf_counter_ns()
            for _ in range(n):
                pass
            loop_only.append((time.perf_counter_ns() - start) / n)
        print(
            f"get(): {statistics.median(rounds):.1f} ns/call median of 5 x {n:,} "
            f"(best {min(rounds):.1f} ns; "
            f"the bare loop costs {statistics.median(loop_only):.1f} ns)"
        )
        nursery.cancel_scope.cancel()


def _applied_at(daemon: DaemonProcess, version: int) -> float | None:
    """Epoch seconds of the daemon's "settings applied" log line for ``version``."""
    for record in reversed(daemon.log_lines):
        if record.get("event") == "settings applied" and record.get("version") == version:
            return datetime.fromisoformat(record["timestamp"]).timestamp()
    return None


async def bench_propagation(data: dict[str, dict[str, object]], writes: int) -> None:
    daemons = [DaemonProcess(data), DaemonProcess(data)]
    try:
        urls = [await d.wait_ready(60) for d in daemons]
        clients = [admin_client(u) for u in urls]
        delays: list[float] = []
        sources: dict[str, int] = {}
        for version in range(1, writes + 1):
            writer = version % 2
            reader = daemons[1 - writer]
            put = await clients[writer].put(
                "/v1/admin/settings",
                json={"scoring": {"top_k": 1 + version % 50}},
                headers={"if-match": f'"{version - 1}"'},
            )
            put.raise_for_status()
            with trio.fail_after(10):
                # The log lines arrive from DaemonProcess's reader threads: poll them.
                while (applied := _applied_at(reader, version)) is None:  # noqa: ASYNC110
                    await trio.sleep(0.001)
                while (written := _applied_at(daemons[writer], version)) is None:  # noqa: ASYNC110
                    await trio.sleep(0.001)
            delays.append(applied - written)
            source = next(
                r["source"]
                for r in reversed(reader.log_lines)
                if r.get("event") == "settings applied" and r.get("version") == version
            )
            sources[source] = sources.get(source, 0) + 1
        for c in clients:
            await c.aclose()
        ms = sorted(d * 1000 for d in delays)
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        print(
            f"propagation write -> other instance over {len(ms)} writes (2 processes): "
            f"p50 {ms[len(ms) // 2]:.2f} ms, p99 {p99:.2f} ms, max {ms[-1]:.2f} ms; "
            f"installed via {sources}"
        )
        print(
            "  (writer's 'settings applied' log timestamp, taken once the write committed and "
            "before it published, to the reader's; one machine clock)"
        )
    finally:
        for d in daemons:
            d.terminate()
        for d in daemons:
            await d.wait()


async def main(args: argparse.Namespace) -> None:
    name = f"smbench_settings_{secrets.token_hex(3)}"
    prefix = f"smbench:{secrets.token_hex(3)}:"
    print(machine())
    async with open_loop():
        await admin_execute(args.dsn, f'CREATE DATABASE "{name}"')
    dsn = with_database(args.dsn, name)
    try:
        async with open_loop(), open_database(DatabaseConfig(dsn=dsn)) as db:
            await migrate(db)
        await bench_get(dsn, args.redis, prefix)
        async with open_loop(), open_database(DatabaseConfig(dsn=dsn)) as db:
            await db.execute("TRUNCATE settings, schedule_events")
        data = config_dict(dsn, args.redis, prefix)
        await bench_propagation(data, args.writes)
    finally:
        async with open_redis(RedisConfig(url=args.redis, key_prefix=prefix)) as redis:
            await redis.delete_prefix()
        async with open_loop():
            await admin_execute(args.dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--redis", default=DEFAULT_REDIS)
    parser.add_argument("--writes", type=int, default=100)
    trio.run(main, parser.parse_args())
