"""Record first, idempotency, store outages, unchanged polls, shutdown: one daemon in-process.

Every test talks to the daemon over HTTP and to the simulator over HTTP; the
test reads PostgreSQL directly (its own connection) to see what was recorded.
"""

from __future__ import annotations

import httpx
import trio

from accounts.db import Database
from tests.proxy import open_proxy
from tests.support import make_config, open_daemon, proxy_target, via_proxy

from .taskkit import (
    AUDIT_SQL,
    DROP_AUDIT_SQL,
    check_books,
    create_accounts,
    gateway,
    task_body,
    tasks_config,
    topup,
    wait_all_terminal,
)


async def _rows(db: Database) -> tuple[int, int]:
    return (
        await db.fetchval("SELECT count(*) FROM tasks"),
        await db.fetchval("SELECT count(*) FROM ledger WHERE kind = 'hold'"),
    )


async def test_task_is_listed_before_the_upstream_submit_returns(
    db: Database, pg_dsn, redis_url, redis_prefix, simulator
):
    # The simulator creates the task and then never answers the submit: the
    # adapter gives up after 2 s (Ambiguous) and the task stays SUBMITTING until
    # the sweeper, which cannot look DashScope tasks up, fails it and releases.
    sim_url, sim = simulator(seed=3, submit_timeout_after_create_rate=1.0)
    config = make_config(
        pg_dsn, redis_url, redis_prefix,
        tasks=tasks_config(submitting_stale_s=3.0), upstream={"submit_timeout_s": 2.0},
    )  # fmt: skip
    with trio.fail_after(60):
        async with open_daemon(config) as (d, url):
            await create_accounts(url, sim_url, 1)
            await topup(url, "alice", 10**9)
            answered = trio.Event()
            answer: list[httpx.Response] = []

            async def post() -> None:
                async with gateway(d.data_urls[0]) as gw:
                    answer.append(await gw.post("/v1/tasks", json=task_body()))
                answered.set()

            async with trio.open_nursery() as nursery, gateway(d.data_urls[0]) as gw:
                nursery.start_soon(post)
                while True:
                    listed = (await gw.get("/v1/tasks", params={"owner": "alice"})).json()
                    if listed["items"]:
                        break
                    await trio.sleep(0.01)
                task = listed["items"][0]
                assert task["status"] == "submitting"
                assert task["cost_held"] > 0
                # The upstream has the submit in hand and has not answered it.
                while f"dashscope:{task['id']}" not in sim.counters()["clients"]:
                    await trio.sleep(0.01)
                assert not answered.is_set()
            assert answer[0].status_code == 202
            assert answer[0].json()["status"] == "submitting"
            async with gateway(d.data_urls[0]) as gw:
                while (await gw.get(f"/v1/tasks/{task['id']}")).json()["status"] == "submitting":
                    await trio.sleep(0.05)
                done = (await gw.get(f"/v1/tasks/{task['id']}")).json()
            assert done["status"] == "failed"
            assert done["failure_reason"] == "submit_outcome_unknown"
            assert done["cost_released"] == done["cost_held"]
            async with httpx.AsyncClient(base_url=url) as plain:
                text = (await plain.get("/metrics")).text
            metric = "stationmaster_task_submit_outcome_unknown_total"
            assert f'{metric}{{outcome="submit_outcome_unknown"}} 1.0' in text
    await check_books(db)


async def test_same_key_concurrently_one_task_one_hold(
    db: Database, pg_dsn, redis_url, redis_prefix, simulator
):
    sim_url, _sim = simulator(seed=4, duration_min_s=30, duration_max_s=30)
    config = make_config(pg_dsn, redis_url, redis_prefix, tasks=tasks_config())
    with trio.fail_after(60):
        async with open_daemon(config) as (d, url):
            await create_accounts(url, sim_url, 1)
            await topup(url, "alice", 10**9)
            answers: list[httpx.Response] = []

            async def post(gw: httpx.AsyncClient) -> None:
                answers.append(
                    await gw.post("/v1/tasks", json=task_body(), headers={"idempotency-key": "k1"})
                )

            async with gateway(d.data_urls[0]) as gw, trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(post, gw)
    assert sorted(r.status_code for r in answers) == [200] * 9 + [202]
    assert len({r.json()["id"] for r in answers}) == 1
    assert await _rows(db) == (1, 1)


async def test_database_error_during_the_check_is_503_and_records_nothing(
    db: Database, pg_dsn, redis_url, redis_prefix, simulator
):
    sim_url, _sim = simulator(seed=5, duration_min_s=30, duration_max_s=30)
    host, port = proxy_target(pg_dsn, 5432)
    async with open_proxy(host, port) as proxy:
        config = make_config(
            via_proxy(pg_dsn, proxy.port), redis_url, redis_prefix,
            tasks=tasks_config(pollers=False),
            database={"connect_timeout_s": 1.0, "statement_timeout_s": 2.0},
        )  # fmt: skip
        with trio.fail_after(60):
            async with open_daemon(config) as (d, url):
                await create_accounts(url, sim_url, 1)
                await topup(url, "alice", 10**9)
                async with gateway(d.data_urls[0]) as gw:
                    await proxy.block("refuse")
                    r = await gw.post(
                        "/v1/tasks", json=task_body(), headers={"idempotency-key": "k-outage"}
                    )
                    assert r.status_code == 503, r.text
                    assert r.json()["error"]["code"] == "store_unavailable"
                    assert await _rows(db) == (0, 0)
                    await proxy.unblock()
                    # The retry with the same key records the task once.
                    for _ in range(50):
                        r = await gw.post(
                            "/v1/tasks", json=task_body(), headers={"idempotency-key": "k-outage"}
                        )
                        if r.status_code != 503:
                            break
                        await trio.sleep(0.1)
                    assert r.status_code == 202, r.text
                    assert await _rows(db) == (1, 1)


