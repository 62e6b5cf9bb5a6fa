"""Benchmark: outbox webhook delivery, the claim query at scale, drain after an outage.

1. Deliveries/s: a backlog of ``--events`` (10,000) webhook events, one
   Dispatcher (in this process, as the daemon runs it) delivering to a local
   receiver in a separate process (a bare asyncio HTTP/1.1 keep-alive server
   that checks every signature with ``standardwebhooks``, so the receiver is not
   what is measured). Time from the dispatcher's start to the last outcome
   recorded (every event consumed in PostgreSQL). Target >= 1,000/s per instance.
2. Claim cost with 1,000,000 consumed rows in the table (+ 1,000 due): EXPLAIN
   (ANALYZE, BUFFERS) of the real claim statement (batch 100) inside a
   transaction that is rolled back, median of 5, plus the plan's index lines.
3. Drain after a 10-minute receiver outage: COMPUTED, not run (the default
   schedule's steps are minutes to hours). Events arrive at ``--rate``/s during
   the outage; each attempt inside the outage fails; an event's next attempt
   after the outage is found by walking the real ``retry_delay_s`` (default
   schedule, ±20 % jitter, seeded); deliveries after recovery are then limited
   by the throughput measured in part 1. Prints when the backlog is empty.

    python bench/outbox.py [--dsn postgresql://postgres@127.0.0.1:5432/postgres]
                           [--events 10000] [--rows 1000000] [--rate 50]
                           [--skip-claim] [--skip-deliveries [--throughput N]]
"""

# ruff: noqa: E402 - the path fix below must run before the project's imports.
from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import asyncio
import contextlib
import os
import random
import re
import statistics
import subprocess
import time
from collections.abc import Iterator

import trio

from accounts.db import Database, DatabaseConfig, open_database, open_loop
from accounts.migrate import migrate
from bench._common import bench_database, print_setup
from scheduler.core.config import OutboxConfig
from scheduler.outbox import Dispatcher, OutboxStore, Status, retry_delay_s
from scheduler.outbox import _queries as q

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105 - a throwaway test secret
OUTAGE_S = 600.0


# --- the receiver (a separate process) -------------------------------------------


def receiver_main(verify: bool) -> None:
    from standardwebhooks.webhooks import Webhook

    verifier = Webhook(SECRET)
    ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    bad = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 3\r\n\r\nbad"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = {}
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                good = True
                if verify:
                    try:
                        verifier.verify(body, headers, json_parse=False)
                    except Exception:
                        good = False
                writer.write(ok if good else bad)
                await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


@contextlib.contextmanager
def receiver_process(verify: bool = True) -> Iterator[str]:
    args = [sys.executable, __file__, "--receiver", *(["--verify"] if verify else [])]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        proc.terminate()
        proc.wait(10)


# --- 1. deliveries/s ---------------------------------------------------------------


async def insert(db: Database, n: int, url: str, status: str = "pending") -> None:
    await db.execute(
        """INSERT INTO outbox (event_key, type, payload, destination, status, consumed_at)
           SELECT 'e' || g || '-' || $4, 'task.succeeded',
                  jsonb_build_object('id', g, 'owner', 'user-1', 'status', 'succeeded',
                                     'result_urls', jsonb_build_array('https://cdn/x.mp4'),
                                     'cost', 1200),
                  $2, $3, CASE WHEN $3 = 'consumed' THEN now() END
             FROM generate_series(1, $1) AS g""",
        n,
        url,
        status,
        f"{time.monotonic_ns()}",
    )


async def deliveries(db: Database, url: str, events: int, cfg: OutboxConfig) -> tuple[float, float]:
    """(deliveries/s, this process's CPU ms per delivery)."""
    await db.execute("TRUNCATE outbox")
    await insert(db, events, url)
    done = trio.Event()
    consumed = 0

    def observe(batch, recorded) -> None:  # type: ignore[no-untyped-def]
        nonlocal consumed
        consumed += sum(1 for o in batch if o.claim.id in recorded and o.status is Status.CONSUMED)
        if consumed >= events:
            done.set()

    dispatcher = Dispatcher(OutboxStore(db), cfg, owner="bench", listen=db.listen, observer=observe)
    start, cpu = time.perf_counter(), time.process_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(dispatcher.run)
        with trio.fail_after(600):
            await done.wait()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        nursery.cancel_scope.cancel()
    left = await db.fetchval("SELECT count(*) FROM outbox WHERE status <> 'consumed'")
    assert left == 0, left
    return events / elapsed, 1000 * cpu / events


