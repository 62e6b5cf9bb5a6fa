"""``stationmaster tasks …`` and ``stationmaster credits …`` as subprocesses.

Bad input tried (exit 2, nothing changed): a malformed task id, a top-up key
reused for another amount; a finished task's cancel is exit 1.
"""

from __future__ import annotations

import json

import pytest
import trio

from accounts.db import Database
from tests.support import config_dict, make_config, open_daemon, run_cli

from .taskkit import create_accounts, gateway, task_body, tasks_config


@pytest.mark.slow
async def test_credits_and_tasks_commands(db: Database, pg_dsn, redis_url, redis_prefix, simulator):
    sim_url, _sim = simulator(seed=8, duration_min_s=60, duration_max_s=60, pending_fraction=1.0)
    cfg = config_dict(pg_dsn, redis_url, redis_prefix, tasks=tasks_config())
    code, out, err = await run_cli(cfg, "credits", "topup", "alice", "10000000", "--key", "t1")
    assert code == 0, err
    assert json.loads(out)["applied"] is True
    assert (await run_cli(cfg, "credits", "topup", "alice", "5", "--key", "t1"))[0] == 2
    code, out, _ = await run_cli(cfg, "credits", "show", "alice")
    assert json.loads(out)["balance"] == 10_000_000
    with trio.fail_after(60):
        async with open_daemon(
            make_config(pg_dsn, redis_url, redis_prefix, tasks=tasks_config())
        ) as (d, url):
            await create_accounts(url, sim_url, 1)
            async with gateway(d.data_urls[0]) as gw:
                r = await gw.post("/v1/tasks", json=task_body())
                assert r.status_code == 202, r.text
                task = r.json()
    code, out, _ = await run_cli(cfg, "tasks", "list", "--owner", "alice")
    assert [t["id"] for t in json.loads(out)["items"]] == [task["id"]]
    code, out, err = await run_cli(cfg, "tasks", "cancel", task["id"])
    assert code == 0, err
    assert json.loads(out)["status"] == "cancelled"
    code, out, _ = await run_cli(cfg, "tasks", "show", task["id"])
    ledger = json.loads(out)["ledger"]
    assert [e["kind"] for e in ledger] == ["hold", "release"]
    code, _, err = await run_cli(cfg, "tasks", "cancel", task["id"])
    assert code == 1 and "cancelled" in err
    assert (await run_cli(cfg, "tasks", "show", "nope"))[0] == 2
    code, out, _ = await run_cli(cfg, "credits", "list")
    assert json.loads(out)["items"] == [{"owner": "alice", "balance": 10_000_000}]
