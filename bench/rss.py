"""Memory of one daemon process holding 10,000 accounts: its RSS, stage by stage.

Usage::

    python bench/rss.py [--pg-dsn DSN] [--redis-url URL] [--accounts 10000] [--groups 10]
        [--pairs 4000] [--python PATH] [--env KEY=VALUE ...] [--tree PATH]

``stationmaster run`` starts as a subprocess on a fresh database (dropped
afterwards) and its own Redis key prefix, with no accounts. Then this script
writes ``--accounts`` accounts straight into PostgreSQL (the repository's
``create_many``, as the admin API does, 1,000 per transaction), spread over
buckets: every account in one of ``--groups`` groups and every other one also in
the group ``all``, across the openai, anthropic and gemini platforms
(``groups x 3 + 3`` buckets). The daemon's builder publishes the snapshots; every
bucket is then selected from through ``/v1/select`` (so its snapshot, runtime view
and pool cache are loaded), and ``--pairs`` select + release pairs are spread over
all buckets with distinct sessions (sticky bindings cached).

Printed, at each stage: VmRSS, RssAnon, RssFile and VmHWM of the daemon process
(from /proc/<pid>/status). Figures are printed, never judged (target: RSS <= 100 MB
with 10,000 accounts).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import trio  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402

from accounts.crypto import Cipher, CryptoConfig  # noqa: E402
from accounts.db import DatabaseConfig, open_database, open_loop  # noqa: E402
from accounts.inputs import AccountCreate  # noqa: E402
from accounts.model import Platform  # noqa: E402
from accounts.repository import AccountRepository  # noqa: E402
from bench._common import DaemonProcess, HttpConnection, bench_database, print_setup  # noqa: E402

PLATFORMS = (Platform.OPENAI, Platform.ANTHROPIC, Platform.GEMINI)
_PACKAGES = ("trio", "coredis", "hiredis", "msgspec", "asyncpg", "hypercorn", "starlette")
_FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")


def memory(pid: int) -> dict[str, int]:
    """The daemon's memory figures in kB, from /proc/<pid>/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in _FIELDS:
            out[name] = int(value.split()[0])
    return out


def show(stage: str, pid: int) -> dict[str, int]:
    m = memory(pid)
    cells = "  ".join(f"{k} {m[k] / 1024:6.1f} MB" for k in _FIELDS)
    print(f"  {stage:<44} {cells}", flush=True)
    return m


def creates(n: int, groups: int) -> list[AccountCreate]:
    return [
        AccountCreate(
            name=f"rss-{i:05d}",
            platform=PLATFORMS[i % len(PLATFORMS)],
            groups=[f"g{i % groups}", *(["all"] if i % 2 == 0 else [])],
            priority=i % 10,
            concurrency=10,
            credentials={"api_key": f"sk-rss-{i:06d}-" + secrets.token_hex(12)},
        )
        for i in range(n)
    ]


async def seed(dsn: str, key: str, items: list[AccountCreate]) -> None:
    async with open_loop(), open_database(DatabaseConfig(dsn=dsn, pool_max=2)) as db:
        repo = AccountRepository(db, Cipher(CryptoConfig(keys=[key])))
        for i in range(0, len(items), 1000):
            await repo.create_many(items[i : i + 1000])


def buckets(groups: int) -> list[tuple[str, str]]:
    names = [f"g{g}" for g in range(groups)] + ["all"]
    return [(g, p.value) for g in names for p in PLATFORMS]


async def select_everywhere(
    url: str, token: str, all_buckets: list[tuple[str, str]], pairs: int
) -> int:
    """One select per bucket (retried until the builder has published it), then ``pairs``
    select + release pairs round-robin over the buckets; the number of pairs done."""
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    headers = {"Authorization": f"Bearer {token}"}
    conn = await HttpConnection.open(host, int(port))

    async def request(path: str, body: bytes) -> tuple[int, bytes]:
        nonlocal conn
        try:
            return await conn.request("POST", path, body, headers)
        except ConnectionError:  # hypercorn closes a connection after 1,000 requests
            await conn.aclose()
            conn = await HttpConnection.open(host, int(port))
            return await conn.request("POST", path, body, headers)

    async def pair(group: str, platform: str, session: str | None) -> int:
        body: dict[str, Any] = {"group": group, "platform": platform, "model": "m"}
        if session:
            body["session_hash"] = session
        status, answer = await request("/v1/select", json.dumps(body).encode())
        if status == 200:
            lease = json.loads(answer)["lease_id"]
            await request(f"/v1/leases/{lease}/release", b'{"status": 200}')
        return status

    try:
        with trio.fail_after(300):
            for group, platform in all_buckets:
                # The builder (another process) publishes the bucket shortly after the writes.
                while True:
                    if await pair(group, platform, None) == 200:
                        break
                    await trio.sleep(0.2)
        done = 0
        for i in range(pairs):
            group, platform = all_buckets[i % len(all_buckets)]
            done += await pair(group, platform, f"sess-{i}") == 200
        return done
    finally:
        await conn.aclose()


