"""Task polling benchmark: 10,000 tasks in flight against the simulator, one daemon.

Usage::

    python bench/tasks.py [--pg-dsn DSN] [--redis-url URL] [--tasks 10000]
        [--accounts 100] [--window 30] [--base-interval 2] [--first-done 90]

Both stores default to ``$STATIONMASTER_TEST_PG_DSN`` / ``$STATIONMASTER_TEST_REDIS_URL``.
The daemon (``stationmaster run``) and the upstream simulator each run as a
subprocess; this process only sets up and measures.

Setup: DashScope accounts are created through the admin API. The tasks are
submitted to the simulator **directly** (its DashScope API, ``--waves`` waves
with fixed durations of an hour plus ``step`` per wave, so every task's upstream
completion time is known; after the steady window the simulator's clock is moved
on so that the first wave ends ``--first-done`` seconds later and the others
follow, ``step`` apart) and recorded in PostgreSQL in bulk as RUNNING rows with
their holds (the simulator runs them from the submit on): this benchmark measures
polling, not the submit path. Then the daemon claims them all.

Figures:

* polls/s of the instance over a steady window in which no task changes (all
  running upstream), from the daemon's ``stationmaster_task_polls_total``;
* PostgreSQL row writes per unchanged poll over that window: every row inserted,
  updated or deleted in any table of the daemon's database, counted exactly by a
  per-row trigger that bumps a sequence (created by this benchmark; a sequence is
  not a table write itself), divided by the unchanged polls;
* RSS of the daemon with every task held;
* lag from upstream completion (submit time + fixed duration) to the terminal
  state in PostgreSQL (``finished_at``), p50/p99/max, over every task.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, bench/ is sys.path[0]: put the repository root there instead.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import secrets  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
import trio  # noqa: E402

from accounts.crypto import generate_key  # noqa: E402
from accounts.db import Database, DatabaseConfig, open_database, open_loop  # noqa: E402
from bench._common import DaemonProcess, bench_database, percentile, print_setup  # noqa: E402
from scheduler.tasks import uuid7  # noqa: E402

MODEL = "wan2.1-t2v-turbo"
SUBMIT_PATH = "/api/v1/services/aigc/video-generation/video-synthesis"
HOLD = 5 * 36_000  # 5 s of wan2.1-t2v-turbo
TABLES = ("tasks", "ledger", "credit_balances", "task_leases", "outbox", "instances")
COUNT_WRITES = """
CREATE SEQUENCE IF NOT EXISTS bench_row_writes;
CREATE OR REPLACE FUNCTION bench_count_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM nextval('bench_row_writes');
    RETURN NULL;
