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
import json  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import time  # noqa: E402

import trio  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402

from accounts.model import Account, Kind, Platform  # noqa: E402
from bench._common import (  # noqa: E402
    HEADER,
    HttpConnection,
    Result,
    closed_loop,
    daemon_process,
    open_loop,
    percentile,
    print_setup,
)
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


class Gateway:
    """Select + release pairs on one connection, timed from the due time of the select."""

    def __init__(self, token: str, *, release: bool = True) -> None:
        self.headers = {"Authorization": f"Bearer {token}"}
        self.body = json.dumps({"group": "bench", "platform": "openai", "model": "m"}).encode()
        self.release_body = b'{"status": 200, "latency_ms": 5}'
        self.release = release
        self.release_errors = 0

    async def exchange(self, conn: HttpConnection, result: Result, start: float) -> None:
        status, payload = await conn.request("POST", "/v1/select", self.body, self.headers)
        result.latencies_s.append(trio.current_time() - start)
        result.statuses[status] += 1
        if status == 200 and self.release:
            lease = _lease_id(payload)
            path = f"/v1/leases/{lease}/release"
            rel, _ = await conn.request("POST", path, self.release_body, self.headers)
            self.release_errors += rel != 200


def _lease_id(payload: bytes) -> str:
    start = payload.index(b'"lease_id":"') + len(b'"lease_id":"')
    return payload[start : payload.index(b'"', start)].decode()


async def create_accounts(url: str, tokens: dict[str, str]) -> None:
    host, port = url.split("//", 1)[1].rsplit(":", 1)
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
        # The builder publishes the bucket shortly after the writes: select until it answers.
        gw = Gateway(tokens["gateway"])
        with trio.fail_after(60):
            while True:
                status, answer = await conn.request("POST", "/v1/select", gw.body, gw.headers)
                if status == 200:
                    lease = _lease_id(answer)
                    await conn.request("POST", f"/v1/leases/{lease}/release", b"{}", gw.headers)
                    break
                await trio.sleep(0.2)
    finally:
        await conn.aclose()


async def over_http(url: str, tokens: dict[str, str], args: argparse.Namespace) -> list[Result]:
    """The HTTP runs, in an order where no run inherits another's held leases."""
    await create_accounts(url, tokens)
    gw = Gateway(tokens["gateway"])
    bound = {"count": args.count, "max_duration_s": args.seconds}
    await closed_loop(url, "warm-up", concurrency=8, count=WARMUP, max_duration_s=20,
                      exchange=gw.exchange)  # fmt: skip
    await closed_loop(url, "/livez", concurrency=8, count=WARMUP, max_duration_s=20)
    runs = [
        # The HTTP stack alone (no auth, no body, no Redis): the ceiling for this machine.
        await closed_loop(url, "/livez", concurrency=args.concurrency, **bound),
        await closed_loop(url, "", concurrency=args.concurrency, exchange=gw.exchange, **bound),
        await open_loop(url, "", rate=args.rate, exchange=gw.exchange, **bound),
    ]
    runs[0].label = f"/livez closed, {args.concurrency} conns"
    runs[1].label = f"select+release closed, {args.concurrency} conns"
    runs[2].label = f"select+release open, {args.rate:g} pairs/s"
    # Last: leases are left to expire (500 x 50 slots, far more than the run takes).
    only = Gateway(tokens["gateway"], release=False)
    count = min(args.count, 10_000)
    runs.append(await closed_loop(url, "", concurrency=args.concurrency, count=count,
                                  max_duration_s=args.seconds, exchange=only.exchange))  # fmt: skip
    runs[3].label = f"select only closed, {args.concurrency} conns"
    print(f"release answers other than 200: {gw.release_errors}")
    return runs


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--pg-dsn", default=os.environ.get("STATIONMASTER_TEST_PG_DSN"))
    p.add_argument("--redis-url", default=os.environ.get("STATIONMASTER_TEST_REDIS_URL"))
    p.add_argument("--n", type=int, default=5000, help="in-process select calls")
    p.add_argument("--pace", type=float, default=0.0, help="in-process selects/s (0: closed loop)")
    p.add_argument("--concurrency", type=int, default=32, help="closed-loop connections")
    p.add_argument("--count", type=int, default=20000, help="select+release pairs per run (max)")
    p.add_argument(
        "--rate", type=float, default=500.0, help="open-loop pairs/s (500 = 1,000 HTTP req/s)"
    )
    p.add_argument("--seconds", type=float, default=10.0, help="time bound per HTTP run")
    p.add_argument("--no-http", action="store_true", help="only the in-process part")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    redis_url = args.redis_url or "redis://127.0.0.1:6379/0"
    print_setup(
        "stationmaster selection (select() in process; /v1/select + release over HTTP)",
        packages=_PACKAGES,
        extra={
            "redis": redis_url,
            "bounds": f"HTTP runs <= {args.count} pairs, <= {args.seconds:g} s",
        },
    )
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
    with daemon_process(args.pg_dsn, redis_url, env=env) as (daemon, url):
        print(f"\ndaemon:   subprocess pid {daemon.proc.pid} (`stationmaster run`), {url}")
        print("load:     this process, bench/_common load generator (bare HTTP/1.1 keep-alive);")
        print("          a pair = POST /v1/select, then POST /v1/leases/{id}/release on the same")
        print("          connection; latency = the select's (open loop: from its due time)")
        runs = trio.run(over_http, url, tokens, args)
    print()
    print(HEADER)
    for result in runs:
        print(result.row())
        other = {k: n for k, n in result.statuses.items() if k != 200}
        if other:
            print(f"    non-200 answers: {other}")
    pairs = len(runs[1].latencies_s) / runs[1].elapsed_s
    only = len(runs[3].latencies_s) / runs[3].elapsed_s
    print(f"select+release closed loop: {pairs:.0f} pairs/s = {2 * pairs:.0f} HTTP req/s;"
          f" select only: {only:.0f} req/s   (target >= 1,500 req/s)")  # fmt: skip
    print(f"open loop: {args.rate:g} pairs/s = {2 * args.rate:g} HTTP req/s"
          "   (target p99 <= 10 ms at 1,000 req/s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
