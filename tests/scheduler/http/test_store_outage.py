"""Redis down: every route that needs it answers 503 store_unavailable with Retry-After,
the log says so once per outage (no traceback per request), and it recovers by itself.

Issue 10 item 14: with Redis stopped, select, release and explain answered
``500 internal`` with an unhandled ``coredis.exceptions.ConnectionError`` and a
traceback per request. A daemon process reaches Redis through the test's
blockable proxy; the test cuts the line twice (connections refused, then a
wedged server that accepts and never answers) and tries every such route two
times during each outage (twice each).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from ...proxy import open_proxy
from ...support import GATEWAY_TOKEN, DaemonProcess, admin_client, config_dict

SELECT = {"group": "g1", "platform": "openai", "model": "gpt-4o"}
UNAVAILABLE = "store unavailable: answering 503 until it is back"
BACK = "store back: requests succeed again"


def events(proc: DaemonProcess, event: str) -> list[dict[str, Any]]:
    return [r for r in proc.log_lines if r.get("event") == event]


async def calls(gw: httpx.AsyncClient, admin: httpx.AsyncClient, lease: str) -> dict[str, Any]:
    """One request to every route that needs Redis."""
    return {
        "select": await gw.post("/v1/select", json=SELECT),
        "renew": await gw.post(f"/v1/leases/{lease}/renew", json={}),
        "release": await gw.post(f"/v1/leases/{lease}/release", json={"status": 200}),
        "explain": await admin.get("/v1/admin/explain", params=SELECT),
        "buckets": await admin.get("/v1/admin/buckets"),
        "rebuild": await admin.post("/v1/admin/buckets/rebuild", json={"bucket": "g1/openai"}),
    }


@pytest.mark.slow
async def test_every_redis_route_answers_503_logs_once_and_recovers(
    pg_dsn: str, redis_url: str, redis_prefix: str, db: Any
) -> None:
    target = urlsplit(redis_url)
    async with open_proxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        proxied = f"redis://127.0.0.1:{proxy.port}{target.path or '/0'}"
        data = config_dict(
            pg_dsn,
            proxied,
            redis_prefix,
            redis={"connect_timeout_s": 0.3, "command_timeout_s": 0.3},
        )
        proc = DaemonProcess(data)
        try:
            with trio.fail_after(120):
                url = await proc.wait_ready()
                async with (
                    admin_client(url) as admin,
                    admin_client(proc.data(), token=GATEWAY_TOKEN) as gw,
                ):
                    r = await admin.post(
                        "/v1/admin/accounts",
                        json={
                            "name": "a",
                            "platform": "openai",
                            "groups": ["g1"],
                            "concurrency": 5,
                            "credentials": {"api_key": "sk-outage-" + "x" * 20},
                        },
                    )
                    assert r.status_code == 201, r.text
                    while (r := await gw.post("/v1/select", json=SELECT)).status_code != 200:
                        await trio.sleep(0.05)  # the builder publishes the bucket
                    lease = r.json()["lease_id"]
                    for outage, mode in enumerate(("refuse", "hold"), start=1):
                        await proxy.block(mode)
                        for _ in range(2):
                            for route, answer in (await calls(gw, admin, lease)).items():
                                assert answer.status_code == 503, (mode, route, answer.text)
                                error = answer.json()["error"]
                                assert error["code"] == "store_unavailable", (route, error)
                                assert error["details"]["store"] == "redis"
                                assert int(answer.headers["retry-after"]) >= 1, route
                        assert len(events(proc, UNAVAILABLE)) == outage
                        await proxy.unblock()
                        # Recovers by itself: no restart, the next requests just work.
                        while (r := await gw.post("/v1/select", json=SELECT)).status_code != 200:
                            assert r.status_code == 503, r.text
                            await trio.sleep(0.05)
                        lease = r.json()["lease_id"]
                        answers = await calls(gw, admin, lease)
                        assert {k: v.status_code for k, v in answers.items()} == dict.fromkeys(
                            answers, 200
                        ), {k: v.text for k, v in answers.items() if v.status_code != 200}
                        lease = (await gw.post("/v1/select", json=SELECT)).json()["lease_id"]
                        assert len(events(proc, BACK)) == outage
        finally:
            proc.terminate()
            with trio.move_on_after(30, shield=True):
                await proc.wait()
    # No traceback, no "internal error", no line per failed request.
    assert not events(proc, "unhandled error")
    assert not [r for r in events(proc, "request failed") if r.get("status") == 503]
