"""Selection benchmark: in-process select() on a 500-account bucket, and /v1/select over HTTP.

Usage::

    python bench/selection.py [--pg-dsn DSN] [--redis-url URL] [--n 5000]
        [--pace 0] [--concurrency 32] [--count 20000] [--rate 1000] [--seconds 10] [--no-http]

Part 1 (Redis only): select + release in a loop in this process, select() timed
alone, with the daemon's view refresher actor running beside it (as in the
daemon); closed loop, or paced at ``--pace`` selects/s (latency from each
select's due time); Redis round trips per select counted twice (our own counter and INFO
commandstats deltas), next to a bare PING/EVALSHA round trip through the same
client (the floor one round trip sets on this machine).

Part 2 (with ``--pg-dsn``; both default to ``$STATIONMASTER_TEST_PG_DSN`` /
``$STATIONMASTER_TEST_REDIS_URL``): the daemon runs as a **subprocess**
(``stationmaster run`` on a fresh database and key prefix, via
``bench/_common.daemon_process``); 500 accounts are created through the admin
API; the load generator of ``bench/_common`` (bare HTTP/1.1 keep-alive on trio
sockets) runs in this process and does select + release pairs on each
connection: a closed loop (maximum rate) and an open loop paced at ``--rate``
selects/s (each followed by its release on the same connection; latency of the
select from its due time, so no coordinated omission). Each run is bounded in
count and time. Figures are printed, never judged.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, bench/ is sys.path[0]: put the repository root there instead,
# so `bench._common` and the project's packages import.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import trio  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402

from accounts.model import Account, Kind, Platform  # noqa: E402
from bench._common import (  # noqa: E402
    ROOT,
    DaemonProcess,
    HttpConnection,
    daemon_process,
    percentile,
    print_setup,
)
from bench._rawload import (  # noqa: E402
    HEADER,
    Conn,
    PairRun,
    Pairs,
    closed_loop_one,
    lease_of,
)
from bench._rawload import closed_loop as raw_closed  # noqa: E402
from bench._rawload import open_loop as raw_open  # noqa: E402
from scheduler.selection.reports import ReleaseOutcome, Reporter  # noqa: E402
from scheduler.selection.select import Selector, SelectRequest  # noqa: E402
from scheduler.selection.store import Acquired  # noqa: E402

try:  # absent before the refresher existed: lets this script measure older commits too
    from scheduler.selection.refresher import ViewRefresher
except ImportError:  # pragma: no cover
    ViewRefresher = None  # type: ignore[assignment,misc]
from snapshot.keys import Bucket  # noqa: E402
from snapshot.redis import RedisConfig, RedisStore, open_redis  # noqa: E402
from snapshot.schedule import set_snapshot  # noqa: E402
from snapshot.settings import Settings  # noqa: E402
from snapshot.view import ScheduleView  # noqa: E402

BUCKET = Bucket("bench", Platform.OPENAI)
ACCOUNTS = 500
# Enough calls to load the scripts, fill the view and open the connections.
WARMUP = 300
_PACKAGES = ("trio", "coredis", "msgspec", "hypercorn", "starlette")


def bench_accounts() -> list[Account]:
    return [
        Account(
            id=f"acc-{i:04d}",
            name=f"a{i}",
            platform=Platform.OPENAI,
            kind=Kind.APIKEY,
            groups=("bench",),
            priority=i % 10,
            concurrency=50,
        )
        for i in range(ACCOUNTS)
    ]


class _Source:
    def __init__(self, accounts: list[Account]) -> None:
        self.accounts = accounts

    async def bucket_accounts(self, bucket: Bucket) -> list[Account]:
        return self.accounts

    async def buckets(self) -> list[Bucket]:
        return [BUCKET]


async def server_calls(redis: RedisStore) -> int:
    """EVALSHA/EVAL/MGET/DEL calls the server has counted (INFO commandstats)."""
    stats = await redis.client.info("commandstats")
    names = ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_mget", "cmdstat_del")
    return sum(int(v["calls"]) for k, v in stats.items() if k in names and isinstance(v, dict))


def ms(values: list[float], q: float) -> str:
    return f"{percentile(sorted(values), q) * 1e3:.3f} ms"


async def round_trip_floor(sel: Selector, n: int) -> tuple[list[float], list[float]]:
    """A bare PING, and the acquire script alone (plus an untimed release), through the
    client the runtime store uses (the lean one)."""
    ping, script = [], []
    hot = getattr(sel.runtime, "hot", None)  # absent before the lean switch: coredis then
    for _ in range(n):
        t0 = time.perf_counter()
        await (hot.execute("PING") if hot is not None else sel.runtime.redis.client.ping())
        ping.append(time.perf_counter() - t0)
    for _ in range(n):
        t0 = time.perf_counter()
        got = await sel.runtime.acquire("openai", "bench", "acc-0001", concurrency=50, ttl_s=60)
        script.append(time.perf_counter() - t0)
        assert isinstance(got, Acquired)
        await sel.give_back(got.lease_id)
    return ping, script


async def timed_selects(
    sel: Selector, reporter: Reporter, req: SelectRequest, n: int, pace: float
) -> tuple[list[float], int]:
    """``n`` select + release pairs, select timed (from its due time when paced)."""
    times = []
    trips = 0
    start = trio.current_time()
    for i in range(n):
        if pace > 0:
            await trio.sleep_until(start + i / pace)
        # Paced: count from the due time, so a select started late pays for the delay.
        late = trio.current_time() - (start + i / pace) if pace > 0 else 0.0
        before = sel.runtime.round_trips
        t0 = time.perf_counter() - late
        got = await sel.select(req)
        times.append(time.perf_counter() - t0)
        trips += sel.runtime.round_trips - before
        await reporter.release(got.lease_id, ReleaseOutcome(status=200, latency_ms=5))
    return times, trips


async def in_process(redis_url: str, n: int, pace: float) -> None:
    prefix = f"bench:{secrets.token_hex(3)}:"
    async with open_redis(RedisConfig(url=redis_url, key_prefix=prefix)) as redis:
        accounts = bench_accounts()
        try:
            await set_snapshot(redis, BUCKET, accounts, grace_s=30)
            settings = Settings()
            sel = Selector(redis, ScheduleView(redis, _Source(accounts)), lambda: settings)
            reporter = Reporter(sel, lambda: settings)
            req = SelectRequest(group="bench", platform=Platform.OPENAI, model="m")
            async with trio.open_nursery() as nursery:
                if ViewRefresher is not None:
                    await nursery.start(ViewRefresher(sel).run)
                for _ in range(WARMUP):
                    await reporter.release(
                        (await sel.select(req)).lease_id, ReleaseOutcome(status=200)
                    )
                reads = sel.view.reads if hasattr(sel.view, "reads") else None
                before_server = await server_calls(redis)
                times, trips = await timed_selects(sel, reporter, req, n, pace)
                server = await server_calls(redis) - before_server
                reads = sel.view.reads - reads if reads is not None else None
                nursery.cancel_scope.cancel()
            ping, script = await round_trip_floor(sel, n)
        finally:
            await redis.delete_prefix()
    loop = f"paced at {pace:g} selects/s" if pace > 0 else "closed loop"
    refresher = (
        "view refresher actor running" if ViewRefresher else "no refresher (refresh in select)"
    )
    print(
        f"\nin-process select(), {ACCOUNTS}-account bucket, {n} calls, {loop}, {refresher}"
        " (select timed, release not):"
    )
    print(f"  select       p50 {ms(times, 50)}  p99 {ms(times, 99)}  (target p50 <= 0.2 ms)")
    print(f"               p99.9 {ms(times, 99.9)}  max {max(times) * 1e3:.3f} ms")
    print(f"  bare PING    p50 {ms(ping, 50)}  p99 {ms(ping, 99)}  (one round trip, same client)")
    print(
        f"  acquire.lua  p50 {ms(script, 50)}  p99 {ms(script, 99)}  (the script alone, no select)"
    )
    print(f"  runtime view batch reads during the timed run: {reads} (refresher and selects)")
    print(f"  Redis round trips per select: {trips / n:.3f} (client count, refresher's included)")
    print("  server-side")
    print(f"  EVALSHA/MGET/DEL calls per select+release: {server / n:.3f} (server-wide:")
    print("  includes any other client of this Redis, e.g. test suites running meanwhile)")


# --- over HTTP ------------------------------------------------------------------------

SELECT_BODY = {"group": "bench", "platform": "openai", "model": "m"}
_LIVEZ = b"GET /livez HTTP/1.1\r\nHost: bench\r\n\r\n"


def _cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def create_accounts(daemon: DaemonProcess, tokens: dict[str, str]) -> None:
    """500 accounts through the control plane; then select (data plane) until one answers."""
    assert daemon.url is not None and daemon.data_url is not None
    host, port = daemon.url.split("//", 1)[1].rsplit(":", 1)
    conn = await HttpConnection.open(host, int(port))
    headers = {"Authorization": f"Bearer {tokens['admin']}"}
    try:
        for i in range(ACCOUNTS):
            body = {
                "name": f"a{i}", "platform": "openai", "groups": ["bench"], "concurrency": 50,
                "priority": i % 10, "credentials": {"api_key": f"sk-bench-{i:06d}-xxxxxxxxxxxx"},
            }  # fmt: skip
            status, answer = await conn.request(
                "POST", "/v1/admin/accounts", json.dumps(body).encode(), headers
            )
            if status != 201:
                raise RuntimeError(f"account create: {status} {answer[:200]!r}")
    finally:
        await conn.aclose()
    pairs = _pairs(daemon, tokens)
    gw = await Conn.open(pairs.address)
    try:
        # The builder publishes the bucket shortly after the writes: select until it answers.
        with trio.fail_after(60):
            while True:
                answer = await gw.exchange(pairs.select)
                if answer[0] == 200:
                    break
                await trio.sleep(0.2)
            await gw.exchange(pairs.release(lease_of(answer[1])))
    finally:
        gw.close()


def _pairs(daemon: DaemonProcess, tokens: dict[str, str]) -> Pairs:
    assert daemon.data_url is not None
    host, port = daemon.data_url.split("//", 1)[1].rsplit(":", 1)
    return Pairs(host, int(port), tokens["gateway"], SELECT_BODY)


async def over_http(
    daemons: dict[str, DaemonProcess], tokens: dict[str, str], args: argparse.Namespace
) -> list[PairRun]:
    """Closed and open loop, every variant, rounds interleaved (A, B, A, B, ...)."""
    for daemon in daemons.values():
        await create_accounts(daemon, tokens)
        warm = PairRun("warm-up")
        await raw_closed(_pairs(daemon, tokens), warm, connections=8, seconds=2)
    for name, daemon in daemons.items():
        # What the daemon's own actors cost with no request (counted in srv µs/req too).
        cpu0 = _cpu_s(daemon.proc.pid)
        await trio.sleep(2)
        print(f"{name}: idle {(_cpu_s(daemon.proc.pid) - cpu0) / 2 * 1e3:.0f} ms CPU per s")
    runs = []
    for r in range(args.rounds):
        for kind in ("livez", "refused", "closed", "open"):
            for name, daemon in daemons.items():
                pairs = _pairs(daemon, tokens)
                if kind in ("livez", "refused"):
                    # The HTTP stack alone: a probe, and an authenticated POST with a body
                    # that the handler refuses (422, malformed lease id) without Redis.
                    req = _LIVEZ if kind == "livez" else pairs.release(b"not-a-lease")
                    run = PairRun(f"{name} {kind} {args.concurrency}c r{r + 1}")
                    work = closed_loop_one(
                        pairs.address, req, run, connections=args.concurrency,
                        seconds=args.seconds / 2,
                    )  # fmt: skip
                elif kind == "closed":
                    run = PairRun(f"{name} closed {args.concurrency}c r{r + 1}")
                    work = raw_closed(
                        _pairs(daemon, tokens), run,
                        connections=args.concurrency, seconds=args.seconds,
                    )  # fmt: skip
                else:
                    run = PairRun(f"{name} open {2 * args.rate:g}/s r{r + 1}")
                    work = raw_open(
                        _pairs(daemon, tokens), run, rate=args.rate,
                        connections=args.concurrency, seconds=args.seconds,
                    )  # fmt: skip
                cpu0 = _cpu_s(daemon.proc.pid)
                await work
                run.server_cpu_s = _cpu_s(daemon.proc.pid) - cpu0
                runs.append(run)
                print(run.row(), flush=True)
    return runs


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--pg-dsn", default=os.environ.get("STATIONMASTER_TEST_PG_DSN"))
    p.add_argument("--redis-url", default=os.environ.get("STATIONMASTER_TEST_REDIS_URL"))
    p.add_argument("--n", type=int, default=5000, help="in-process select calls")
    p.add_argument("--pace", type=float, default=0.0, help="in-process selects/s (0: closed loop)")
    p.add_argument("--concurrency", type=int, default=32, help="HTTP connections")
    p.add_argument(
        "--rate", type=float, default=1000.0, help="open-loop pairs/s (1000 = 2,000 HTTP req/s)"
    )
    p.add_argument("--seconds", type=float, default=5.0, help="length of each HTTP run")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per variant")
    p.add_argument("--before", type=Path, default=None, help="another checkout to compare")
    p.add_argument(
        "--tree", action="append", default=[], metavar="NAME=PATH",
        help="more checkouts to interleave (e.g. this branch merged with another)",
    )  # fmt: skip
    p.add_argument("--no-http", action="store_true", help="only the in-process part")
    p.add_argument("--no-in-process", action="store_true", help="only the HTTP part")
    return p.parse_args()


def _median_of(runs: list[PairRun], kind: str, name: str) -> tuple[float, float, float]:
    """Medians over the rounds: HTTP req/s, server and client CPU µs per HTTP request."""
    mine = [r for r in runs if r.label.startswith(f"{name} {kind} ")]
    return (
        statistics.median(r.requests / r.elapsed_s for r in mine),
        statistics.median(r.server_cpu_s / max(r.requests, 1) * 1e6 for r in mine),
        statistics.median(r.client_cpu_s / max(r.requests, 1) * 1e6 for r in mine),
    )


def _summary(runs: list[PairRun], rate: float) -> None:
    print("\nmedians over the rounds (HTTP req/s; CPU µs per HTTP request, server and client):")
    for name in dict.fromkeys(r.label.split()[0] for r in runs):
        for kind, what in (
            ("livez", "GET /livez (the HTTP stack alone)"),
            ("refused", "release of a malformed lease id, 422 (auth + body + handler, no Redis)"),
            ("closed", "select + release closed loop (target >= 4,000 req/s)"),
        ):
            rps, srv, cli = _median_of(runs, kind, name)
            print(f"  {name:<7} {rps:7.0f} req/s  srv {srv:6.1f} µs  cli {cli:5.1f} µs  {what}")
        opened = [r for r in runs if r.label.startswith(f"{name} open")]
        p99 = statistics.median(percentile(sorted(r.select_s), 99) * 1e3 for r in opened)
        pair99 = statistics.median(percentile(sorted(r.pair_s), 99) * 1e3 for r in opened)
        srv = statistics.median(r.server_cpu_s / max(r.requests, 1) * 1e6 for r in opened)
        print(
            f"  {name:<7} open loop {2 * rate:g} req/s: select p99 {p99:.2f} ms (target <= 5 ms),"
            f" pair p99 {pair99:.2f} ms, srv {srv:.1f} µs/req"
        )


def main() -> int:
    args = parse_args()
    redis_url = args.redis_url or "redis://127.0.0.1:6379/0"
    print_setup(
        "stationmaster selection (select() in process; /v1/select + release over HTTP)",
        packages=_PACKAGES,
        extra={"redis": redis_url, "bounds": f"HTTP runs of {args.seconds:g} s"},
    )
    if not args.no_in_process:
        trio.run(in_process, redis_url, args.n, args.pace)
    if args.no_http or not args.pg_dsn:
        return 0
    tokens = {"admin": "bench-admin-" + secrets.token_hex(12),
              "gateway": "bench-gateway-" + secrets.token_hex(12)}  # fmt: skip
    env = {
        "STATIONMASTER_AUTH_ADMIN_TOKENS": json.dumps([tokens["admin"]]),
        "STATIONMASTER_AUTH_GATEWAY_TOKENS": json.dumps([tokens["gateway"]]),
        "STATIONMASTER_CRYPTO_KEYS": json.dumps([Fernet.generate_key().decode()]),
    }
    trees = [("after", ROOT)]
    if args.before:
        trees.insert(0, ("before", args.before.resolve()))
    for spec in args.tree:
        name, _, path = spec.partition("=")
        trees.append((name, Path(path).resolve()))
    with contextlib.ExitStack() as stack:
        daemons = {}
        for name, tree in trees:
            data_plane = (tree / "scheduler/http/data_plane.py").exists()
            daemon, _ = stack.enter_context(
                daemon_process(args.pg_dsn, redis_url, env=env, tree=tree, data_plane=data_plane)
            )
            daemons[name] = daemon
            plane = "data plane (wire)" if data_plane else "one server (hypercorn + starlette)"
            print(f"{name + ':':<8} pid {daemon.proc.pid}, {tree}, gateway routes on {plane}")
            print(f"          {daemon.data_url}")
        print("load:    this process, bench/_rawload (raw keep-alive sockets, one request at a")
        print("         time per connection); a pair = POST /v1/select, then its release on the")
        print("         same connection; open loop latencies from each pair's due time")
        print(f"load avg before the HTTP runs: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print()
        print(HEADER)
        runs = trio.run(over_http, daemons, tokens, args)
    print(f"load avg after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    _summary(runs, args.rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
