"""Several daemon processes share one task table: exactly one end and one settlement each.

Three ``stationmaster run`` processes poll the same tasks while real-time
fetches (``?refresh=true``) and cancellations hit their APIs at random and the
simulator (its own process) finishes, fails, rate-limits and 5xx's at random.
An audit trigger created by this test records every update of ``tasks``.
"""

from __future__ import annotations

import os
import random
import secrets

import httpx
import pytest
import trio

from accounts.db import Database
from tests.support import DaemonProcess, config_dict

from .taskkit import (
    AUDIT_SQL,
    DROP_AUDIT_SQL,
    check_audit,
    check_books,
    create_accounts,
    gateway,
    task_body,
    tasks_config,
    topup,
    wait_all_terminal,
)

# The size: 2,000 tasks, each one submit, a few polls and one settlement,
# raced by refreshes and cancels. Since the pollers use the lean transport and settle
# in batches, that is ~50 s on the shared 2-core machine at load 6 (300 took as long
# before). STATIONMASTER_TEST_RACE_TASKS sets another size.
TASKS = int(os.environ.get("STATIONMASTER_TEST_RACE_TASKS", "2000"))
OWNERS = 5
DAEMONS = 3


@pytest.mark.slow
async def test_three_daemons_settle_every_task_exactly_once(
    db: Database, pg_dsn, redis_url, redis_prefix, simulator
):
    sim_url, sim = simulator(
        process=True, seed=11, duration_min_s=1.0, duration_max_s=6.0, pending_fraction=0.8,
        failure_rate=0.1,
        rate_429=0.05, rate_5xx=0.05, malformed_rate=0.02, faults_on=["fetch"],
    )  # fmt: skip
    await db.execute(AUDIT_SQL)
    cfg = config_dict(
        pg_dsn,
        redis_url,
        redis_prefix,
        tasks=tasks_config(
            lease_s=5.0,
            renew_every_s=1.0,
            submitting_stale_s=10.0,
            poll_base_interval_s=3.0,
            poll_max_interval_s=2.0,
        ),
        database={"pool_max": 12},
    )
    procs = [DaemonProcess(cfg) for _ in range(DAEMONS)]
    try:
        urls = [await p.wait_ready(60) for p in procs]
        await create_accounts(urls[0], sim_url, 4, concurrency=1000)
        for i in range(OWNERS):
            await topup(urls[0], f"owner{i}", 10**10)
        ids: list[str] = []
        stats = {"cancelled": 0, "refused": 0, "refreshed": 0}
        with trio.fail_after(240):
            async with trio.open_nursery() as nursery:
                done = trio.Event()
                nursery.start_soon(_submit_all, [p.data() for p in procs], ids, done)
                nursery.start_soon(_chaos, [p.data() for p in procs], ids, done, stats)
            await wait_all_terminal(db, timeout=180)
        assert len(ids) == TASKS
        assert stats["cancelled"] > 0 and stats["refreshed"] > 0, stats
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            await p.wait(30)
    rows = await db.fetch("SELECT status, count(*) AS n FROM tasks GROUP BY status")
    by_status = {r["status"]: r["n"] for r in rows}
    assert sum(by_status.values()) == TASKS
    assert set(by_status) <= {"succeeded", "failed", "cancelled"}, by_status
    await check_books(db)
    await check_audit(db)
    sim.assert_each_client_submitted_once()
    await db.execute(DROP_AUDIT_SQL)


async def _submit_all(urls: list[str], ids: list[str], done: trio.Event) -> None:
    limit = trio.Semaphore(24)
    clients = [gateway(u) for u in urls]
    for c in clients:
        c.timeout = httpx.Timeout(60)

    async def one(i: int) -> None:
        async with limit:
            gw = clients[i % len(clients)]
            body = task_body(f"owner{i % OWNERS}")
            for _ in range(5):
                r = await gw.post("/v1/tasks", json=body, headers={"idempotency-key": f"k{i}"})
                # 503: the store was too busy; the same key makes the retry safe.
                if r.status_code != 503:
                    break
            assert r.status_code in (200, 202), r.text
            ids.append(r.json()["id"])

    try:
        async with trio.open_nursery() as nursery:
            for i in range(TASKS):
                nursery.start_soon(one, i)
    finally:
        for c in clients:
            await c.aclose()
        done.set()


async def _chaos(urls: list[str], ids: list[str], done: trio.Event, stats: dict[str, int]) -> None:
    """Real-time fetches and cancellations against random instances while tasks run."""
    rng = random.Random(secrets.randbits(32))
    clients = [gateway(u) for u in urls]
    for c in clients:
        c.timeout = httpx.Timeout(60)
    try:
        while not done.is_set() or rng.random() < 0.98:
            await trio.sleep(0.01)
            if not ids:
                continue
            # Mostly recent tasks: those are still live (and cancellable while pending).
            task_id = rng.choice(ids[-40:] if rng.random() < 0.7 else ids)
            gw = rng.choice(clients)
            if rng.random() < 0.3:
                r = await gw.post(f"/v1/tasks/{task_id}/cancel")
                assert r.status_code in (200, 409), r.text
                stats["cancelled" if r.status_code == 200 else "refused"] += 1
                if r.status_code == 409:
                    reason = r.json()["error"]["details"]["status"]
                    stats[reason[:30]] = stats.get(reason[:30], 0) + 1
            else:
                r = await gw.get(f"/v1/tasks/{task_id}", params={"refresh": "true"})
                assert r.status_code == 200, r.text
                stats["refreshed"] += 1
    finally:
        for c in clients:
            await c.aclose()
