"""Redis restarts empty, faster than the readiness probe looks: the daemon heals by itself.

Issue 10 item 15: after Redis came back empty, the schedule snapshot returned
only with the next account change or full rebuild, and an instance that missed
the outage kept its in-memory version: the new counter started below it, every
new version was ignored, and a disabled account was handed out. Here the
daemon's Redis (a private server on a fixed port) is restarted with nothing
kept while the probe interval is a minute, so readiness never notices; the
snapshot must be back within seconds with no change at all, and disabling an
account must then take it out of every answer.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio

from snapshot.keys import BucketKeys
from snapshot.redis import RedisConfig, open_redis

from ...support import (
    GATEWAY_TOKEN,
    admin_client,
    free_port,
    make_config,
    open_daemon,
    start_embedded_redis,
)
from .selectkit import BUCKET

SELECT = {"group": "g1", "platform": "openai", "model": "gpt-4o"}


async def _account(admin: Any, name: str) -> dict[str, Any]:
    r = await admin.post(
        "/v1/admin/accounts",
        json={
            "name": name,
            "platform": "openai",
            "groups": ["g1"],
            "concurrency": 50,
            "credentials": {"api_key": f"sk-restart-{name}-" + "x" * 20},
        },
    )
    assert r.status_code == 201, r.text
    result: dict[str, Any] = r.json()
    return result


@pytest.mark.slow
async def test_redis_restarted_empty_is_healed_and_followed(
    pg_dsn: str, redis_prefix: str, db: Any
) -> None:
    directory = Path(tempfile.mkdtemp(prefix="smtest-restart-"))
    port = free_port()
    servers = contextlib.ExitStack()
    try:
        url = servers.enter_context(start_embedded_redis(directory, port))
        config = make_config(
            pg_dsn, url, redis_prefix, health={"probe_interval_s": 60, "probe_timeout_s": 0.5}
        )
        with trio.fail_after(90):
            async with (
                open_daemon(config) as (daemon, base),
                admin_client(base) as admin,
                admin_client(daemon.data_urls[0], token=GATEWAY_TOKEN) as gw,
                open_redis(RedisConfig(url=url, key_prefix=redis_prefix)) as redis,
            ):
                a, b = await _account(admin, "a"), await _account(admin, "b")
                while (await gw.post("/v1/select", json=SELECT)).status_code != 200:
                    await trio.sleep(0.05)
                done = 0
                while done < 3:  # push the version number up
                    r = await admin.post("/v1/admin/buckets/rebuild", json={"bucket": "g1/openai"})
                    outcome = r.json()["results"][0]["outcome"]
                    assert outcome in ("activated", "busy"), r.text  # busy: the builder is at it
                    done += outcome == "activated"
                held = daemon.services.schedule.view.get(BUCKET)
                while held is None or held.version < 4:
                    await trio.sleep(0.05)
                    held = daemon.services.schedule.view.get(BUCKET)
                # Every account change is published already: only healing can bring it back.
                while await db.fetchval(
                    "SELECT count(*) FROM schedule_events WHERE consumed_at IS NULL"
                ):
                    await trio.sleep(0.05)
                redis_seen = daemon.health.get("redis")
                assert redis_seen is not None
                seen_since = redis_seen.since

                servers.close()  # Redis restarts with nothing kept, on the same port
                servers.enter_context(start_embedded_redis(directory, port))
                active = BucketKeys(redis_prefix, BUCKET).active
                builder = daemon.services.schedule.builder
                with trio.fail_after(10):  # healed with no account change at all
                    while not (builder.healed and await _exists(redis, active)):
                        await trio.sleep(0.05)

                r = await admin.patch(
                    f"/v1/admin/accounts/{a['id']}",
                    json={"status": "disabled"},
                    headers={"if-match": str(a["version"])},
                )
                assert r.status_code == 200, r.text
                with trio.fail_after(10):  # the view follows the new epoch
                    while a["id"] in daemon.services.schedule.view.get(BUCKET).by_id:
                        await trio.sleep(0.05)
                picks = set()
                for _ in range(20):
                    r = await gw.post("/v1/select", json=SELECT)
                    assert r.status_code == 200, r.text
                    picks.add(r.json()["account"]["id"])
                    await gw.post(
                        f"/v1/leases/{r.json()['lease_id']}/release", json={"status": 200}
                    )
                assert picks == {b["id"]}
                # The readiness probe never saw the restart: the redis component never changed.
                assert daemon.health.get("redis").since == seen_since  # type: ignore[union-attr]
    finally:
        servers.close()
        shutil.rmtree(directory, ignore_errors=True)


async def _exists(redis: Any, key: str) -> bool:
    with contextlib.suppress(Exception):  # the new server may still be starting
        return bool(await redis.client.exists([key]))
    return False