async def test_unchanged_polls_write_nothing_and_shutdown_gives_leases_back(
    db: Database, pg_dsn, redis_url, redis_prefix, simulator
):
    # Tasks that run forever: after the first change (pending -> running) every
    # poll sees the same answer and must not touch the row.
    sim_url, sim = simulator(seed=6, duration_min_s=0.2, duration_max_s=0.2, never_finish_rate=1.0)
    await db.execute(AUDIT_SQL)
    config = make_config(pg_dsn, redis_url, redis_prefix, tasks=tasks_config())
    n = 10
    try:
        with trio.fail_after(90):
            async with open_daemon(config) as (d, url):
                await create_accounts(url, sim_url, 2)
                await topup(url, "alice", 10**9)
                async with gateway(d.data_urls[0]) as gw:
                    for _ in range(n):
                        assert (await gw.post("/v1/tasks", json=task_body())).status_code == 202
                await _wait_fetches(sim, n, 3)
                before = await db.fetchval("SELECT count(*) FROM task_audit")
                # Five more polls of every task, each seeing the same answer.
                await _wait_fetches(sim, n, 5, since=_per_task(sim))
                after = await db.fetchval("SELECT count(*) FROM task_audit")
                assert after == before, "an unchanged poll wrote to the task row"
                leased = await db.fetchval(
                    "SELECT count(*) FROM tasks WHERE status = 'running'"
                    " AND lease_owner IS NOT NULL"
                )
                assert leased == n
        # Graceful stop: every lease handed back with a planned next poll, lease row gone.
        assert await db.fetchval("SELECT count(*) FROM tasks WHERE lease_owner IS NOT NULL") == 0
        assert await db.fetchval("SELECT count(*) FROM task_leases") == 0
        assert await db.fetchval("SELECT count(*) FROM tasks WHERE next_poll_at IS NULL") == 0
    finally:
        await db.execute(DROP_AUDIT_SQL)


def _per_task(sim) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {t: c["fetches"] for t, c in sim.counters()["tasks"].items()}


async def _wait_fetches(sim, n: int, more: int, since: dict[str, int] | None = None) -> None:  # type: ignore[no-untyped-def]
    """Until every one of the ``n`` tasks was fetched ``more`` times (since ``since``)."""
    since = since or {}
    while True:
        now = _per_task(sim)
        if len(now) >= n and all(c - since.get(t, 0) >= more for t, c in now.items()):
            return
        await trio.sleep(0.1)


async def test_backlog_of_overdue_tasks_times_out_in_one_pass(
    db: Database, pg_dsn, redis_url, redis_prefix, simulator
):
    """More overdue tasks than one batch: one sweep ends them all, each settled once."""
    simulator(seed=7)
    n = 1200  # > the sweeper's batch of 500
    await db.execute(
        """WITH t AS (
               INSERT INTO tasks (id, owner, account_group, platform, kind, model, params,
                   status, upstream_id, billing, cost_held, deadline, next_poll_at)
               SELECT gen_random_uuid(), 'bulk', 'default', 'dashscope', 'video', 'm', '{}',
                   'pending', 'u' || g, '{"price": 1, "ratio_permille": 1000, "hold": 7}', 7,
                   now() - interval '1 second', now() + interval '1 hour'
               FROM generate_series(1, $1) g
               RETURNING id)
           INSERT INTO ledger (owner, kind, amount, task_id)
           SELECT 'bulk', 'hold', -7, id FROM t""",
        n,
    )
    await db.execute(
        "INSERT INTO ledger (owner, kind, amount, topup_key) VALUES ('bulk', 'topup', 100000, 'b')"
    )
    config = make_config(
        pg_dsn, redis_url, redis_prefix, tasks=tasks_config(sweep_interval_s=3600.0)
    )
    with trio.fail_after(120):
        async with open_daemon(config) as (d, _url):
            await wait_all_terminal(db, timeout=100)
            assert d.services is not None
    assert await db.fetchval("SELECT count(*) FROM tasks WHERE status = 'timed_out'") == n
    await check_books(db)


async def test_a_task_ended_elsewhere_is_let_go(
    db: Database, pg_dsn, redis_url, redis_prefix, simulator
):
    """Timed out by the sweeper while running forever upstream: the poller stops holding it."""
    sim_url, sim = simulator(seed=10, duration_min_s=0.2, duration_max_s=0.2, never_finish_rate=1.0)
    config = make_config(pg_dsn, redis_url, redis_prefix, tasks=tasks_config())
    with trio.fail_after(60):
        async with open_daemon(config) as (d, url):
            await create_accounts(url, sim_url, 1)
            await topup(url, "alice", 10**9)
            async with gateway(d.data_urls[0]) as gw:
                for _ in range(3):
                    assert (await gw.post("/v1/tasks", json=task_body())).status_code == 202
            await _wait_fetches(sim, 3, 2)
            assert await _held(url) == 3
            await db.execute("UPDATE tasks SET deadline = now() - interval '1 second'")
            await wait_all_terminal(db, timeout=30)
            while await _held(url):
                await trio.sleep(0.1)
    statuses = {r["status"] for r in await db.fetch("SELECT status FROM tasks")}
    assert statuses == {"timed_out"}
    await check_books(db)


async def _held(url: str) -> float:
    async with httpx.AsyncClient(base_url=url) as plain:
        text = (await plain.get("/metrics")).text
    line = next(x for x in text.splitlines() if x.startswith("stationmaster_tasks_held "))
    return float(line.split()[1])
