"""Waiters on a full bucket: what N selects waiting for a free slot cost the loop and Redis.

Usage::

    python bench/waiters.py [--redis-url URL] [--accounts 200] [--waiters 200]
        [--seconds 2] [--release-every 0.1] [--retry-ms 250] [--rounds 2]
        [--before TREE]

One bucket of ``--accounts`` accounts (concurrency 1 each) is filled, then
``--waiters`` selects wait on it (``wait_ms`` = ``--seconds``) while a releaser
gives one held lease back every ``--release-every`` seconds (each freed slot is
taken by one waiter, so the bucket stays full). Printed per run: release events,
waiters served, bucket reads of the runtime view (each one script call over the
whole bucket), Redis round trips, and the process CPU time spent, next to the
bound "one read per release event plus one per retry period".

``--before TREE`` runs the same measurement in another checkout too (e.g. a
``git worktree`` of the commit before a change), interleaved with this one
(before, after, before, ...), each run in its own process, so both see the same
machine load. Figures are printed, never judged.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, bench/ is sys.path[0]: put the repository root there instead.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import msgspec  # noqa: E402
import trio  # noqa: E402

from accounts.errors import NoAccountAvailable  # noqa: E402
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

BUCKET = Bucket("wait", Platform.OPENAI)


class _Source:
    """The view's PostgreSQL seam, never used: the bucket is published in Redis first."""

    def __init__(self, accounts: list[Account]) -> None:
        self.accounts = accounts

    async def bucket_accounts(self, bucket: Bucket) -> list[Account]:
        return self.accounts

    async def buckets(self) -> list[Bucket]:
        return [BUCKET]


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    accounts = [
        Account(
            id=f"wait-{i:04d}",
            name=f"wait-{i}",
            platform=Platform.OPENAI,
            kind=Kind.APIKEY,
            groups=(BUCKET.group,),
            concurrency=1,
        )
        for i in range(args.accounts)
    ]
    prefix = f"bench:wait:{secrets.token_hex(4)}:"
    settings = msgspec.convert(
        {"wait": {"retry_interval_ms": args.retry_ms, "max_wait_ms": 600_000}}, Settings
    )
    async with open_redis(RedisConfig(url=args.redis_url, key_prefix=prefix)) as redis:
        try:
            await set_snapshot(redis, BUCKET, accounts, grace_s=60)
            view = ScheduleView(redis, _Source(accounts))
            await view.ensure(BUCKET)
            sel = Selector(redis, view, lambda: settings)
            reporter = Reporter(sel, lambda: settings)
            req = SelectRequest(group=BUCKET.group, platform=BUCKET.platform, model="m")
            held = [(await sel.select(req)).lease_id for _ in accounts]
            wait = SelectRequest(
                group=BUCKET.group,
                platform=BUCKET.platform,
                model="m",
                wait_ms=int(args.seconds * 1000),
            )
            counts = {"served": 0, "timed_out": 0, "releases": 0}

            async def waiter() -> None:
                try:
                    got = await sel.select(wait)
                except NoAccountAvailable:
                    counts["timed_out"] += 1
                else:
                    counts["served"] += 1
                    held.append(got.lease_id)

            async def releaser(done: trio.Event) -> None:
                while not done.is_set():
                    await trio.sleep(args.release_every)
                    if held and not done.is_set():
                        await reporter.release(held.pop(0), ReleaseOutcome(status=200))
                        counts["releases"] += 1

            reads0, trips0 = sel.view.reads, sel.runtime.round_trips
            cpu0, wall0 = time.process_time(), time.perf_counter()
            done = trio.Event()
            async with trio.open_nursery() as outer:
                outer.start_soon(releaser, done)
                async with trio.open_nursery() as nursery:
                    for _ in range(args.waiters):
                        nursery.start_soon(waiter)
                done.set()
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            return {
                "reads": sel.view.reads - reads0,
                "round_trips": sel.runtime.round_trips - trips0,
                "cpu_s": round(cpu, 3),
                "wall_s": round(wall, 3),
                "bound": counts["releases"] + int(args.seconds * 1000 / args.retry_ms) + 1,
                **counts,
            }
        finally:
            await redis.delete_prefix()


def child(args: argparse.Namespace) -> None:
    print(json.dumps(trio.run(measure, args)), flush=True)


def run_tree(tree: Path, argv: list[str]) -> dict[str, Any]:
    return run_child(tree, "waiters.py", argv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("STATIONMASTER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    )
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--waiters", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--release-every", type=float, default=0.1)
    parser.add_argument("--retry-ms", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", type=Path, default=None, help="another checkout to compare")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    argv = [
        f"--redis-url={args.redis_url}",
        f"--accounts={args.accounts}",
        f"--waiters={args.waiters}",
        f"--seconds={args.seconds}",
        f"--release-every={args.release_every}",
        f"--retry-ms={args.retry_ms}",
    ]
    print_setup(
        "waiters on a full bucket",
        packages=("trio", "coredis"),
        extra={
            "setup": f"{args.accounts} accounts (concurrency 1, all held), {args.waiters} "
            f"waiters for {args.seconds} s, one release every {args.release_every} s, "
            f"retry every {args.retry_ms} ms; Redis {args.redis_url}",
        },
    )
    here = Path(__file__).resolve().parent.parent
    trees = [("before", args.before), ("after", here)] if args.before else [("this", here)]
    print(
        f"{'variant':<8} {'releases':>8} {'served':>6} {'timeout':>7} {'reads':>6} "
        f"{'bound':>5} {'trips':>6} {'cpu s':>6} {'wall s':>6}"
    )
    for _ in range(args.rounds):
        for name, tree in trees:
            r = run_tree(tree, argv)
            print(
                f"{name:<8} {r['releases']:>8} {r['served']:>6} {r['timed_out']:>7} "
                f"{r['reads']:>6} {r['bound']:>5} {r['round_trips']:>6} {r['cpu_s']:>6} "
                f"{r['wall_s']:>6}",
                flush=True,
            )
    print(f"load avg after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
