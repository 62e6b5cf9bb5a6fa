"""Readiness follows the stores; liveness follows the loop and the supervisor.

The daemon reaches PostgreSQL and Redis through :mod:`tests.proxy`, and the test
blocks the proxy (refusing new connections, or holding them like a wedged
server) instead of stopping the machine's shared servers. ``/readyz`` must turn
503 naming the store, and 200 again once the line is back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

from accounts.db import Database
from scheduler.core.health import Health, Phase, State
from scheduler.core.metrics import Metrics

from ...proxy import Proxy, open_proxy
from ...support import make_config, open_daemon, proxy_target, via_proxy
from .test_supervisor import Flaky


@asynccontextmanager
async def _proxied_daemon(
    pg_dsn: str, redis_url: str, redis_prefix: str, **daemon: Any
) -> AsyncIterator[tuple[dict[str, Proxy], httpx.AsyncClient, Any]]:
    async with (
        open_proxy(*proxy_target(pg_dsn, 5432)) as pg_proxy,
        open_proxy(*proxy_target(redis_url, 6379)) as redis_proxy,
    ):
        config = make_config(
            via_proxy(pg_dsn, pg_proxy.port),
            via_proxy(redis_url, redis_proxy.port),
            redis_prefix,
            database={"connect_timeout_s": 0.5, "statement_timeout_s": 2},
            redis={"connect_timeout_s": 0.5, "command_timeout_s": 0.5},
            health={"probe_interval_s": 0.1, "probe_timeout_s": 0.3},
            **daemon,
        )
        async with (
            open_daemon(config) as (the_daemon, url),
            httpx.AsyncClient(base_url=url, timeout=5) as client,
        ):
            yield {"postgres": pg_proxy, "redis": redis_proxy}, client, the_daemon


async def _wait_readyz(client: httpx.AsyncClient, status: int) -> dict[str, Any]:
    while True:
        try:
            response = await client.get("/readyz")
        except httpx.TransportError:
            # A keep-alive connection the server closed as we reused it; ask again.
            response = None
        if response is not None and response.status_code == status:
            body: dict[str, Any] = response.json()
            return body
        await trio.sleep(0.05)


@pytest.mark.parametrize("store", ["postgres", "redis"])
@pytest.mark.parametrize("mode", ["refuse", "hold"])
async def test_readyz_follows_a_store_outage(
    pg_dsn: str, redis_url: str, redis_prefix: str, db: Database, store: str, mode: str
) -> None:
    with trio.fail_after(60):
        async with _proxied_daemon(pg_dsn, redis_url, redis_prefix) as (proxies, client, _d):
            body = await _wait_readyz(client, 200)
            assert body["components"][store]["state"] == "up"

            await proxies[store].block(mode)  # type: ignore[arg-type]
            body = await _wait_readyz(client, 503)
            assert body["ready"] is False
            assert body["components"][store]["state"] == "down", body
            assert body["components"][store]["essential"] is True
            other = "redis" if store == "postgres" else "postgres"
            assert body["components"][other]["state"] == "up"
            # Liveness is about this process, not its stores.
            assert (await client.get("/livez")).status_code == 200

            await proxies[store].unblock()
            body = await _wait_readyz(client, 200)
            assert body["components"][store]["state"] == "up"


async def test_non_essential_actor_given_up_shows_in_readyz(
    pg_dsn: str, redis_url: str, redis_prefix: str, db: Database
) -> None:
    """Past its restart limit a non-essential actor stays down; the daemon stays ready."""
    config = make_config(
        pg_dsn,
        redis_url,
        redis_prefix,
        supervisor={"backoff_initial_s": 0.01, "backoff_max_s": 0.02, "max_restarts": 2},
    )
    with trio.fail_after(30):
        async with (
            open_daemon(config, extra_actors=[Flaky("optional-extra")]) as (_daemon, url),
            httpx.AsyncClient(base_url=url, timeout=5) as client,
        ):
            while True:
                body = (await client.get("/readyz")).json()
                if "gave up" in body["components"]["optional-extra"]["detail"]:
                    break
                await trio.sleep(0.02)
            response = await client.get("/readyz")
            assert response.status_code == 200
            comp = response.json()["components"]["optional-extra"]
            assert comp["state"] == "down" and comp["essential"] is False


def test_liveness_rules() -> None:
    """Live while the loop lag is within the bound and the supervisor is not failing."""
    health = Health(Metrics(), max_loop_lag_s=0.5)
    health.set_phase(Phase.RUNNING)
    assert health.live()
    health.loop_lag_s = 0.5
    assert health.live()
    health.loop_lag_s = 0.51
    assert not health.live()
    health.loop_lag_s = 0.0
    health.set_phase(Phase.DRAINING)
    assert health.live()  # draining is healthy, just not ready
    health.set_phase(Phase.FAILING)
    assert not health.live()


def test_readiness_rules() -> None:
    """Ready only when RUNNING and every essential component is up (or degraded)."""
    metrics = Metrics()
    health = Health(metrics, max_loop_lag_s=1)
    health.register("db", essential=True)
    health.register("extra", essential=False)
    health.set("db", State.UP)
    assert not health.ready()  # still starting
    health.set_phase(Phase.RUNNING)
    assert health.ready()
    assert metrics.registry.get_sample_value("stationmaster_ready") == 1
    health.set("extra", State.DOWN, "gave up")
    assert health.ready()
    health.set("db", State.DEGRADED, "fallback")
    assert health.ready()
    health.set("db", State.DOWN, "no answer")
    assert not health.ready()
    assert metrics.registry.get_sample_value("stationmaster_ready") == 0
    health.set("db", State.UP)
    health.set_phase(Phase.DRAINING)
    assert not health.ready()
    assert health.snapshot()["phase"] == "draining"
