"""Sticky-binding cache memory: RSS before and after a million distinct sessions.

Usage::

    python bench/bindings.py [--redis-url URL] [--sessions 1000000] [--selects 2000]
        [--rounds 1] [--before TREE]

A Selector over a real Redis bucket first serves ``--selects`` real selects
(each with a new session hash, released at once), so every module, script and
pool cache is loaded; then RSS is read. Then ``--sessions`` distinct sessions
(half with a previous_response_id too) go through the selection's binding-cache
path exactly as a select takes it (``binding_keys``, a cache lookup, the
"no binding" answer cached after the MGET, the binding cached after the acquire
bound it), without the Redis round trips, which would make a million sessions
take many minutes; RSS is read again. Printed: entries left in the cache and
RSS before / after / difference.

``--before TREE`` runs the same in another checkout too (the commit before a
change), interleaved, each run in its own process (RSS of one process only
grows, so variants cannot share one). Figures are printed, never judged.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, bench/ is sys.path[0]: put the repository root there instead.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import trio  # noqa: E402

from accounts.model import Account, Kind, Platform  # noqa: E402
from bench._common import print_setup, run_child  # noqa: E402
from snapshot.keys import Bucket  # noqa: E402
from snapshot.redis import RedisConfig, open_redis  # noqa: E402
from snapshot.schedule import set_snapshot  # noqa: E402
from snapshot.settings import Settings  # noqa: E402
from snapshot.view import ScheduleView  # noqa: E402

try:  # names before and after issue 10's renames: the script measures both
    from scheduler.selection.reports import ReleaseOutcome
except ImportError:  # pragma: no cover
    from scheduler.selection.reports import Outcome as ReleaseOutcome  # type: ignore[no-redef]
from scheduler.selection.reports import Reporter  # noqa: E402
from scheduler.selection.select import Selector, SelectRequest  # noqa: E402

BUCKET = Bucket("bind", Platform.OPENAI)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


class _Source:
    def __init__(self, accounts: list[Account]) -> None:
        self.accounts = accounts

    async def bucket_accounts(self, bucket: Bucket) -> list[Account]:
        return self.accounts

    async def buckets(self) -> list[Bucket]:
        return [BUCKET]


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    accounts = [
        Account(
            id=f"bind-{i:03d}",
            name=f"bind-{i}",
            platform=Platform.OPENAI,
            kind=Kind.APIKEY,
            groups=(BUCKET.group,),
            concurrency=1000,
        )
        for i in range(20)
    ]
    prefix = f"bench:bind:{secrets.token_hex(4)}:"
    settings = Settings()
    async with open_redis(RedisConfig(url=args.redis_url, key_prefix=prefix)) as redis:
        try:
            await set_snapshot(redis, BUCKET, accounts, grace_s=60)
            view = ScheduleView(redis, _Source(accounts))
            await view.ensure(BUCKET)
            sel = Selector(redis, view, lambda: settings)
            reporter = Reporter(sel, lambda: settings)
            run = secrets.token_hex(4)
            for i in range(args.selects):
                req = SelectRequest(
                    group=BUCKET.group, platform=BUCKET.platform, model="m",
                    session_hash=f"warm-{run}-{i}",
                )  # fmt: skip
                got = await sel.select(req)
                await reporter.release(got.lease_id, ReleaseOutcome(status=200))
            gc.collect()
            before = rss_mb()
            started = time.perf_counter()
            cache = sel.bindings
            for i in range(args.sessions):
                req = SelectRequest(
                    group=BUCKET.group, platform=BUCKET.platform, model="m",
                    session_hash=f"{run}-{i:07d}-" + "s" * 40,
                    previous_response_id=f"resp_{run}_{i:07d}" if i % 2 else None,
                )  # fmt: skip
                resp_key, sess_key = sel.binding_keys(req)
                now = time.monotonic()
                for key in (resp_key, sess_key):
                    if key is not None and not cache.lookup(key, now)[0]:
                        sel.remember_binding(key, None)  # MGET answered "no binding"
                assert sess_key is not None
                sel.remember_binding(sess_key, accounts[i % len(accounts)].id)  # acquire bound it
            seconds = time.perf_counter() - started
            gc.collect()
            return {
                "rss_before_mb": round(before, 1),
                "rss_after_mb": round(rss_mb(), 1),
                "entries": len(cache),
                "seconds": round(seconds, 2),
            }
        finally:
            await redis.delete_prefix()


def run_tree(tree: Path, argv: list[str]) -> dict[str, Any]:
    return run_child(tree, "bindings.py", argv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("STATIONMASTER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    )
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--selects", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--before", type=Path, default=None, help="another checkout to compare")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(trio.run(measure, args)), flush=True)
        return
    argv = [
        f"--redis-url={args.redis_url}",
        f"--sessions={args.sessions}",
        f"--selects={args.selects}",
    ]
    print_setup(
        "sticky-binding cache memory",
        packages=("trio", "coredis", "msgspec"),
        extra={
            "setup": f"{args.selects} real selects (new session each), then {args.sessions:,} "
            "distinct sessions through the binding-cache path (half with a response id)",
        },
    )
    here = Path(__file__).resolve().parent.parent
    trees = [("before", args.before), ("after", here)] if args.before else [("this", here)]
    print(
        f"{'variant':<8} {'entries':>9} {'RSS before MB':>13} {'RSS after MB':>12} "
        f"{'growth MB':>9} {'seconds':>7}"
    )
    for _ in range(args.rounds):
        for name, tree in trees:
            r = run_tree(tree, argv)
            growth = r["rss_after_mb"] - r["rss_before_mb"]
            print(
                f"{name:<8} {r['entries']:>9} {r['rss_before_mb']:>13} {r['rss_after_mb']:>12} "
                f"{growth:>9.1f} {r['seconds']:>7}",
                flush=True,
            )
    print(f"load avg after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
