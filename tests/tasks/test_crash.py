"""kill -9 a daemon mid-run: its leases expire, another instance finishes its tasks,
and the SUBMITTING rows it left are resolved by the sweeper (found upstream by our
id on Kling; ``submit_outcome_unknown`` on DashScope, which cannot look tasks up).
"""

from __future__ import annotations

import contextlib

import httpx
import pytest
import trio

from accounts.db import Database
from scheduler.upstream.simulator._kling import default_secret
from tests.support import DaemonProcess, admin_client, config_dict

from .taskkit import (
    AUDIT_SQL,
    DROP_AUDIT_SQL,
    GROUP,
    check_audit,
    check_books,
    create_accounts,
    gateway,
    task_body,
    tasks_config,
    topup,
    wait_all_terminal,
)

LIVE = "('submitting', 'pending', 'running')"
KLING_KEY = "ak-crash"


def kling_body() -> dict:
    return task_body(
        platform="kling",
        model="kling-v2-1",
        params={"prompt": "a cat", "duration": 5, "mode": "std"},
    )


@pytest.mark.slow
async def test_kill_9_mid_run(db: Database, pg_dsn, redis_url, redis_prefix, simulator):
    sim_url, sim = simulator(process=True, seed=21, duration_min_s=8.0, duration_max_s=10.0)
    await db.execute(AUDIT_SQL)
    cfg = config_dict(
        pg_dsn,
        redis_url,
        redis_prefix,
        tasks=tasks_config(lease_s=3.0, renew_every_s=1.0, submitting_stale_s=4.0),
        upstream={"submit_timeout_s": 60.0},
    )
    victim, survivor = DaemonProcess(cfg), DaemonProcess(cfg)
    try:
        url_a, _ = await victim.wait_ready(60), await survivor.wait_ready(60)
        await create_accounts(url_a, sim_url, 2)
        async with admin_client(url_a) as admin:
            r = await admin.post(
                "/v1/admin/accounts",
                json={
                    "name": "kling0", "platform": "kling", "groups": [GROUP], "concurrency": 50,
                    "base_url": sim_url,
                    "credentials": {
                        "access_key": KLING_KEY, "secret_key": default_secret(KLING_KEY),
                    },
                },
            )  # fmt: skip
            assert r.status_code == 201, r.text
        await topup(url_a, "alice", 10**10)
        with trio.fail_after(150):
            async with gateway(victim.data()) as gw_a, gateway(survivor.data()) as gw_b:
                for i in range(40):
                    gw = gw_a if i % 2 else gw_b
                    assert (await gw.post("/v1/tasks", json=task_body())).status_code == 202
            pattern = f"%-{victim.proc.pid}-%"
            while not await _held_by(db, pattern):
                await trio.sleep(0.05)
            # Two submits the upstream accepts and never answers, in flight on the victim.
            sim.set(submit_timeout_after_create_rate=1.0)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_post_and_forget, victim.data(), kling_body())
                nursery.start_soon(_post_and_forget, victim.data(), task_body())
                kling_id, ds_id = await _submitting_upstream(db, sim)
                held = await _held_by(db, pattern)
                victim.kill()  # SIGKILL: no drain, no lease given back
            sim.set(submit_timeout_after_create_rate=0.0)
            await wait_all_terminal(db, timeout=120)
    finally:
        victim.kill()
        survivor.terminate()
        await survivor.wait(30)
    assert held, "the victim held no live task when it was killed"
    statuses = dict(
        (str(r["id"]), r["status"])
        for r in await db.fetch("SELECT id, status FROM tasks WHERE id = ANY($1::uuid[])", held)
    )
    assert set(statuses.values()) == {"succeeded"}, statuses
    kling = await db.fetchrow("SELECT status, failure_reason FROM tasks WHERE id = $1", kling_id)
    assert kling["status"] == "succeeded", dict(kling)  # found upstream by our id, then polled
    ds = await db.fetchrow("SELECT status, failure_reason FROM tasks WHERE id = $1", ds_id)
    assert (ds["status"], ds["failure_reason"]) == ("failed", "submit_outcome_unknown")
    await check_books(db)
    await check_audit(db)
    sim.assert_each_client_submitted_once()
    await db.execute(DROP_AUDIT_SQL)


async def _held_by(db: Database, pattern: str) -> list[str]:
    rows = await db.fetch(
        f"SELECT id FROM tasks WHERE lease_owner LIKE $1 AND status IN {LIVE}", pattern
    )
    return [str(r["id"]) for r in rows]


async def _post_and_forget(url: str, body: dict) -> None:
    async with gateway(url) as gw:
        # The daemon is killed under us: that is the point.
        with contextlib.suppress(httpx.HTTPError):
            await gw.post("/v1/tasks", json=body, timeout=120)


async def _submitting_upstream(db: Database, sim) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """Wait until both SUBMITTING rows exist and the upstream has both submits in hand."""
    while True:
        rows = await db.fetch(
            "SELECT id, platform, account_id FROM tasks WHERE status = 'submitting'"
        )
        by = {r["platform"]: r for r in rows}
        clients = sim.counters()["clients"]
        if (
            set(by) == {"kling", "dashscope"}
            and by["kling"]["account_id"] is not None
            and f"kling:{by['kling']['id']}" in clients
            and f"dashscope:{by['dashscope']['id']}" in clients
        ):
            return str(by["kling"]["id"]), str(by["dashscope"]["id"])
        await trio.sleep(0.02)
