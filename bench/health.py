"""Health endpoints benchmark: /livez and /readyz req/s and latency over loopback HTTP.

Usage::

    python bench/health.py [--pg-dsn DSN --redis-url URL] [--concurrency 32]
        [--count 5000] [--rate 500] [--seconds 10]

Starts the daemon as a subprocess (``stationmaster run`` on a fresh database of
``--pg-dsn``'s server and a per-run Redis key prefix; both default to
``$STATIONMASTER_TEST_PG_DSN`` / ``$STATIONMASTER_TEST_REDIS_URL``; with neither,
``stationmaster dev`` with its embedded servers). The load generator runs in
this process. For each endpoint, after a warm-up: a closed loop (``--concurrency``
keep-alive connections, back to back: the maximum rate) and an open loop at
``--rate`` req/s (latency at a fixed load, measured from each request's due
time). Every run stops after ``--count`` requests or ``--seconds``, whichever
comes first. Figures are printed, never judged.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this directory is sys.path[0]: put the repository root there
# instead, so `bench._common` and the project's packages import.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse  # noqa: E402
import os  # noqa: E402

import trio  # noqa: E402

from bench._common import (  # noqa: E402
    HEADER,
    Result,
    closed_loop,
    daemon_process,
    open_loop,
    print_setup,
)

ENDPOINTS = ("/livez", "/readyz")
# Enough requests to open the connections and settle the allocator before measuring.
WARMUP_REQUESTS = 300


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--pg-dsn", default=os.environ.get("STATIONMASTER_TEST_PG_DSN"))
    p.add_argument("--redis-url", default=os.environ.get("STATIONMASTER_TEST_REDIS_URL"))
    p.add_argument("--concurrency", type=int, default=32, help="closed-loop connections")
    p.add_argument("--count", type=int, default=5000, help="requests per run (upper bound)")
    p.add_argument("--rate", type=float, default=500.0, help="open-loop requests per second")
    p.add_argument("--seconds", type=float, default=10.0, help="time bound per run")
    return p.parse_args()


async def measure(url: str, args: argparse.Namespace) -> list[Result]:
    results = []
    for path in ENDPOINTS:
        await closed_loop(url, path, concurrency=8, count=WARMUP_REQUESTS, max_duration_s=10)
        results.append(
            await closed_loop(
                url,
                path,
                concurrency=args.concurrency,
                count=args.count,
                max_duration_s=args.seconds,
            )
        )
        results.append(
            await open_loop(
                url, path, rate=args.rate, count=args.count, max_duration_s=args.seconds
            )
        )
    return results


def main() -> int:
    args = parse_args()
    stores = bool(args.pg_dsn and args.redis_url)
    mode = (
        "`stationmaster run` on a fresh database + Redis key prefix"
        if stores
        else "`stationmaster dev` (embedded PostgreSQL + Redis)"
    )
    with daemon_process(args.pg_dsn, args.redis_url) as (daemon, url):
        print_setup(
            "stationmaster health endpoints (/livez, /readyz)",
            extra={
                "daemon": f"subprocess pid {daemon.proc.pid}: {mode}, {url}",
                "load": "this process: raw HTTP/1.1 keep-alive on trio sockets, loopback",
                "bounds": f"each run <= {args.count} requests and <= {args.seconds:g} s; "
                f"warm-up {WARMUP_REQUESTS} requests per endpoint",
            },
        )
        results = trio.run(measure, url, args)
    print()
    print(HEADER)
    for result in results:
        print(result.row())
        other = {k: n for k, n in result.statuses.items() if k != 200}
        if other:
            print(f"    non-200 answers: {other}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
