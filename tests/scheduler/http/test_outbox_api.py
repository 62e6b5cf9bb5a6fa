"""The outbox over HTTP and the CLI, on a real daemon with a real receiver.

Bad input tried (each a 4xx naming the field, nothing changed): an unknown
``status`` filter, ``limit`` 0 / 5000 / ``abc``, ``after`` -1, a malformed feed
cursor (``garbage``, ``1.``, ``-1.2``), a non-numeric and an unknown event id,
retry of a consumed event (409), tokens of the wrong scope (403); the CLI's
retry of a consumed event (exit 1).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import trio

from ...support import GATEWAY_TOKEN, admin_client, config_dict, make_config, open_daemon, run_cli
from ..outbox.support import SECRET, Receiver, insert_events

OUTBOX = {
    "webhook_secret": SECRET,
    "poll_interval_s": 0.2,
    "backoff_s": [0.05],
    "jitter": 0.0,
    "timeout_s": 2.0,
    "lease_s": 5.0,
    "stats_interval_s": 0.2,
}


def outbox_config(pg_dsn, redis_url, redis_prefix, **overrides):
    return make_config(pg_dsn, redis_url, redis_prefix, outbox={**OUTBOX, **overrides})


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20) -> None:
    """Poll a daemon-side state we cannot hook into (its own actors move it)."""
    with trio.fail_after(timeout):
        while not await check():
            await trio.sleep(0.02)


async def snapshot(db) -> list:
    return [tuple(r.values()) for r in await db.fetch("SELECT * FROM outbox ORDER BY id")]


async def test_dead_letter_retry_by_an_operator_and_metrics(
    pg_dsn, redis_url, redis_prefix, db, capsys
):
    config = outbox_config(pg_dsn, redis_url, redis_prefix)
    with Receiver() as rx, trio.fail_after(60):
        rx.script("/gone", lambda n: 410 if n == 1 else 200)
        async with open_daemon(config) as (_daemon, url), admin_client(url) as admin:
            await insert_events(db, 1, rx.url("/gone?token=s3cret"), prefix="task:7:")

            async def listed(status: str) -> list[dict]:
                r = await admin.get("/v1/admin/outbox", params={"status": status})
                assert r.status_code == 200, r.text
                return r.json()["items"]

            await eventually(lambda: _has(listed("dead")))
            (dead,) = await listed("dead")
            assert (dead["event_key"], dead["attempts"], dead["last_status_code"]) == (
                "task:7:1",
                1,
                410,
            )
            assert dead["destination"].endswith("/gone?…") and "s3cret" not in json.dumps(dead)
            r = await admin.post(f"/v1/admin/outbox/{dead['id']}/retry")
            assert r.status_code == 200, r.text
            assert (r.json()["status"], r.json()["attempts"]) == ("pending", 0)
            await rx.wait_for(lambda x: x.counts["task:7:1"] == 2)
            await eventually(lambda: _has(listed("consumed")))

            # A consumed event cannot be retried: 409, nothing changes.
            before = await snapshot(db)
            r = await admin.post(f"/v1/admin/outbox/{dead['id']}/retry")
            assert r.status_code == 409
            assert r.json()["error"]["code"] == "state_conflict"
            assert r.json()["error"]["details"] == {"current_status": "consumed"}
            assert await snapshot(db) == before

            async def metrics_show() -> bool:
                text = (await admin.get("/metrics")).text
                return (
                    'stationmaster_outbox_deliveries_total{result="dead"} 1.0' in text
                    and 'stationmaster_outbox_deliveries_total{result="consumed"} 1.0' in text
                    and 'stationmaster_outbox_events{status="dead"} 0.0' in text
                    and "stationmaster_outbox_attempts_count 2.0" in text
                    and "stationmaster_outbox_oldest_pending_seconds 0.0" in text
                )

            await eventually(metrics_show)
        assert rx.counts["task:7:1"] == 2 and all(d.verified for d in rx.deliveries)
    # The dead event was logged, without the URL's token or the signing secret.
    logged = capsys.readouterr().out
    assert "outbox event dead" in logged and "task:7:1" in logged
    assert "s3cret" not in logged and SECRET.removeprefix("whsec_") not in logged


async def _has(items: Awaitable[list]) -> bool:
    return bool(await items)


async def test_pull_feed_over_http(pg_dsn, redis_url, redis_prefix, db):
    config = outbox_config(pg_dsn, redis_url, redis_prefix)
    with trio.fail_after(60):
        async with open_daemon(config) as (daemon, url):
            await insert_events(db, 5, None, prefix="pull")
            seen: list[str] = []
            async with admin_client(daemon.data_urls[0], token=GATEWAY_TOKEN) as gw:
                cursor = None
                while len(seen) < 5:
                    params = {"limit": "2", **({"after": cursor} if cursor else {})}
                    r = await gw.get("/v1/events", params=params)
                    assert r.status_code == 200, r.text
                    page = r.json()
                    seen += [e["event_key"] for e in page["events"]]
                    cursor = page["next_cursor"]
                    if not page["events"]:
                        await trio.sleep(0.02)  # an older transaction elsewhere holds them back
                r = await gw.get("/v1/events", params={"after": cursor})
                assert r.json() == {"events": [], "next_cursor": cursor}
            assert seen == [f"pull{i}" for i in range(1, 6)]
            async with admin_client(url) as admin:
                doc = (await admin.get("/openapi.json")).json()
            async with admin_client(daemon.data_urls[0]) as data:
                data_doc = (await data.get("/openapi.json")).json()
            for path in ("/v1/admin/outbox", "/v1/admin/outbox/{id}/retry"):
                assert path in doc["paths"]
            assert "/v1/events" in data_doc["paths"]  # the gateway's feed: the data plane


async def test_bad_input_is_refused_and_changes_nothing(pg_dsn, redis_url, redis_prefix, db):
    # No dispatching here: only the requests under test may touch the rows.
    config = outbox_config(pg_dsn, redis_url, redis_prefix, dispatch=False)
    await insert_events(db, 2, "http://127.0.0.1:9/h", prefix="x")
    with trio.fail_after(60):
        async with (
            open_daemon(config) as (daemon, url),
            admin_client(url) as admin,
            # The feed is on the data plane; the admin routes, on the control plane.
            admin_client(daemon.data_urls[0], token=GATEWAY_TOKEN) as gw,
            admin_client(url, token=GATEWAY_TOKEN) as gw_control,
            admin_client(daemon.data_urls[0]) as admin_data,
        ):
            before = await snapshot(db)
            cases = [
                (admin.get("/v1/admin/outbox", params={"status": "bogus"}), 422, "status"),
                (admin.get("/v1/admin/outbox", params={"limit": "0"}), 422, "limit"),
                (admin.get("/v1/admin/outbox", params={"limit": "5000"}), 422, "limit"),
                (admin.get("/v1/admin/outbox", params={"limit": "abc"}), 422, "limit"),
                (admin.get("/v1/admin/outbox", params={"after": "-1"}), 422, "after"),
                (admin.post("/v1/admin/outbox/abc/retry"), 422, "id"),
                (admin.post("/v1/admin/outbox/99999999/retry"), 404, None),
                (gw.get("/v1/events", params={"after": "garbage"}), 422, "after"),
                (gw.get("/v1/events", params={"after": "1."}), 422, "after"),
                (gw.get("/v1/events", params={"after": "-1.2"}), 422, "after"),
                (gw.get("/v1/events", params={"limit": "5000"}), 422, "limit"),
                (admin_data.get("/v1/events"), 403, None),
                (gw_control.get("/v1/admin/outbox"), 403, None),
            ]
            for request, status, field in cases:
                r = await request
                assert r.status_code == status, (status, field, r.text)
                if field:
                    assert r.json()["error"]["details"]["errors"][0]["field"] == field
            assert await snapshot(db) == before


async def test_cli_list_and_retry(pg_dsn, redis_url, redis_prefix, db):
    data = config_dict(pg_dsn, redis_url, redis_prefix, outbox={"webhook_secret": SECRET})
    await insert_events(db, 1, "http://127.0.0.1:9/h?k=secret1", prefix="dead")
    await insert_events(db, 1, "http://127.0.0.1:9/h", prefix="done")
    async with db.transaction() as conn:
        # Through the legal moves: pending -> published -> dead / consumed.
        await conn.execute(
            "UPDATE outbox SET status = 'published', lease_expires_at = now() + interval '1 m'"
        )
        await conn.execute(
            "UPDATE outbox SET status = CASE WHEN event_key = 'dead1' THEN 'dead' ELSE"
            " 'consumed' END, lease_expires_at = NULL, attempts = 8"
        )
    code, out, err = await run_cli(data, "outbox", "list", "--status", "dead")
    assert code == 0, err
    (line,) = out.splitlines()
    event = json.loads(line)
    assert event["event_key"] == "dead1" and "secret1" not in line
    code, out, _ = await run_cli(data, "outbox", "retry", str(event["id"]))
    assert code == 0 and json.loads(out)["status"] == "pending"
    assert json.loads(out)["attempts"] == 0
    done = await db.fetchval("SELECT id FROM outbox WHERE event_key = 'done1'")
    before = await snapshot(db)
    code, _, err = await run_cli(data, "outbox", "retry", str(done))
    assert code == 1 and "consumed" in err
    assert await snapshot(db) == before