# --- 2. claim cost at 1M consumed rows --------------------------------------------------


async def claim_cost(db: Database, rows: int, url: str) -> None:
    await db.execute("TRUNCATE outbox")
    chunk = 100_000
    for _ in range(0, rows, chunk):
        await insert(db, min(chunk, rows), url, "consumed")
    await insert(db, 1000, url)
    await db.execute("VACUUM ANALYZE outbox")
    times: list[float] = []
    plan: list[str] = []
    sql = "EXPLAIN (ANALYZE, BUFFERS) " + q.CLAIM
    for _ in range(5):
        async with db.acquire() as conn:
            with contextlib.suppress(_Rollback):
                async with conn.transaction():
                    plan = [r[0] for r in await conn.fetch(sql, 100, "bench", 60.0, [])]
                    raise _Rollback
        times.append(float(re.search(r"Execution Time: ([\d.]+)", "\n".join(plan)).group(1)))  # type: ignore[union-attr]
    size = await db.fetchval("SELECT pg_size_pretty(pg_total_relation_size('outbox'))")
    print(f"claim (batch 100, {rows:,} consumed + 1,000 due rows, table+indexes {size}):")
    print(
        f"  execution time median {statistics.median(times):.3f} ms (5 runs: "
        + ", ".join(f"{t:.3f}" for t in times)
        + ")"
    )
    print("  plan of the median-or-last run:")
    for line in plan:
        print("  | " + line)


class _Rollback(Exception):
    pass


# --- 3. drain after an outage ------------------------------------------------------


def drain(rate: float, throughput: float, schedule: list[float], seed: int = 1) -> None:
    rng = random.Random(seed)
    due: list[float] = []
    for i in range(int(rate * OUTAGE_S)):
        t = i / rate
        attempts = 1  # the first, at arrival, fails
        while t < OUTAGE_S:
            t += retry_delay_s(attempts, schedule, jitter=0.2, rand=rng.random())
            attempts += 1
        due.append(t)
    due.sort()
    finished = 0.0
    for t in due:  # one at a time at the measured rate, never before it is due
        finished = max(finished, t) + 1.0 / throughput
    after = finished - OUTAGE_S
    backlog = len(due)
    soon = sum(1 for t in due if t <= OUTAGE_S + 300)
    print(
        f"drain after a {OUTAGE_S / 60:.0f}-minute outage at {rate:g} events/s "
        f"({backlog:,} events, computed): backlog empty {after:,.0f} s "
        f"({after / 60:.1f} min) after recovery; {soon:,} due within 5 min of it, the rest wait"
        f" for their 3rd retry (30 min step); at {throughput:,.0f}/s the deliveries"
        f" themselves take {backlog / throughput:.1f} s"
    )


# --- main ---------------------------------------------------------------------------


async def main(args: argparse.Namespace, dsn: str) -> None:
    async with (
        open_loop(),
        open_database(DatabaseConfig(dsn=dsn, pool_max=10, statement_timeout_s=900)) as db,
    ):
        await migrate(db)
        with receiver_process() as url:
            rates = []
            for conc in (64, 128, 64, 128) if not args.skip_deliveries else ():
                cfg = OutboxConfig(
                    webhook_secret=SECRET, concurrency=conc, per_destination=conc, batch_size=100
                )
                rate, cpu_ms = await deliveries(db, url, args.events, cfg)
                rates.append(rate)
                print(
                    f"deliveries: {args.events:,} events, concurrency {conc}: {rate:,.0f}/s;"
                    f" dispatcher CPU {cpu_ms:.3f} ms/delivery (= {1000 / cpu_ms:,.0f}/s"
                    " per fully available core)"
                )
            if not args.skip_claim:
                await claim_cost(db, args.rows, url)
    drain(args.rate, max(rates or [args.throughput]), OutboxConfig().backoff_s)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--dsn",
        default=os.environ.get(
            "STATIONMASTER_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--skip-claim", action="store_true")
    parser.add_argument("--skip-deliveries", action="store_true")
    parser.add_argument(
        "--throughput", type=float, default=1000.0, help="for the drain, with --skip-deliveries"
    )
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--verify", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        receiver_main(args.verify)
    else:
        print_setup(
            "outbox: webhook deliveries, claim cost, drain after an outage",
            packages=("trio", "httpx", "asyncpg", "standardwebhooks"),
        )
        with bench_database(args.dsn) as dsn:
            trio.run(main, args, dsn)