async def wait_published(url: str, prefix: str, all_buckets: list[tuple[str, str]]) -> None:
    """Until the daemon's builder has published every bucket (its active key exists)."""
    from snapshot.keys import Bucket, BucketKeys
    from snapshot.redis import RedisConfig, open_redis

    keys = [BucketKeys(prefix, Bucket(g, Platform(p))).active for g, p in all_buckets]
    async with open_redis(RedisConfig(url=url, key_prefix=prefix)) as redis:
        with trio.fail_after(300):
            while True:  # the builder is another process: poll
                if await redis.client.exists(keys) == len(keys):
                    break
                await trio.sleep(0.2)


async def _delete_keys(url: str, prefix: str) -> None:
    from snapshot.redis import RedisConfig, open_redis

    async with open_redis(RedisConfig(url=url, key_prefix=prefix)) as redis:
        await redis.delete_prefix()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--pg-dsn", default=os.environ.get("STATIONMASTER_TEST_PG_DSN"))
    p.add_argument("--redis-url", default=os.environ.get("STATIONMASTER_TEST_REDIS_URL"))
    p.add_argument("--accounts", type=int, default=10_000)
    p.add_argument("--groups", type=int, default=10)
    p.add_argument("--pairs", type=int, default=4000)
    p.add_argument(
        "--python",
        default=sys.executable,
        help="the daemon's interpreter: e.g. a venv with only the runtime dependencies"
        " (pip install . without the test extras, as deployed)",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the daemon (repeatable), e.g. MALLOC_ARENA_MAX=2",
    )
    p.add_argument(
        "--tree",
        type=Path,
        default=None,
        help="run the daemon from another checkout (e.g. a worktree of main, to compare)",
    )
    args = p.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.env)
    if not args.pg_dsn:
        print("needs --pg-dsn (or STATIONMASTER_TEST_PG_DSN)")
        return 2
    redis_url = args.redis_url or "redis://127.0.0.1:6379/0"
    all_buckets = buckets(args.groups)
    print_setup(
        "daemon RSS with many accounts",
        _PACKAGES,
        {
            "redis": redis_url,
            "daemon": f"{args.python}, tree {args.tree or 'this checkout'}",
            "daemon env": " ".join(args.env) or "(nothing extra)",
            "accounts": f"{args.accounts} over {len(all_buckets)} buckets"
            f" ({args.groups} groups + 'all', x {len(PLATFORMS)} platforms)",
        },
    )
    key = Fernet.generate_key().decode()
    admin, gateway = "rss-admin-" + secrets.token_hex(12), "rss-gw-" + secrets.token_hex(12)
    with bench_database(args.pg_dsn) as dsn:
        env = {
            "STATIONMASTER_DATABASE_DSN": dsn,
            "STATIONMASTER_REDIS_URL": redis_url,
            "STATIONMASTER_REDIS_KEY_PREFIX": f"smrss:{os.getpid()}:",
            "STATIONMASTER_HTTP_PORT": "0",
            "STATIONMASTER_HTTP_DATA_PORT": "0",
            "STATIONMASTER_AUTH_ADMIN_TOKENS": json.dumps([admin]),
            "STATIONMASTER_AUTH_GATEWAY_TOKENS": json.dumps([gateway]),
            "STATIONMASTER_CRYPTO_KEYS": json.dumps([key]),
            **extra_env,
        }
        tree = {} if args.tree is None else {"tree": args.tree.resolve()}
        daemon = DaemonProcess(["run"], env, python=args.python, **tree)
        try:
            daemon.wait_ready()
            url = daemon.data_url  # the gateway routes are on the data plane
            assert url is not None
            pid = daemon.proc.pid
            print(f"\ndaemon: subprocess pid {pid} (`stationmaster run`), {url}")
            show("ready, no accounts", pid)
            t0 = time.perf_counter()
            trio.run(seed, dsn, key, creates(args.accounts, args.groups))
            print(f"  ({args.accounts} accounts written in {time.perf_counter() - t0:.1f} s)")
            t0 = time.perf_counter()
            prefix = env["STATIONMASTER_REDIS_KEY_PREFIX"]
            trio.run(wait_published, redis_url, prefix, all_buckets)
            show(f"snapshots published ({time.perf_counter() - t0:.1f} s)", pid)
            t0 = time.perf_counter()
            done = trio.run(select_everywhere, url, gateway, all_buckets, 0)
            show(f"every bucket selected once ({time.perf_counter() - t0:.1f} s)", pid)
            done = trio.run(select_everywhere, url, gateway, all_buckets, args.pairs)
            show(f"+ {done} select/release pairs, distinct sessions", pid)
            time.sleep(2.0)  # a view refresh or two, the builder idle
            final = show("2 s later", pid)
        except BaseException:
            print("daemon log tail:\n" + "\n".join(daemon.tail[-8:]))
            raise
        finally:
            daemon.stop()
            trio.run(_delete_keys, redis_url, env["STATIONMASTER_REDIS_KEY_PREFIX"])
    print(
        f"\nRSS with {args.accounts} accounts: {final['VmRSS'] / 1024:.1f} MB"
        f" (peak {final['VmHWM'] / 1024:.1f} MB; target <= 100 MB)"
    )
    print(f"load avg at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
