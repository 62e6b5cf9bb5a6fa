"""Benchmark: listing 10,000 accounts from PostgreSQL through the trio-asyncio bridge.

Creates a scratch database on the server (dropped at the end), migrates it,
inserts the accounts through ``AccountRepository.create_many`` (one
executemany in one transaction, credentials Fernet-encrypted), then times,
over several rounds: keyset pages of 100 / 500 / 1,000, one big read of all
10,000, and ``bucket_accounts`` of a 10,000-account bucket (what the snapshot
builder reads). Prints the median and best time and rows/s of each, plus the
machine and versions.

    python bench/accounts_list.py [--dsn postgresql://postgres@127.0.0.1:5432/postgres]
                                  [--accounts 10000] [--rounds 5]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this directory is sys.path[0]: put the repository root there
# instead, so `bench._common` and the project's packages import.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Awaitable, Callable  # noqa: E402

import trio  # noqa: E402

from accounts.crypto import Cipher, CryptoConfig, generate_key  # noqa: E402
from accounts.db import Database, DatabaseConfig, open_database, open_loop  # noqa: E402
from accounts.inputs import AccountCreate  # noqa: E402
from accounts.migrate import migrate  # noqa: E402
from accounts.model import Platform  # noqa: E402
from accounts.repository import MAX_PAGE, AccountRepository  # noqa: E402
from accounts.validation import convert  # noqa: E402
from bench._common import bench_database, print_setup  # noqa: E402

DEFAULT_DSN = os.environ.get(
    "STATIONMASTER_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def make_accounts(n: int) -> list[AccountCreate]:
    """Realistic rows: one big bucket, a few models, a credential document each."""
    return [
        convert(
            {
                "name": f"bench-{i}",
                "platform": "openai",
                "kind": "oauth" if i % 3 else "apikey",
                "groups": ["default"] if i % 4 else ["default", "vip"],
                "models": ["gpt-5*", "o3"] if i % 2 else [],
                "priority": i % 10,
                "concurrency": 1 + i % 5,
                "base_url": "https://api.openai.example/v1",
                "credentials": {"access_token": secrets.token_urlsafe(48), "account": f"u{i}"},
                "auto_pause_5h_threshold": 0.9 if i % 5 == 0 else None,
            },
            AccountCreate,
        )
        for i in range(n)
    ]


async def timed(rounds: int, fn: Callable[[], Awaitable[int]]) -> tuple[list[float], int]:
    times: list[float] = []
    rows = 0
    for _ in range(rounds):
        start = time.perf_counter()
        rows = await fn()
        times.append(time.perf_counter() - start)
    return times, rows


def pages_of(repo: AccountRepository, size: int) -> Callable[[], Awaitable[int]]:
    async def read() -> int:
        total, cursor = 0, None
        while True:
            page = await repo.list_accounts(cursor=cursor, limit=size)
            total += len(page.items)
            cursor = page.next_cursor
            if cursor is None:
                return total

    return read


def report(label: str, times: list[float], rows: int) -> None:
    med, best = statistics.median(times), min(times)
    print(
        f"{label:34} rows={rows:6d}  median {med * 1000:8.1f} ms  best {best * 1000:8.1f} ms"
        f"  {rows / med:10,.0f} rows/s (median)"
    )


async def run(repo: AccountRepository, db: Database, n: int, rounds: int) -> None:
    creates = make_accounts(n)
    start = time.perf_counter()
    await repo.create_many(creates)
    took = time.perf_counter() - start
    print(
        f"{'insert (create_many, encrypted)':34} rows={n:6d}  {took * 1000:8.1f} ms"
        f"  {n / took:10,.0f} rows/s"
    )
    await db.execute("ANALYZE accounts")
    for size in (100, 500, 1000):
        report(f"list_accounts pages of {size}", *await timed(rounds, pages_of(repo, size)))

    async def one_read() -> int:
        return len((await repo.list_accounts(limit=min(n, MAX_PAGE))).items)

    async def bucket() -> int:
        return len(await repo.bucket_accounts("default", Platform.OPENAI))

    report("list_accounts one read (limit=n)", *await timed(rounds, one_read))
    report("bucket_accounts('default', openai)", *await timed(rounds, bucket))


async def bench(dsn: str, n: int, rounds: int) -> None:
    async with open_loop(), open_database(DatabaseConfig(dsn=dsn, pool_max=4)) as db:
        await migrate(db)
        server = await db.fetchval("SHOW server_version")
        print_setup(
            "accounts: listing through AccountRepository (asyncpg via trio-asyncio)",
            ("trio", "trio-asyncio", "asyncpg", "msgspec", "cryptography"),
            {"postgres": f"{server} (loopback TCP)", "run": f"accounts={n} rounds={rounds}"},
        )
        repo = AccountRepository(db, Cipher(CryptoConfig(keys=[generate_key()])))
        await run(repo, db, n, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="server DSN to create a scratch db on")
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with bench_database(args.dsn) as dsn:
        trio.run(bench, dsn, args.accounts, args.rounds)


if __name__ == "__main__":
    main()