END $$;
"""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pg-dsn", default=os.environ.get("STATIONMASTER_TEST_PG_DSN"))
    p.add_argument("--redis-url", default=os.environ.get("STATIONMASTER_TEST_REDIS_URL"))
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--accounts", type=int, default=100)
    p.add_argument("--waves", type=int, default=50)
    p.add_argument(
        "--first-done",
        type=float,
        default=10.0,
        help="the first wave completes this long after the steady window (s)",
    )
    p.add_argument("--step", type=float, default=1.0, help="duration step between waves (s)")
    p.add_argument("--window", type=float, default=30.0, help="steady window (s)")
    p.add_argument(
        "--base-interval",
        type=float,
        default=10.0,
        help="poll base interval (s); 10 = DashScope's recommended interval",
    )
    p.add_argument("--max-interval", type=float, default=10.0, help="poll max interval (s)")
    p.add_argument("--concurrency", type=int, default=512, help="polls in flight")
    return p.parse_args()


# --- the simulator -----------------------------------------------------------------


class Simulator:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scheduler.upstream.simulator", "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "serving on " not in line:
            raise RuntimeError(f"simulator did not start: {line!r}")
        self.url = line.rsplit("serving on ", 1)[1].strip()

    def knobs(self, **values: Any) -> None:
        httpx.patch(f"{self.url}/_sim/knobs", json=values, trust_env=False).raise_for_status()

    def advance(self, seconds: float) -> None:
        httpx.post(
            f"{self.url}/_sim/clock/advance", json={"seconds": seconds}, trust_env=False
        ).raise_for_status()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def ceiling(sim: Simulator, key: str, seconds: float = 5.0) -> float:
    """Fetches/s one httpx client in this process gets from the simulator: the floor of cost."""
    async with httpx.AsyncClient(
        base_url=sim.url, trust_env=False, limits=httpx.Limits(max_connections=64), timeout=30
    ) as client:
        r = await client.post(
            SUBMIT_PATH,
            json={"model": MODEL, "input": {"prompt": "bench"}, "parameters": {}},
            headers={"authorization": f"Bearer {key}", "x-dashscope-async": "enable"},
        )
        path = f"/api/v1/tasks/{r.json()['output']['task_id']}"
        count = 0
        end = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal count
            while time.monotonic() < end:
                await client.get(path, headers={"authorization": f"Bearer {key}"})
                count += 1

        async with trio.open_nursery() as nursery:
            for _ in range(64):
                nursery.start_soon(worker)
    return count / seconds


async def submit_upstream(
    sim: Simulator, keys: list[str], n: int, waves: int, first: float, step: float
) -> list[tuple[str, str, int, float]]:
    """(task id, upstream id, account index, completion time) per task, in waves."""
    out: list[tuple[str, str, int, float]] = []
    limit = trio.Semaphore(64)
    async with httpx.AsyncClient(base_url=sim.url, trust_env=False, timeout=30) as client:
        for wave in range(waves):
            duration = first + wave * step
            sim.knobs(
                duration_min_s=duration,
                duration_max_s=duration,
                duration_dist="fixed",
                pending_fraction=0.0,
            )
            count = n // waves + (1 if wave < n % waves else 0)

            async def one(i: int, duration: float = duration) -> None:
                async with limit:
                    task_id = str(uuid7())
                    k = i % len(keys)
                    t0 = time.time()
                    r = await client.post(
                        SUBMIT_PATH,
                        json={"model": MODEL, "input": {"prompt": "bench"}, "parameters": {}},
                        headers={
                            "authorization": f"Bearer {keys[k]}",
                            "x-dashscope-async": "enable",
                            "x-client-request-id": task_id,
                        },
                    )
                    r.raise_for_status()
                    t1 = time.time()
                    upstream_id = r.json()["output"]["task_id"]
                    out.append((task_id, upstream_id, k, (t0 + t1) / 2 + duration))

            async with trio.open_nursery() as nursery:
                for i in range(count):
                    nursery.start_soon(one, len(out) + i)
    return out


# --- the database ------------------------------------------------------------------


async def record(
    db: Database, tasks: list[tuple[str, str, int, float]], account_ids: list[str]
) -> None:
    """PENDING rows with their holds, due at once; one top-up per owner."""
    owners = [f"owner{i % 50}" for i in range(len(tasks))]
    for owner in sorted(set(owners)):
        await db.execute(
            "INSERT INTO ledger (owner, kind, amount, topup_key) VALUES ($1, 'topup', $2, $1)",
            owner,
            10**12,
        )
    billing = {"price": 1, "ratio_permille": 1000, "hold": HOLD}
    await db.execute(
        """WITH t AS (
               INSERT INTO tasks (id, owner, account_group, account_id, platform, kind, model,
                   params, status, upstream_id, billing, cost_held, deadline, next_poll_at,
                   submitted_at)
               SELECT u.id, u.owner, 'default', u.account_id, 'dashscope', 'video', $5,
                   '{"prompt": "bench"}', 'running', u.upstream_id, $6::jsonb, $7,
                   now() + interval '1 hour', now(), now()
               FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[])
                   AS u (id, owner, account_id, upstream_id)
               RETURNING id, owner, cost_held)
           INSERT INTO ledger (owner, kind, amount, task_id)
           SELECT owner, 'hold', -cost_held, id FROM t""",
        [t[0] for t in tasks],
        owners,
        [account_ids[t[2]] for t in tasks],
        [t[1] for t in tasks],
        MODEL,
        billing,
        HOLD,
    )


async def install_write_counter(db: Database) -> None:
    await db.execute(COUNT_WRITES)
    for table in TABLES:
        await db.execute(
            f"CREATE TRIGGER bench_count_write AFTER INSERT OR UPDATE OR DELETE ON {table}"
            " FOR EACH ROW EXECUTE FUNCTION bench_count_write()"
        )


async def row_writes(db: Database) -> int:
    return int(await db.fetchval("SELECT last_value FROM bench_row_writes"))


# --- the daemon -----------------------------------------------------------------------


def metric_sum(text: str, name: str, label: str | None = None) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        if label is not None and label not in line:
            continue
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+([0-9.eE+-]+)$", line)
        if m:
            total += float(m.group(2))
    return total


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def create_accounts(
    url: str, admin: str, sim_url: str, n: int
) -> tuple[list[str], list[str]]:
    keys, ids = [], []
    async with httpx.AsyncClient(
        base_url=url, headers={"authorization": f"Bearer {admin}"}, trust_env=False, timeout=30
    ) as client:
        for i in range(n):
            key = f"sk-bench-{i:04d}"
            r = await client.post(
                "/v1/admin/accounts",
                json={
                    "name": f"bench{i}", "platform": "dashscope", "groups": ["default"],
                    "concurrency": 1000, "base_url": sim_url, "credentials": {"api_key": key},
                },
            )  # fmt: skip
            r.raise_for_status()
            keys.append(key)
            ids.append(r.json()["id"])
    return keys, ids


async def metrics(url: str) -> str:
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
        return (await client.get(f"{url}/metrics")).text


def daemon_env(args: argparse.Namespace, dsn: str, admin: str) -> dict[str, str]:
    tasks = {
        "honour_platform_interval": "false",
        "poll_base_interval_s": str(args.base_interval),
        "poll_max_interval_s": str(args.max_interval),
        "poll_concurrency": str(args.concurrency),
        "per_account_concurrency": "64",
        "claim_batch": "1000",
        "claim_interval_s": "0.5",
        "max_held": "20000",
        "sweep_interval_s": "5",
    }
    env = {f"STATIONMASTER_TASKS_{k.upper()}": v for k, v in tasks.items()}
    env.update(
        {
            "STATIONMASTER_DATABASE_DSN": dsn,
            "STATIONMASTER_DATABASE_POOL_MAX": "10",
            "STATIONMASTER_REDIS_URL": args.redis_url,
            "STATIONMASTER_REDIS_KEY_PREFIX": f"smbench:{os.getpid()}:",
            "STATIONMASTER_HTTP_PORT": "0",
            "STATIONMASTER_HTTP_DATA_PORT": "0",
            "STATIONMASTER_AUTH_ADMIN_TOKENS": json.dumps([admin]),
            "STATIONMASTER_CRYPTO_KEYS": json.dumps([generate_key()]),
        }
    )
    return env


# --- the run -------------------------------------------------------------------------


async def run(args: argparse.Namespace, dsn: str) -> None:
    admin = "bench-admin-" + secrets.token_hex(8)
    sim = Simulator()
    daemon = DaemonProcess(["run"], daemon_env(args, dsn, admin))
    try:
        url = daemon.wait_ready()
        async with open_loop(), open_database(DatabaseConfig(dsn=dsn, pool_max=2)) as db:
            await install_write_counter(db)
            keys, account_ids = await create_accounts(url, admin, sim.url, args.accounts)
            rate = await ceiling(sim, "sk-calibration")
            print(
                "reference: httpx + httpcore (the old upstream client), 64 in flight"
                f" -> simulator: {rate:,.0f} fetches/s"
            )
            t0 = time.time()
            # Durations of an hour: nothing ends until the clock is moved on purpose.
            tasks = await submit_upstream(sim, keys, args.tasks, args.waves, 3600.0, args.step)
            print(f"submitted {len(tasks)} tasks upstream in {time.time() - t0:.1f} s")
            await record(db, tasks, account_ids)
            while metric_sum(await metrics(url), "stationmaster_tasks_held") < args.tasks:  # noqa: ASYNC110 (polling another process)
                await trio.sleep(0.5)
            print(f"all {args.tasks} claimed {time.time() - t0:.1f} s after the first submit")
            await trio.sleep(5)  # past the claim burst
            window = args.window
            load_before = loadavg()
            cpu_before = (cpu_s(daemon.proc.pid), cpu_s(sim.proc.pid))
            before = (await metrics(url), await row_writes(db), time.monotonic())
            rss = []
            end = time.monotonic() + window
            while time.monotonic() < end:
                rss.append(rss_mb(daemon.proc.pid))
                await trio.sleep(1)
            after = (await metrics(url), await row_writes(db), time.monotonic())
            cpu = (cpu_s(daemon.proc.pid) - cpu_before[0], cpu_s(sim.proc.pid) - cpu_before[1])
            polls = report_window(before, after, rss)
            report_cpu(cpu, polls, after[2] - before[2], load_before)
            # Move the simulator's clock so the first wave ends --first-done from now.
            advance = min(t[3] for t in tasks) - time.time() - args.first_done
            sim.advance(advance)
            tasks = [(a, b, c, done - advance) for a, b, c, done in tasks]
            await wait_terminal(db, args.tasks, daemon)
            await report_lag(db, tasks, args.base_interval)
    finally:
        daemon.stop()
        sim.stop()
        if os.environ.get("BENCH_TAIL"):
            print("\n".join(daemon.tail))


def report_cpu(cpu: tuple[float, float], polls: float, seconds: float, load: str) -> None:
    daemon, sim = (c / max(polls, 1) * 1e6 for c in cpu)
    print(f"  load average:                 {load} at the start, {loadavg()} at the end")
    print(
        f"  CPU per poll:                 daemon {daemon:.0f} µs, simulator {sim:.0f} µs"
        f"  (daemon {cpu[0] / seconds * 100:.0f} % of a core)"
    )
    print(
        f"  -> one fully busy core:       {1e6 / max(daemon, 1):,.0f} polls/s of the daemon"
        " (load-independent estimate)"
    )


def report_window(
    before: tuple[str, int, float], after: tuple[str, int, float], rss: list[float]
) -> float:
    name = "stationmaster_task_polls_total"
    seconds = after[2] - before[2]
    polls = metric_sum(after[0], name) - metric_sum(before[0], name)
    unchanged = metric_sum(after[0], name, 'result="unchanged"') - metric_sum(
        before[0], name, 'result="unchanged"'
    )
    writes = after[1] - before[1]
    lag_name = "stationmaster_task_poll_lag_seconds"
    lag_sum = metric_sum(after[0], lag_name + "_sum") - metric_sum(before[0], lag_name + "_sum")
    lag_n = metric_sum(after[0], lag_name + "_count") - metric_sum(before[0], lag_name + "_count")
    print(f"steady window: {seconds:.1f} s, every task held and running upstream")
    print(f"  polls/s (one instance):       {polls / seconds:,.0f}  ({polls:,.0f} polls)")
    print(f"  unchanged polls:              {unchanged:,.0f}")
    results = sorted(set(re.findall(r'result="([a-z_]+)"', after[0])))
    by = {
        r: metric_sum(after[0], name, f'result="{r}"')
        - metric_sum(before[0], name, f'result="{r}"')
        for r in results
    }
    print("  polls by result:              " + ", ".join(f"{k} {v:,.0f}" for k, v in by.items()))
    print(
        f"  PostgreSQL row writes:        {writes:,}  -> {writes / max(unchanged, 1):.4f}"
        " per unchanged poll"
    )
    print(f"  mean lateness of a poll:      {lag_sum / max(lag_n, 1) * 1000:.0f} ms after due")
    print(f"  RSS of the daemon:            max {max(rss):.0f} MB, last {rss[-1]:.0f} MB")
    return polls


async def wait_terminal(db: Database, n: int, daemon: DaemonProcess) -> None:
    while True:
        if daemon.proc.poll() is not None:
            raise RuntimeError("the daemon exited:\n" + "\n".join(daemon.tail))
        done = await db.fetchval("SELECT count(*) FROM tasks WHERE finished_at IS NOT NULL")
        if done >= n:
            return
        await trio.sleep(1)


async def report_lag(
    db: Database, tasks: list[tuple[str, str, int, float]], interval_s: float
) -> None:
    done = {t[0]: t[3] for t in tasks}
    rows = await db.fetch("SELECT id, status, finished_at FROM tasks")
    lags = sorted(r["finished_at"].timestamp() - done[str(r["id"])] for r in rows)
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    print(f"completion -> terminal state ({len(lags)} tasks, {statuses}):")
    print(
        f"  lag p50 {percentile(lags, 50):.2f} s, p99 {percentile(lags, 99):.2f} s,"
        f" max {lags[-1]:.2f} s   (target p99 <= 2 x the poll interval = {2 * interval_s:g} s)"
    )


def main() -> None:
    args = parse_args()
    if not (args.pg_dsn and args.redis_url):
        sys.exit("needs --pg-dsn and --redis-url (or STATIONMASTER_TEST_PG_DSN / _REDIS_URL)")
    print_setup(
        "tasks: polling 10,000 tasks in flight (bench/tasks.py)",
        packages=("trio", "trio-asyncio", "asyncpg", "httpx", "httptools"),
        extra={
            "layout": (
                f"1 daemon (stationmaster run) + 1 simulator process + this process;"
                f" {args.tasks} DashScope tasks on {args.accounts} accounts"
            ),
            "polling": (
                f"base {args.base_interval} s, max {args.max_interval} s (platform's 10 s floor"
                f" off), {args.concurrency} polls in flight, 64 per account"
            ),
            "upstream": (
                f"{args.waves} waves {args.step:g} s apart, the first ending {args.first_done:g} s"
                " after the window (simulator clock moved on); submits straight to the"
                " simulator, rows recorded in bulk"
            ),
        },
    )
    with bench_database(args.pg_dsn) as dsn:
        trio.run(run, args, dsn)


if __name__ == "__main__":
    main()
