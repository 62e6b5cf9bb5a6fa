"""Benchmark: the usage prober's scheduling overhead with 10,000 probe-able accounts.

Real PostgreSQL and Redis (``--pg-dsn`` / ``--redis-url``, default
``$STATIONMASTER_TEST_PG_DSN`` / ``$STATIONMASTER_TEST_REDIS_URL``); no upstream
is called: every account has a fresh reading well below its threshold, so
nothing is due during the idle part.

1. **Pick the due set**: all 10,000 accounts due at once in the schedule heap;
   the time to pop them (pure heap work), to evaluate the rule for each (pure),
   and to read their runtime states and probe records from Redis in the
   prober's batches (what a round costs before any claim).
2. **Idle**: the prober actor running with nothing due: process CPU per second
   over a few windows, interleaved with the account-list refresh it does every
   ``usage.accounts_refresh_s`` (60 s by default), measured on its own; the CPU
   per second at the default refresh period is idle + refresh / 60.

    python bench/prober.py [--accounts 10000] [--idle-s 5] [--rounds 3]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, Python puts bench/ first on sys.path: swap the script's folder for
# the repository root before importing anything else, so the project's packages import.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import msgspec  # noqa: E402
import trio  # noqa: E402

from accounts.crypto import Cipher, CryptoConfig, generate_key  # noqa: E402
from accounts.db import DatabaseConfig, open_database, open_loop  # noqa: E402
from accounts.inputs import AccountCreate  # noqa: E402
from accounts.migrate import migrate  # noqa: E402
from accounts.model import Kind, Platform, QuotaWindow, Window  # noqa: E402
from accounts.repository import AccountRepository  # noqa: E402
from bench._common import bench_database, print_setup  # noqa: E402
from scheduler.selection.store import RuntimeStore, encode_reading  # noqa: E402
from scheduler.usage import (  # noqa: E402
    Prober,
    ProbeStore,
    UsageProbe,
    load_probeable,
    rules,
)
from scheduler.usage.prober import BATCH  # noqa: E402
from snapshot.redis import RedisConfig, open_redis  # noqa: E402
from snapshot.settings import Settings  # noqa: E402


def _settings(**usage: Any) -> Settings:
    return msgspec.convert(
        {"quota": {"default_5h_threshold": 0.9, "default_7d_threshold": 0.9}, "usage": usage},
        Settings,
    )


async def _seed(repo: AccountRepository, runtime: RuntimeStore, n: int) -> None:
    half = n // 2
    creates = [
        AccountCreate(
            name=f"acct-{i}",
            platform=Platform.ANTHROPIC if i < half else Platform.OPENAI,
            kind=Kind.OAUTH,
            groups=["bench"],
            base_url="http://127.0.0.1:9",
            credentials={"access_token": f"tok-{i}", "account_id": f"ws-{i}"},
        )
        for i in range(n)
    ]
    for i in range(0, n, 1000):
        await repo.create_many(creates[i : i + 1000])
    now = time.time()
    pipe_client = runtime.redis.client
    for account in await load_probeable(repo):
        reading = QuotaWindow(
            window=Window.FIVE_HOURS, used_ratio=0.1, observed_at=now, reset_at=now + 4 * 3600
        )
        await pipe_client.hset(
            runtime.keys.state(account.platform.value, account.id), dict([encode_reading(reading)])
        )


async def _pick(
    found: list[Any], probe: UsageProbe, settings: Settings, n: int
) -> dict[str, float]:
    """All accounts due at once: heap pops, rule evaluations, batch reads (no claims)."""
    prober = Prober(probe, probe.accounts)
    prober.set_accounts(found, 0.0)  # spread 0: every account due now
    now = time.time()
    t = time.perf_counter()
    due = prober.pop_due(now + 1, limit=n)
    pop_s = time.perf_counter() - t
    by_id = {a.id: a for a in found}
    accounts = [by_id[i] for i in due]
    read_s = decide_s = 0.0
    for i in range(0, len(accounts), BATCH):
        batch = accounts[i : i + BATCH]
        t = time.perf_counter()
        states: dict[str, Any] = {}
        for platform in {a.platform.value for a in batch}:
            ids = [a.id for a in batch if a.platform.value == platform]
            states.update(await probe.runtime.read_many(platform, ids))
        records = await probe.store.records([a.id for a in batch])
        read_s += time.perf_counter() - t
        t = time.perf_counter()
        for a in batch:
            rules.next_probe(
                a, states[a.id].windows, records[a.id], settings.quota, settings.usage, now
            )
        decide_s += time.perf_counter() - t
    return {"due": len(due), "pop_s": pop_s, "read_s": read_s, "decide_s": decide_s}


async def _idle(prober: Prober, idle_s: float) -> float:
    """Process CPU seconds per second while the running prober has nothing due."""
    c0, t0 = time.process_time(), time.perf_counter()
    await trio.sleep(idle_s)
    return (time.process_time() - c0) / (time.perf_counter() - t0)


async def _refresh(prober: Prober) -> tuple[float, float]:
    """One account-list refresh: (wall s, CPU s)."""
    c0, t0 = time.process_time(), time.perf_counter()
    # The refresh the actor runs every usage.accounts_refresh_s, timed on its own.
    await prober._reload()
    return time.perf_counter() - t0, time.process_time() - c0


async def main(args: argparse.Namespace, dsn: str) -> None:
    cipher = Cipher(CryptoConfig(keys=[generate_key()]))
    prefix = f"smbench:{os.getpid()}:{secrets.token_hex(3)}:"
    async with (
        open_loop(),
        open_database(DatabaseConfig(dsn=dsn, pool_max=4)) as db,
        open_redis(RedisConfig(url=args.redis_url, key_prefix=prefix)) as redis,
    ):
        try:
            await migrate(db)
            repo = AccountRepository(db, cipher)
            runtime = RuntimeStore(redis)
            t = time.perf_counter()
            await _seed(repo, runtime, args.accounts)
            print(
                f"seeded:   {args.accounts} accounts + readings in {time.perf_counter() - t:.1f} s"
            )
            # Nothing due while idle: fresh readings, idle interval an hour, no refresh of
            # the account list inside the windows (measured on its own, interleaved).
            settings = _settings(start_spread_s=1.0, accounts_refresh_s=3600.0)
            probe = UsageProbe(
                runtime=runtime,
                store=ProbeStore(redis),
                accounts=repo,
                credentials=lambda a: None,
                settings=lambda: settings,
            )
            found = await load_probeable(repo)
            picks = [await _pick(found, probe, settings, args.accounts) for _ in range(args.rounds)]
            prober = Prober(probe, repo)
            idle: list[float] = []
            refresh: list[tuple[float, float]] = []
            async with trio.open_nursery() as nursery:
                await nursery.start(prober.run)
                # Let the first look at every account (spread over start_spread_s) pass.
                await trio.sleep(settings.usage.start_spread_s + 2.0)
                evaluated = prober.evaluations
                for _ in range(args.rounds):
                    idle.append(await _idle(prober, args.idle_s))
                    refresh.append(await _refresh(prober))
                probes = prober.probes
                nursery.cancel_scope.cancel()
        finally:
            await redis.delete_prefix()
    _report(args, picks, idle, refresh, evaluated, probes)


def _report(
    args: argparse.Namespace,
    picks: list[dict[str, float]],
    idle: list[float],
    refresh: list[tuple[float, float]],
    evaluated: int,
    probes: int,
) -> None:
    n = args.accounts

    def row(label: str, key: str) -> float:
        value = statistics.median(p[key] for p in picks)
        print(f"{label:<26}{value * 1000:9.2f} ms  ({value / n * 1e6:.2f} µs/account)")
        return value

    print(f"\n-- pick the due set: {n} accounts all due (median of {len(picks)} rounds)")
    total = row("heap pops", "pop_s") + row("rule evaluations", "decide_s")
    total += row(f"Redis reads ({BATCH}/batch)", "read_s")
    print(f"{'total before claims':<26}{total * 1000:9.2f} ms")
    print(f"\n-- idle, nothing due: {len(idle)} windows of {args.idle_s:g} s")
    print(f"(first looks before it: {evaluated} evaluations, {probes} probes)")
    cpu_idle = statistics.median(idle)
    windows = ", ".join(f"{x * 1000:.3f}" for x in idle)
    print(f"{'prober CPU while idle':<26}{cpu_idle * 1000:9.3f} ms per s  (windows: {windows})")
    wall = statistics.median(r[0] for r in refresh)
    cpu = statistics.median(r[1] for r in refresh)
    label = "account-list refresh"
    print(f"{label:<26}{wall * 1000:9.1f} ms wall, {cpu * 1000:.1f} ms CPU ({n} rows)")
    per_s = (cpu_idle + cpu / 60) * 1000
    print(f"{'CPU per s, refresh 60 s':<26}{per_s:9.2f} ms per s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--idle-s", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pg-dsn", default=os.environ.get("STATIONMASTER_TEST_PG_DSN"))
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("STATIONMASTER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    )
    args = parser.parse_args()
    if not args.pg_dsn:
        sys.exit("bench/prober.py: --pg-dsn (or STATIONMASTER_TEST_PG_DSN) is required")
    print_setup(
        f"usage prober scheduling, {args.accounts} accounts",
        packages=("trio", "coredis", "asyncpg", "msgspec"),
    )
    with bench_database(args.pg_dsn) as dsn:
        trio.run(main, args, dsn)
