"""In-process ``select()`` + release of several checkouts, interleaved round by round.

Usage::

    python bench/select_trees.py NAME=TREE [NAME=TREE ...] [--n 3000] [--rounds 5]

For A/B runs of changes to the hot path (``git worktree add --detach /tmp/x <commit>``
gives a tree). Each round runs every tree in turn, each in its own process with its
tree first on ``sys.path``: a 500-account bucket (``bench/selection.py``'s), the
selector's view refresher running, ``--n`` select + release pairs, then ``--n`` bare
PINGs through the same lean client. Printed per tree, median over the rounds (and
the best round): CPU µs per select and per release (process time inside each call),
select p50/p99, PING p50 and CPU, and select p50 / PING p50.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "--child":
    sys.path[0] = sys.argv[2]
else:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import os
import secrets
import statistics
import subprocess
import time

import trio

COLUMNS = ("CPU us/select", "CPU us/release", "select p50", "p99", "PING p50", "PING CPU")


async def child(url: str, n: int) -> list[float]:
    from bench._common import percentile
    from bench.selection import BUCKET, WARMUP, _Source, bench_accounts
    from scheduler.selection.refresher import ViewRefresher
    from scheduler.selection.reports import ReleaseOutcome, Reporter
    from scheduler.selection.select import Selector, SelectRequest
    from snapshot.redis import RedisConfig, open_redis
    from snapshot.schedule import set_snapshot
    from snapshot.settings import Settings
    from snapshot.view import ScheduleView

    prefix = f"benchtrees:{secrets.token_hex(3)}:"
    async with open_redis(RedisConfig(url=url, key_prefix=prefix)) as store:
        accounts, settings = bench_accounts(), Settings()
        await set_snapshot(store, BUCKET, accounts, grace_s=30)
        req = SelectRequest(group="bench", platform=BUCKET.platform, model="m")
        sel = Selector(store, ScheduleView(store, _Source(accounts)), lambda: settings)
        reporter, outcome = Reporter(sel, lambda: settings), ReleaseOutcome(status=200)
        cpu, clock = time.process_time, time.perf_counter
        try:
            for _ in range(WARMUP):
                await reporter.release((await sel.select(req)).lease_id, outcome)
            times, select_cpu, release_cpu = [], 0.0, 0.0
            async with trio.open_nursery() as nursery:
                await nursery.start(ViewRefresher(sel).run)
                for _ in range(n):
                    c0, t0 = cpu(), clock()
                    got = await sel.select(req)
                    t1, c1 = clock(), cpu()
                    await reporter.release(got.lease_id, outcome)
                    times.append(t1 - t0)
                    select_cpu += c1 - c0
                    release_cpu += cpu() - c1
                nursery.cancel_scope.cancel()
            pings, c0 = [], cpu()
            for _ in range(n):
                t0 = clock()
                await store.lean.execute("PING")
                pings.append(clock() - t0)
            ping_cpu = (cpu() - c0) / n
        finally:
            await store.delete_prefix()
    times.sort()
    pings.sort()
    return [
        select_cpu / n * 1e6,
        release_cpu / n * 1e6,
        percentile(times, 50) * 1e6,
        percentile(times, 99) * 1e6,
        percentile(pings, 50) * 1e6,
        ping_cpu * 1e6,
    ]


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        _, _, tree, url, n = sys.argv
        import scheduler

        assert scheduler.__file__ is not None and scheduler.__file__.startswith(tree)
        print(" ".join(f"{x:.1f}" for x in trio.run(child, url, int(n))))
        return 0
    from bench._common import print_setup

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("trees", nargs="+", metavar="NAME=TREE")
    p.add_argument("--redis-url", default=os.environ.get("STATIONMASTER_TEST_REDIS_URL"))
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    url = args.redis_url or "redis://127.0.0.1:6379/0"
    trees = dict(t.split("=", 1) for t in args.trees)
    print_setup("select() + release per checkout, interleaved", ("trio", "hiredis"), {"redis": url})
    rows: dict[str, list[list[float]]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            root = str(Path(tree).resolve())
            out = subprocess.run(
                [sys.executable, __file__, "--child", root, url, str(args.n)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()
            rows[name].append([float(x) for x in out])
    print(f"\n{args.n} pairs x {args.rounds} rounds; median of rounds (best round in brackets):")
    print(f"  {'tree':<10}" + "".join(f"{c:>16}" for c in COLUMNS) + f"{'p50 / PING p50':>16}")
    for name, values in rows.items():
        med = [statistics.median(v[i] for v in values) for i in range(len(COLUMNS))]
        best = [min(v[i] for v in values) for i in range(len(COLUMNS))]
        cells = "".join(f"{m:>9.1f} ({b:>5.1f})" for m, b in zip(med, best, strict=True))
        print(f"  {name:<10}{cells}{med[2] / med[4]:>16.2f}")
    print(f"\nload avg at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
