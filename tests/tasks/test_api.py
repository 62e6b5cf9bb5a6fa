"""POST/GET /v1/tasks on a real daemon, real PostgreSQL and Redis, the simulator over HTTP.

Bad input tried (each a 4xx, nothing recorded): unknown platform, missing model,
a webhook URL that is not http(s), params over the size limit, params PostgreSQL
cannot store (a NUL), an origin task of another owner (404, as if absent), a
malformed origin id, an unknown field; plus 402 (no credit) and 429 (in-flight
limit).
"""

from __future__ import annotations

import trio

from accounts.db import Database
from tests.support import make_config, open_daemon

from .taskkit import check_books, create_accounts, gateway, task_body, tasks_config, topup


async def counts(db: Database) -> tuple[int, int]:
    return (
        await db.fetchval("SELECT count(*) FROM tasks"),
        await db.fetchval("SELECT count(*) FROM ledger WHERE kind <> 'topup'"),
    )


async def test_submit_poll_settle_end_to_end(db, pg_dsn, redis_url, redis_prefix, simulator):
    config = make_config(pg_dsn, redis_url, redis_prefix, tasks=tasks_config())
    sim_url, sim = simulator(seed=1, duration_min_s=0.3, duration_max_s=0.6)
    with trio.fail_after(60):
        async with open_daemon(config) as (d, url):
            await create_accounts(url, sim_url, 2)
            await topup(url, "alice", 10_000_000)
            async with gateway(d.data_urls[0]) as gw:
                r = await gw.post("/v1/tasks", json=task_body())
                assert r.status_code == 202, r.text
                task = r.json()
                assert task["status"] == "pending"
                assert task["cost_held"] == 5 * 36_000
                while True:
                    r = await gw.get(f"/v1/tasks/{task['id']}")
                    if r.json()["status"] == "succeeded":
                        break
                    await trio.sleep(0.05)
                done = r.json()
                assert done["result_urls"] and done["cost_charged"] == 5 * 36_000
                r = await gw.get("/v1/tasks", params={"owner": "alice"})
                assert [t["id"] for t in r.json()["items"]] == [task["id"]]
                r = await gw.post(f"/v1/tasks/{task['id']}/cancel")
                assert r.status_code == 409, r.text
    sim.assert_each_client_submitted_once()
    await check_books(db)


async def test_bad_input_402_and_429_record_nothing(db, pg_dsn, redis_url, redis_prefix, simulator):
    config = make_config(
        pg_dsn, redis_url, redis_prefix,
        tasks=tasks_config(max_in_flight_per_owner=1, max_params_bytes=1024),
    )  # fmt: skip
    sim_url, _sim = simulator(seed=1, duration_min_s=30, duration_max_s=30)
    with trio.fail_after(60):
        async with open_daemon(config) as (d, url):
            await create_accounts(url, sim_url, 1)
            async with gateway(d.data_urls[0]) as gw:
                r = await gw.post("/v1/tasks", json=task_body("bob"))
                assert r.status_code == 402, r.text
                assert r.json()["error"]["code"] == "insufficient_credit"
                await topup(url, "alice", 10_000_000)
                await topup(url, "bob", 10_000_000)
                bad = [
                    (task_body(platform="nope"), "platform"),
                    ({k: v for k, v in task_body().items() if k != "model"}, "model"),
                    (task_body(webhook_url="ftp://example.com/x"), "webhook_url"),
                    (task_body(webhook_url="javascript:alert(1)"), "webhook_url"),
                    (task_body(params={"prompt": "x" * 2000}), "params"),
                    (task_body(params={"duration": 10_000}), "params"),
                    (task_body(params={"prompt": "nul \u0000 inside"}), "params"),
                    (task_body(origin_task_id="not-a-uuid"), "origin_task_id"),
                    (task_body(colour="red"), "colour"),
                ]
                for body, field in bad:
                    r = await gw.post("/v1/tasks", json=body)
                    assert r.status_code == 422, (field, r.text)
                    fields = [e["field"] for e in r.json()["error"]["details"]["errors"]]
                    assert field in fields[0], (field, fields)
                assert await counts(db) == (0, 0)
                r = await gw.post("/v1/tasks", json=task_body("bob"))
                assert r.status_code == 202, r.text
                bobs = r.json()["id"]
                # Another owner's task as origin: refused as if it did not exist.
                r = await gw.post("/v1/tasks", json=task_body("alice", origin_task_id=bobs))
                assert r.status_code == 404, r.text
                assert r.json()["error"]["details"]["field"] == "origin_task_id"
                assert await counts(db) == (1, 1)
                # Bob's in-flight limit is 1: 429, nothing recorded.
                r = await gw.post("/v1/tasks", json=task_body("bob"))
                assert r.status_code == 429, r.text
                assert await counts(db) == (1, 1)


async def test_a_task_with_an_origin_goes_to_the_origins_account(
    db, pg_dsn, redis_url, redis_prefix, simulator
):
    sim_url, _sim = simulator(seed=2, duration_min_s=30, duration_max_s=30)
    config = make_config(pg_dsn, redis_url, redis_prefix, tasks=tasks_config())
    with trio.fail_after(60):
        async with open_daemon(config) as (d, url):
            await create_accounts(url, sim_url, 4)
            await topup(url, "alice", 10**9)
            async with gateway(d.data_urls[0]) as gw:
                for _ in range(3):
                    r = await gw.post("/v1/tasks", json=task_body())
                    origin = r.json()
                    r = await gw.post("/v1/tasks", json=task_body(origin_task_id=origin["id"]))
                    assert r.status_code == 202, r.text
                    extend = r.json()
                    assert extend["origin_task_id"] == origin["id"]
                    # 4 accounts, 3 rounds: chance alone would agree 1 time in 64.
                    assert extend["account_id"] == origin["account_id"]
