"""Lean hot path vs today's stack: Redis client and HTTP server, interleaved in one run.

Usage::

    python bench/lean.py [--redis-url URL] [--n 3000] [--rounds 3] [--http-seconds 4]
        [--concurrency 32] [--no-http] [--no-select]

Part 1, Redis (this process, one caller in a loop): a bare PING and one EVALSHA of
``scheduler/selection/acquire.lua`` (real keys, always granted), through coredis
(``snapshot.redis``, as the daemon uses it today) and through the lean client
(``snapshot.lean_redis``; "lean task" is the same client with ``inline_reads=False``:
its reader task reads every reply, as before the inline read), the variants
interleaved round by round. Printed:
process CPU µs per call and the p50 round trip. Then the same script from 32
concurrent tasks (the lean client pipelines them on its connections).

Part 2, in-process ``select()`` on a 500-account bucket, each followed by a release,
interleaved round by round: before (the runtime store's commands through coredis, as
until the switch: a bench-only stand-in put where ``RedisStore.lean`` goes) and after
(the daemon's own path, the lean client), and the lean client with its reader task
reading every reply ("lean, reader task"). Each selector has its view refresher
running, as in the daemon. Printed: CPU µs per select and per release (process time
inside each call's window), select p50/p99, and the ratio select p50 / bare lean
PING p50, PINGs measured in the same rounds.

Part 3, HTTP: a trivial JSON POST route (decode ``{"n": 1}``, answer
``{"ok": true, "n": 1}``) served by hypercorn (trio) + starlette and by the lean
server (``scheduler.http.wire``), each in its own subprocess started by this
script; the bench/_common load generator (bare HTTP/1.1 keep-alive) runs here,
closed loop on ``--concurrency`` connections, rounds interleaved. Printed: req/s,
p50/p99 and the server process's CPU µs per request (from /proc/<pid>/stat).

Figures are printed, never judged; the machine's load is printed with them.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections.abc import Awaitable, Callable, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import msgspec  # noqa: E402
import trio  # noqa: E402

from bench._common import HttpConnection, Result, closed_loop, percentile, print_setup  # noqa: E402
from snapshot.lean_redis import open_lean_redis  # noqa: E402
from snapshot.redis import RedisConfig, RedisStore, open_redis, translated  # noqa: E402

_PACKAGES = ("trio", "coredis", "hiredis", "httptools", "hypercorn", "starlette", "msgspec")
ACQUIRE_LUA = Path(__file__).resolve().parent.parent / "scheduler/selection/acquire.lua"
Call = Callable[[], Awaitable[Any]]


def us(seconds: float) -> str:
    return f"{seconds * 1e6:7.1f}"


async def measure(call: Call, n: int) -> tuple[float, float]:
    """(CPU seconds per call, p50 seconds) over ``n`` sequential calls."""
    times = []
    cpu0 = time.process_time()
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        times.append(time.perf_counter() - t0)
    return (time.process_time() - cpu0) / n, percentile(sorted(times), 50)


async def measure_concurrent(call: Call, n: int, tasks: int) -> tuple[float, float]:
    """(CPU seconds per call, calls/s) with ``tasks`` callers sharing ``n`` calls."""
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    cpu0, t0 = time.process_time(), time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(worker)
    return (time.process_time() - cpu0) / n, n / (time.perf_counter() - t0)


# --- part 1: Redis clients -------------------------------------------------------------


async def redis_clients(url: str, n: int, rounds: int) -> None:
    prefix = f"benchlean:{secrets.token_hex(3)}:"
    config = RedisConfig(url=url, key_prefix=prefix)
    async with (
        open_redis(config) as store,
        open_lean_redis(config) as lean,
        open_lean_redis(config, inline_reads=False) as lean_task,
    ):
        tag = "{rt.openai}"
        keys = [f"{prefix}rt:{tag}:lease:a", f"{prefix}rt:{tag}:state:a", f"{prefix}rt:{tag}:s:-"]
        coredis_script = store.script(ACQUIRE_LUA)
        lean_script = lean.script(ACQUIRE_LUA)
        task_script = lean_task.script(ACQUIRE_LUA)
        counter = iter(range(10**9))

        def args() -> list[Any]:
            return [f"openai~g~a~{next(counter)}", 10**9, 60_000, "a", "0", 1]

        variants: dict[str, Call] = {
            "PING      coredis": lambda: store.client.ping(),
            "PING      lean task": lambda: lean_task.execute("PING"),
            "PING      lean": lambda: lean.execute("PING"),
            "acquire   coredis": lambda: coredis_script(keys=keys, args=args()),
            "acquire   lean task": lambda: lean_task.evalsha(task_script, keys, args()),
            "acquire   lean": lambda: lean.evalsha(lean_script, keys, args()),
        }
        try:
            for call in variants.values():  # warm: connections, script cache
                for _ in range(200):
                    await call()
            rows: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
            for _ in range(rounds):
                for name, call in variants.items():
                    rows[name].append(await measure(call, n))
                    # Keep the lease set small: acquire.lua prunes only expired leases.
                    await store.client.delete([keys[0]])
            print(
                f"\nRedis, one caller, {n} calls x {rounds} interleaved rounds (median of rounds):"
            )
            print(f"  {'variant':<20} {'CPU us/call':>12} {'p50 us':>8}   per round (CPU us)")
            for name, values in rows.items():
                cpu = statistics.median(v[0] for v in values)
                p50 = statistics.median(v[1] for v in values)
                each = " ".join(us(v[0]).strip() for v in values)
                print(f"  {name:<20} {us(cpu):>12} {us(p50):>8}   {each}")
            print("\n  acquire.lua from 32 concurrent tasks:")
            for name in ("acquire   coredis", "acquire   lean task", "acquire   lean"):
                cpu, rate = await measure_concurrent(variants[name], n * 2, 32)
                await store.client.delete([keys[0]])
                print(f"  {name:<20} {us(cpu):>12} CPU us/call   {rate:8.0f} calls/s")
            print(f"  lean connections opened: {lean.connects}")
        finally:
            await store.delete_prefix()


# --- part 2: select() before (coredis) and after (lean) -----------------------------------


class _CoredisHot:
    """Before: the runtime store's commands through coredis, as the daemon sent them until
    the switch. Stands where ``RedisStore.lean`` stands (the store's only Redis seam)."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store

    def script(self, path: Path) -> Any:
        return self._store.script(path)

    async def evalsha(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        with translated():
            return await script(keys=keys, args=args)

    async def execute(self, *args: Any) -> Any:
        client = self._store.client
        with translated():
            if args[0] == "MGET":
                return await client.mget(args[1:])
            if args[0] == "HSET":
                flat = args[2:]
                return await client.hset(args[1], dict(zip(flat[::2], flat[1::2], strict=True)))
        raise NotImplementedError(args[0])


async def _timed_pairs(
    sel: Any, reporter: Any, req: Any, n: int
) -> tuple[float, float, list[float]]:
    """``n`` select + release pairs: (CPU s per select, CPU s per release, select latencies).

    CPU is process time inside each call's window: whatever else the process runs
    meanwhile (the view refresher, the client's reader tasks) counts where it lands.
    """
    from scheduler.selection.reports import ReleaseOutcome

    outcome = ReleaseOutcome(status=200, latency_ms=5)
    times = []
    select_cpu = release_cpu = 0.0
    clock, cpu = time.perf_counter, time.process_time
    for _ in range(n):
        c0, t0 = cpu(), clock()
        got = await sel.select(req)
        t1, c1 = clock(), cpu()
        await reporter.release(got.lease_id, outcome)
        c2 = cpu()
        times.append(t1 - t0)
        select_cpu += c1 - c0
        release_cpu += c2 - c1
    return select_cpu / n, release_cpu / n, sorted(times)


async def selects(url: str, n: int, rounds: int) -> None:
    from bench.selection import BUCKET, WARMUP, _Source, bench_accounts
    from scheduler.selection.refresher import ViewRefresher
    from scheduler.selection.reports import ReleaseOutcome, Reporter
    from scheduler.selection.select import Selector, SelectRequest
    from snapshot.schedule import set_snapshot
    from snapshot.settings import Settings
    from snapshot.view import ScheduleView

    prefix = f"benchlean:{secrets.token_hex(3)}:"
    config = RedisConfig(url=url, key_prefix=prefix)
    async with (
        open_redis(config) as store,
        open_lean_redis(config, inline_reads=False) as lean_task,
    ):
        accounts = bench_accounts()
        settings = Settings()
        await set_snapshot(store, BUCKET, accounts, grace_s=30)
        req = SelectRequest(group="bench", platform=BUCKET.platform, model="m")
        before = RedisStore(store.client, store.config, _CoredisHot(store))  # type: ignore[arg-type]
        sels = {}
        task_reads = RedisStore(store.client, store.config, lean_task)
        variants = (
            ("coredis (before)", before),
            ("lean, reader task", task_reads),
            ("lean (after)", store),
        )
        for name, redis in variants:
            sel = Selector(redis, ScheduleView(store, _Source(accounts)), lambda: settings)
            sels[name] = (sel, Reporter(sel, lambda: settings))
        pings: dict[str, Call] = {
            "PING coredis": lambda: store.client.ping(),
            "PING lean": lambda: store.lean.execute("PING"),
        }
        rows: dict[str, list[tuple[float, float, float, float]]] = {k: [] for k in sels}
        ping_rows: dict[str, list[float]] = {k: [] for k in pings}
        try:
            for sel, reporter in sels.values():
                for _ in range(WARMUP):
                    await reporter.release(
                        (await sel.select(req)).lease_id, ReleaseOutcome(status=200)
                    )
            for _ in range(rounds):
                for name, (sel, reporter) in sels.items():
                    # Each selector's refresher runs during its own rounds only, so its
                    # reads never land in the other variant's figures.
                    async with trio.open_nursery() as nursery:
                        await nursery.start(ViewRefresher(sel).run)
                        select_cpu, release_cpu, times = await _timed_pairs(sel, reporter, req, n)
                        nursery.cancel_scope.cancel()
                    rows[name].append(
                        (select_cpu, release_cpu, percentile(times, 50), percentile(times, 99))
                    )
                for name, call in pings.items():
                    ping_rows[name].append((await measure(call, n))[1])
        finally:
            await store.delete_prefix()
    ping = {k: statistics.median(v) for k, v in ping_rows.items()}
    print(
        f"\nin-process select() + release, {len(accounts)}-account bucket, {n} pairs x {rounds}"
        " interleaved rounds, the selector's view refresher running (median of rounds):"
    )
    print(
        f"  {'runtime store via':<18} {'CPU us/select':>14} {'CPU us/release':>15}"
        f" {'select p50 us':>14} {'p99 us':>8} {'p50 / lean PING p50':>20}"
    )
    for name, values in rows.items():
        sc, rc, p50, p99 = (statistics.median(v[i] for v in values) for i in range(4))
        print(
            f"  {name:<18} {us(sc):>14} {us(rc):>15} {us(p50):>14} {us(p99):>8}"
            f" {p50 / ping['PING lean']:>20.2f}"
        )
        each = " ".join(f"{v[0] * 1e6:.0f}/{v[2] * 1e6:.0f}" for v in values)
        print(f"  {'':<18} per round (CPU us/select / p50 us): {each}")
    print(
        f"  bare PING p50, same run: lean {us(ping['PING lean']).strip()} us,"
        f" coredis {us(ping['PING coredis']).strip()} us"
        " (targets: CPU/select <= 120 us, p50 <= 200 us, ratio <= 2)"
    )


# --- part 3: HTTP servers ---------------------------------------------------------------------


class _Echo(msgspec.Struct):
    n: int


_DECODE = msgspec.json.Decoder(_Echo)


def serve(kind: str) -> None:
    """Subprocess entry: serve the trivial route on a free port; print it; run until killed."""
    from scheduler.core.config import HttpConfig

    async def main() -> None:
        if kind == "wire":
            from scheduler.http.wire import Request, Response, WireServer

            async def handle(request: Request) -> Response:
                body = _DECODE.decode(request.body)
                return Response(200, msgspec.json.encode({"ok": True, "n": body.n}))

            server: Any = WireServer(handle, host="127.0.0.1", port=0)
        else:
            from starlette.applications import Starlette
            from starlette.requests import Request as StarletteRequest
            from starlette.responses import Response as StarletteResponse
            from starlette.routing import Route

            from scheduler.http.server import HttpServer

            async def echo(request: StarletteRequest) -> StarletteResponse:
                body = _DECODE.decode(await request.body())
                payload = msgspec.json.encode({"ok": True, "n": body.n})
                return StarletteResponse(payload, media_type="application/json")

            app = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
            server = HttpServer(app, HttpConfig(host="127.0.0.1", port=0))
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(server.run)
            print("URL", urls[0], flush=True)

    trio.run(main)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _post_echo(conn: HttpConnection, result: Result, start: float) -> None:
    status, _ = await conn.request("POST", "/echo", b'{"n": 1}')
    result.latencies_s.append(trio.current_time() - start)
    result.statuses[status] += 1


def http_servers(rounds: int, seconds: float, concurrency: int) -> None:
    procs = {}
    env = {**os.environ, "STATIONMASTER_LOG_FORMAT": "json"}
    for kind in ("hypercorn", "wire"):
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(b"URL "):
                procs[kind] = (proc, line.split()[1].decode())
                break
    labels = {"hypercorn": "hypercorn + starlette", "wire": "lean (trio + httptools)"}
    rows: dict[str, list[tuple[float, float, float, float]]] = {k: [] for k in procs}
    try:
        for _proc, url in procs.values():  # warm up
            trio.run(
                lambda u=url: closed_loop(
                    u, "/echo", concurrency=8, count=500, max_duration_s=10, exchange=_post_echo
                )
            )
        for _ in range(rounds):
            for kind, (proc, url) in procs.items():
                cpu0 = _cpu_s(proc.pid)
                result = trio.run(
                    lambda u=url: closed_loop(u, "/echo", concurrency=concurrency, count=10**6,
                                              max_duration_s=seconds, exchange=_post_echo)
                )  # fmt: skip
                cpu = _cpu_s(proc.pid) - cpu0
                lat = sorted(result.latencies_s)
                done = len(lat)
                rows[kind].append(
                    (done / result.elapsed_s, cpu / max(done, 1), percentile(lat, 50),
                     percentile(lat, 99))
                )  # fmt: skip
                if result.errors:
                    print(f"  {kind}: non-200 answers {dict(result.statuses)}")
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            proc.wait(10)
    print(
        f"\nHTTP, trivial JSON POST route, closed loop, {concurrency} keep-alive connections,"
        f" {seconds:g} s x {rounds} interleaved rounds (median of rounds; server in its own"
        " process, load generator in this one):"
    )
    print(f"  {'server':<26} {'req/s':>8} {'server CPU us/req':>18} {'p50 ms':>8} {'p99 ms':>8}")
    for kind, values in rows.items():
        rate, cpu, p50, p99 = (statistics.median(v[i] for v in values) for i in range(4))
        per_round = " ".join(f"{v[0]:.0f}" for v in values)
        print(
            f"  {labels[kind]:<26} {rate:8.0f} {us(cpu):>18} {p50 * 1e3:8.2f} {p99 * 1e3:8.2f}"
            f"   req/s per round: {per_round}"
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--redis-url", default=os.environ.get("STATIONMASTER_TEST_REDIS_URL"))
    p.add_argument("--n", type=int, default=3000, help="sequential calls per variant and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--http-seconds", type=float, default=4.0, help="per HTTP run")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--no-http", action="store_true")
    p.add_argument("--no-select", action="store_true")
    p.add_argument("--serve", choices=["wire", "hypercorn"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    url = args.redis_url or "redis://127.0.0.1:6379/0"
    print_setup("lean hot path: Redis client and HTTP server", _PACKAGES, {"redis": url})
    trio.run(redis_clients, url, args.n, args.rounds)
    if not args.no_select:
        trio.run(selects, url, args.n, args.rounds)
    if not args.no_http:
        http_servers(args.rounds, args.http_seconds, args.concurrency)
    print(f"\nload avg at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
