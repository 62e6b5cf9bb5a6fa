"""HTTP basics: body limit (413), JSON 404/405, OpenAPI completeness, /metrics content.

Bad inputs tried: a body one byte over ``http.max_body_bytes`` with a
Content-Length header, the same streamed chunked (no Content-Length), an
oversized body on a route that declares none, a non-numeric Content-Length,
an unknown path, a wrong method. Each answer is a JSON error body, and the
handler never ran.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import trio

from accounts.db import Database
from scheduler.http.endpoints import Call, Endpoint, Scope
from scheduler.http.planes import all_endpoints

from ...support import make_config, open_daemon
from ..core.test_supervisor import Flaky

LIMIT = 1024


class EchoBody(msgspec.Struct):
    text: str


def _echo_endpoints(calls: list[str]) -> list[Endpoint]:
    async def echo(call: Call) -> dict[str, int]:
        calls.append("echo")
        return {"length": len(call.body.text)}

    async def poke(call: Call) -> dict[str, bool]:
        calls.append("poke")
        return {"ok": True}

    return [
        Endpoint("POST", "/test/echo", echo, "test only", body=EchoBody),
        Endpoint("POST", "/test/poke", poke, "test only: declares no body"),
    ]


def _body_of(size: int) -> bytes:
    """A valid EchoBody JSON document of exactly ``size`` bytes."""
    skeleton = len(b'{"text":""}')
    return b'{"text":"' + b"x" * (size - skeleton) + b'"}'


async def _chunks(data: bytes, size: int = 256) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    return error


async def test_body_limit_unknown_route_and_wrong_method(
    pg_dsn: str, redis_url: str, redis_prefix: str, db: Database
) -> None:
    calls: list[str] = []
    config = make_config(pg_dsn, redis_url, redis_prefix, http={"max_body_bytes": LIMIT})
    with trio.fail_after(30):
        async with (
            open_daemon(config, extra_endpoints=_echo_endpoints(calls)) as (_d, url),
            httpx.AsyncClient(base_url=url, timeout=5) as client,
        ):
            at_limit = await client.post("/test/echo", content=_body_of(LIMIT))
            assert at_limit.status_code == 200 and at_limit.json() == {"length": LIMIT - 11}
            assert calls == ["echo"]

            over = _body_of(LIMIT + 1)
            error = _assert_error(
                await client.post("/test/echo", content=over), 413, "payload_too_large"
            )
            assert str(LIMIT) in error["message"]
            chunked = await client.post("/test/echo", content=_chunks(over))
            assert "content-length" not in chunked.request.headers
            _assert_error(chunked, 413, "payload_too_large")
            _assert_error(
                await client.post("/test/poke", content=_chunks(over)), 413, "payload_too_large"
            )
            assert calls == ["echo"]  # none of the refused requests reached a handler

            _assert_error(await client.get("/no/such/route"), 404, "not_found")
            _assert_error(await client.post("/livez"), 405, "method_not_allowed")
            _assert_error(await client.get("/test/echo"), 405, "method_not_allowed")


async def test_openapi_lists_every_route(
    pg_dsn: str, redis_url: str, redis_prefix: str, db: Database
) -> None:
    """Each plane documents exactly the routes it serves; together, every declared route."""
    config = make_config(pg_dsn, redis_url, redis_prefix)
    docs = {}
    with trio.fail_after(30):
        async with open_daemon(config) as (daemon, url):
            for plane, base in (("control", url), ("data", daemon.data_urls[0])):
                async with httpx.AsyncClient(base_url=base, timeout=5) as client:
                    response = await client.get("/openapi.json")
                assert response.status_code == 200
                docs[plane] = response.json()
    documented = {}
    for plane, doc in docs.items():
        assert doc["openapi"].startswith("3.")
        documented[plane] = {
            (method.upper(), path) for path, ops in doc["paths"].items() for method in ops
        }
    declared = {(e.method, e.path) for e in all_endpoints()}
    assert documented["control"] | documented["data"] == declared
    probes = {("GET", "/livez"), ("GET", "/readyz"), ("GET", "/openapi.json")}
    assert documented["control"] & documented["data"] == probes
    assert ("GET", "/metrics") in documented["control"]
    gateway = {(e.method, e.path) for e in all_endpoints() if e.scope is Scope.GATEWAY}
    assert gateway <= documented["data"]
    assert documented["data"] == gateway | probes


async def test_metrics_carry_build_info_restarts_loop_lag_and_probe_latency(
    pg_dsn: str, redis_url: str, redis_prefix: str, db: Database
) -> None:
    config = make_config(
        pg_dsn,
        redis_url,
        redis_prefix,
        supervisor={"backoff_initial_s": 0.01, "backoff_max_s": 0.02, "max_restarts": 2},
    )
    flaky = Flaky("metrics-flaky")
    with trio.fail_after(30):
        async with (
            open_daemon(config, extra_actors=[flaky]) as (_d, url),
            httpx.AsyncClient(base_url=url, timeout=5) as client,
        ):
            while len(flaky.starts) < 3:
                await trio.sleep(0.02)
            # The daemon shares this trio loop: block it for 0.6 s. The lag actor's
            # 0.25 s sleep wakes at least 0.35 s late and reports it before its next
            # period (0.25 s later), long before this one request is answered.
            time.sleep(0.6)  # blocking the loop is the point
            response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "stationmaster_build_info{" in text and 'version="' in text
    assert 'stationmaster_actor_restarts_total{actor="metrics-flaky"} 2.0' in text
    lag = re.search(r"^stationmaster_loop_lag_seconds (\S+)$", text, re.MULTILINE)
    assert lag is not None and float(lag.group(1)) >= 0.3, lag
    assert 'stationmaster_store_probe_seconds_count{store="postgres"}' in text
    assert 'stationmaster_store_probe_seconds_count{store="redis"}' in text
    assert 'stationmaster_store_up{store="redis"} 1.0' in text
    assert "stationmaster_ready 1.0" in text
