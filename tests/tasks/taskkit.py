"""Helpers for the task tests: DashScope accounts pointed at the simulator, clients, waits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import trio

from accounts.db import Database
from tests.support import GATEWAY_TOKEN, admin_client

GROUP = "default"
MODEL = "wan2.1-t2v-turbo"

# Fast polling for tests: no platform floor (DashScope asks for 10 s), short intervals.
FAST_TASKS: dict[str, Any] = {
    "honour_platform_interval": False,
    "poll_base_interval_s": 0.2,
    "poll_max_interval_s": 1.0,
    "claim_interval_s": 0.2,
    "sweep_interval_s": 0.5,
    "lease_s": 3.0,
    "renew_every_s": 1.0,
    "submit_wait_ms": 200,
}


def gateway(url: str) -> httpx.AsyncClient:
    return admin_client(url, token=GATEWAY_TOKEN)


def task_body(owner: str = "alice", **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "owner": owner,
        "platform": "dashscope",
        "model": MODEL,
        "kind": "video",
        "params": {"prompt": "a cat on a train", "duration": 5},
    }
    body.update(kw)
    return body


async def create_accounts(
    url: str, sim_url: str, n: int = 2, *, concurrency: int = 100, prefix: str = "sk-sim"
) -> list[dict[str, Any]]:
    out = []
    async with admin_client(url) as admin:
        for i in range(n):
            body = {
                "name": f"ds{i}",
                "platform": "dashscope",
                "groups": [GROUP],
                "concurrency": concurrency,
                "base_url": sim_url,
                "credentials": {"api_key": f"{prefix}-{i}"},
            }
            r = await admin.post("/v1/admin/accounts", json=body)
            assert r.status_code in (200, 201), r.text
            out.append(r.json())
    return out


async def topup(url: str, owner: str, amount: int, key: str | None = None) -> dict[str, Any]:
    async with admin_client(url) as admin:
        r = await admin.post(
            "/v1/admin/credits", json={"owner": owner, "amount": amount, "key": key or owner}
        )
        assert r.status_code == 200, r.text
        return r.json()


async def wait_all_terminal(db: Database, timeout: float = 60) -> None:
    with trio.fail_after(timeout):
        while await db.fetchval(
            "SELECT count(*) FROM tasks WHERE status IN ('submitting', 'pending', 'running')"
        ):
            await trio.sleep(0.1)


async def check_books(db: Database) -> None:
    """Every terminal task settled exactly once; balances = top-ups - captures; no open hold."""
    bad = await db.fetch(
        """SELECT t.id, t.status, array_agg(l.kind ORDER BY l.id) AS kinds
           FROM tasks t LEFT JOIN ledger l ON l.task_id = t.id
           GROUP BY t.id, t.status
           HAVING count(*) FILTER (WHERE l.kind = 'hold') <> 1
               OR count(*) FILTER (WHERE l.kind = 'release')
                  <> (CASE WHEN t.status IN ('succeeded', 'failed', 'cancelled', 'timed_out')
                      THEN 1 ELSE 0 END)
               OR count(*) FILTER (WHERE l.kind = 'capture')
                  > (CASE WHEN t.status = 'succeeded' THEN 1 ELSE 0 END)"""
    )
    assert not bad, f"settlement anomalies: {[dict(r) for r in bad[:5]]}"
    owners = await db.fetch(
        """SELECT owner,
                  sum(amount) AS balance,
                  sum(amount) FILTER (WHERE kind = 'topup') AS topups,
                  coalesce(-sum(amount) FILTER (WHERE kind = 'capture'), 0) AS captured
           FROM ledger GROUP BY owner"""
    )
    kept = {r["owner"]: r["balance"] for r in await db.fetch("SELECT * FROM credit_balances")}
    live = await db.fetchval(
        "SELECT count(*) FROM tasks WHERE status IN ('submitting', 'pending', 'running')"
    )
    for r in owners:
        assert kept[r["owner"]] == r["balance"], r["owner"]
        if not live:
            assert r["balance"] == r["topups"] - r["captured"], dict(r)
    # One outbox event per terminal task, none for live ones.
    events = await db.fetchval("SELECT count(*) FROM outbox WHERE event_key LIKE 'task:%'")
    done = await db.fetchval("SELECT count(*) FROM tasks WHERE finished_at IS NOT NULL")
    assert events == done


def tasks_config(**overrides: Any) -> Mapping[str, Any]:
    return {**FAST_TASKS, **overrides}


# --- the audit trigger: created by the TEST in the test database -------------------

AUDIT_SQL = """
CREATE TABLE IF NOT EXISTS task_audit (
    id           bigserial PRIMARY KEY,
    task_id      uuid NOT NULL,
    old_status   text NOT NULL,
    new_status   text NOT NULL,
    old_version  bigint NOT NULL,
    new_version  bigint NOT NULL,
    at           timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE OR REPLACE FUNCTION task_audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_audit (task_id, old_status, new_status, old_version, new_version)
    VALUES (OLD.id, OLD.status, NEW.status, OLD.version, NEW.version);
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS task_audit_row ON tasks;
CREATE TRIGGER task_audit_row AFTER UPDATE ON tasks
    FOR EACH ROW EXECUTE FUNCTION task_audit_row();
"""
DROP_AUDIT_SQL = "DROP TRIGGER IF EXISTS task_audit_row ON tasks; DROP TABLE IF EXISTS task_audit"
TERMINAL_SQL = "('succeeded', 'failed', 'cancelled', 'timed_out')"


async def check_audit(db: Database) -> None:
    """No recorded update ever left a terminal state; statuses only moved forward."""
    left = await db.fetch(
        f"SELECT * FROM task_audit WHERE old_status IN {TERMINAL_SQL} AND new_status <> old_status"
    )
    assert not left, f"terminal state overwritten: {[dict(r) for r in left[:5]]}"
    order = {"submitting": 0, "pending": 1, "running": 2}
    rows = await db.fetch(
        "SELECT old_status, new_status, count(*) AS n FROM task_audit"
        " WHERE old_status <> new_status GROUP BY 1, 2"
    )
    for r in rows:
        assert r["new_status"] not in order or order[r["new_status"]] > order[r["old_status"]], (
            dict(r)
        )
    # Every status change bumped the version by one (compare-and-set, never a blind write).
    blind = await db.fetchval(
        "SELECT count(*) FROM task_audit"
        " WHERE old_status <> new_status AND new_version <> old_version + 1"
    )
    assert blind == 0
    terminal_twice = await db.fetchval(
        f"""SELECT count(*) FROM (
               SELECT task_id FROM task_audit WHERE new_status IN {TERMINAL_SQL}
                  AND old_status NOT IN {TERMINAL_SQL}
               GROUP BY task_id HAVING count(*) > 1) x"""
    )
    assert terminal_twice == 0
