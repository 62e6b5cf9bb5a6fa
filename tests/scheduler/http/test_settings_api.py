"""``/v1/admin/settings`` and ``stationmaster settings``: CAS writes, 4xx, propagation.

The multi-instance tests run two daemon processes on one database and one Redis
prefix and print the measured write -> other-instance delay (not asserted: timings
belong to ``bench/settings.py``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from accounts.db import Database
from scheduler.core.config import Config

from ...proxy import open_proxy
from ...snapshot.test_settings_model import BAD_VALUES
from ...support import (
    GATEWAY_TOKEN,
    ROOT,
    DaemonProcess,
    admin_client,
    config_dict,
    config_env,
    open_daemon,
)

PATH = "/v1/admin/settings"


async def _put(client: httpx.AsyncClient, body: Any, version: int | str | None) -> httpx.Response:
    headers = {} if version is None else {"if-match": f'"{version}"'}
    return await client.put(PATH, json=body, headers=headers)


async def test_get_put_round_trip(db: Database, config: Config) -> None:
    with trio.fail_after(30):
        async with open_daemon(config) as (daemon, url), admin_client(url) as client:
            first = await client.get(PATH)
            assert first.status_code == 200
            body = first.json()
            assert body["version"] == 0 and body["document"] == {}
            assert body["settings"]["quota"]["default_5h_threshold"] is None
            assert body["settings"]["scoring"]["top_k"] == 7
            assert first.headers["etag"] == '"0"'

            put = await _put(client, {"quota": {"default_5h_threshold": 0.9}}, 0)
            assert put.status_code == 200, put.text
            body = put.json()
            assert body["version"] == 1 and put.headers["etag"] == '"1"'
            assert body["document"] == {"quota": {"default_5h_threshold": 0.9}}
            assert body["settings"]["quota"]["default_5h_threshold"] == 0.9
            assert body["settings"]["scoring"]["top_k"] == 7
            # Write-through: this instance serves the new value before answering.
            assert body["instance_version"] == 1
            assert daemon.services.settings.get().quota.default_5h_threshold == 0.9

            # null resets to the default; W/ and bare versions are accepted.
            put = await client.put(
                PATH,
                json={"quota": {"default_5h_threshold": None}, "scoring": {"top_k": 5}},
                headers={"if-match": 'W/"1"'},
            )
            assert put.status_code == 200, put.text
            assert put.json()["document"] == {"scoring": {"top_k": 5}}
            assert daemon.services.settings.get().quota.default_5h_threshold is None
            rows = await db.fetchval("SELECT count(*) FROM schedule_events WHERE kind = 'settings'")
            assert rows == 2


async def test_bad_writes_answer_4xx_and_change_nothing(db: Database, config: Config) -> None:
    """Bad input tried: every field out of range or mistyped (422 naming it), unknown keys,
    a non-object body and non-JSON (400/422), no If-Match (428), a malformed If-Match (422),
    a stale If-Match (409 with current_version), a gateway token (403), no token (401)."""
    with trio.fail_after(60):
        async with open_daemon(config) as (daemon, url), admin_client(url) as client:
            assert (await _put(client, {"scoring": {"top_k": 3}}, 0)).status_code == 200
            for key, value in BAD_VALUES:
                section, name = key.split(".")
                answer = await _put(client, {section: {name: value}}, 1)
                assert answer.status_code == 422, (key, answer.text)
                error = answer.json()["error"]
                assert error["details"]["errors"][0]["field"] == key, (key, error)
            checks: list[tuple[Callable[[], Any], int, str | None]] = [
                (lambda: _put(client, {"scoring": {"topk": 1}}, 1), 422, "scoring.topk"),
                (lambda: _put(client, {"nope": {}}, 1), 422, "nope"),
                (lambda: _put(client, {"quota": {"nope": None}}, 1), 422, "quota.nope"),
                (lambda: _put(client, [1, 2], 1), 422, None),
                (lambda: _put(client, {"leases": {"ttl_s": 900, "max_lifetime_s": "x"}}, 1), 422,
                 "leases.max_lifetime_s"),
                (lambda: client.put(PATH, content=b'{"scoring": {"top_k": 4}}', headers={
                 "if-match": "1", "content-type": "text/plain"}), 415, None),
                (lambda: client.put(PATH, content=b"{not json", headers={"if-match": "1"}), 400,
                 None),
                (lambda: _put(client, {"scoring": {"top_k": 4}}, None), 428, None),
                (lambda: _put(client, {"scoring": {"top_k": 4}}, "one"), 422, "If-Match"),
                (lambda: _put(client, {"scoring": {"top_k": 4}}, 0), 409, None),
                (lambda: client.put(PATH, json={}, headers={"authorization":
                 f"Bearer {GATEWAY_TOKEN}", "if-match": "1"}), 403, None),
                (lambda: _anonymous_put(url), 401, None),
            ]  # fmt: skip
            for make, status, field in checks:
                answer = await make()
                assert answer.status_code == status, answer.text
                if field is not None:
                    assert answer.json()["error"]["details"]["errors"][0]["field"] == field
                if status == 409:
                    assert answer.json()["error"]["details"]["current_version"] == 1
            after = (await client.get(PATH)).json()
            assert after["version"] == 1 and after["document"] == {"scoring": {"top_k": 3}}
            assert daemon.services.settings.version == 1


async def _anonymous_put(url: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url) as anonymous:
        return await anonymous.put(PATH, json={}, headers={"if-match": "1"})


def _cli(config: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATIONMASTER_")}
    env.update(config_env(config))
    return subprocess.run(
        [sys.executable, "-m", "scheduler", "settings", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_cli_show_set_reset_reach_a_running_daemon(
    db: Database, config: Config, pg_dsn: str, redis_url: str, redis_prefix: str
) -> None:
    """Bad input tried: unknown key, out-of-range value, missing '=', stale --if-match."""
    data = config_dict(pg_dsn, redis_url, redis_prefix)
    with trio.fail_after(90):
        async with open_daemon(config) as (daemon, _url):
            snapshot = daemon.services.settings
            done = await trio.to_thread.run_sync(
                _cli, data, "set", "quota.default_7d_threshold=0.95", "scoring.top_k=4"
            )
            assert done.returncode == 0, done.stderr
            out = json.loads(done.stdout)
            assert out["version"] == 1 and out["published"] is True
            assert out["settings"]["scoring"]["top_k"] == 4
            with trio.fail_after(10):
                while snapshot.version < 1:
                    await trio.sleep(0.01)
            assert snapshot.get().quota.default_7d_threshold == 0.95

            done = await trio.to_thread.run_sync(_cli, data, "reset", "scoring", "--if-match", "1")
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["document"] == {"quota": {"default_7d_threshold": 0.95}}

            for args, code, needle in [
                (("set", "scoring.nope=1"), 2, "scoring.nope: unknown field"),
                (("set", "scoring.top_k=0"), 2, "scoring.top_k: Expected `int` >= 1"),
                (("set", "scoring.top_k"), 2, "expected KEY=VALUE"),
                (("set", "scoring.top_k=3", "--if-match", "1"), 1, "version 2, not 1"),
            ]:
                done = await trio.to_thread.run_sync(_cli, data, *args)
                assert done.returncode == code, (args, done.stdout, done.stderr)
                assert needle in done.stderr, (args, done.stderr)

            shown = await trio.to_thread.run_sync(_cli, data, "show")
            assert shown.returncode == 0, shown.stderr
            assert json.loads(shown.stdout)["version"] == 2
            with trio.fail_after(10):
                while snapshot.version < 2:
                    await trio.sleep(0.01)
            assert snapshot.get().scoring.top_k == 7


async def _wait_version(client: httpx.AsyncClient, version: int, timeout_s: float = 15) -> float:
    """Poll ``instance_version`` until it reaches ``version``; seconds it took."""
    start = time.perf_counter()
    with trio.fail_after(timeout_s):
        while (await client.get(PATH)).json()["instance_version"] < version:
            await trio.sleep(0.002)
    return time.perf_counter() - start


async def _metric(client: httpx.AsyncClient, event: str) -> float:
    text = (await client.get("/metrics")).text
    match = re.search(rf'stationmaster_settings_events_total\{{event="{event}"\}} (\S+)', text)
    return float(match.group(1)) if match else 0.0


def _stop(*daemons: DaemonProcess) -> None:
    for d in daemons:
        d.terminate()


@pytest.mark.slow
async def test_two_daemon_processes_see_each_others_writes(
    db: Database, pg_dsn: str, redis_url: str, redis_prefix: str
) -> None:
    data = config_dict(pg_dsn, redis_url, redis_prefix)
    a, b = DaemonProcess(data), DaemonProcess(data)
    try:
        with trio.fail_after(60):
            url_a, url_b = await a.wait_ready(), await b.wait_ready()
            async with admin_client(url_a) as ca, admin_client(url_b) as cb:
                delays: list[float] = []
                for version in range(1, 11):
                    writer, reader = (ca, cb) if version % 2 else (cb, ca)
                    put = await _put(writer, {"scoring": {"top_k": version}}, version - 1)
                    assert put.status_code == 200, put.text
                    delays.append(await _wait_version(reader, version))
                final = (await cb.get(PATH)).json()
                assert final["version"] == 10 and final["settings"]["scoring"]["top_k"] == 10
                # Every write reached both instances by pub/sub, not only through the 2 s
                # version check (which alone would also pass the loop above).
                for client in (ca, cb):
                    while await _metric(client, "invalidations") < 10:
                        await trio.sleep(0.05)
                invalidations = await _metric(ca, "invalidations") + await _metric(
                    cb, "invalidations"
                )
        delays.sort()
        print(
            f"\nsettings propagation across 2 processes over {len(delays)} writes: "
            f"median {delays[len(delays) // 2] * 1000:.1f} ms, max {delays[-1] * 1000:.1f} ms "
            "(includes the reader's HTTP polling); "
            f"invalidations received: {invalidations:.0f}"
        )
    finally:
        _stop(a, b)
        with trio.fail_after(30):
            await a.wait()
            await b.wait()


@pytest.mark.slow
async def test_redis_outage_writes_succeed_and_propagate_by_version_check(
    db: Database, pg_dsn: str, redis_url: str, redis_prefix: str
) -> None:
    """B reaches Redis through a proxy the test cuts: writes on either side still land and
    propagate (periodic version check); after the proxy is back B resubscribes and
    receives invalidations again."""
    target = urlsplit(redis_url)
    data_a = config_dict(pg_dsn, redis_url, redis_prefix)
    async with open_proxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        proxied = f"redis://127.0.0.1:{proxy.port}{target.path or '/0'}"
        data_b = config_dict(pg_dsn, proxied, redis_prefix, redis={"command_timeout_s": 0.5})
        a, b = DaemonProcess(data_a), DaemonProcess(data_b)
        try:
            with trio.fail_after(90):
                url_a, url_b = await a.wait_ready(), await b.wait_ready()
                async with admin_client(url_a) as ca, admin_client(url_b) as cb:
                    assert await _metric(cb, "subscriptions") == 1
                    await proxy.block("refuse")
                    put = await _put(cb, {"scoring": {"top_k": 2}}, 0)
                    assert put.status_code == 200, put.text  # committed; publish failed
                    slow_a = await _wait_version(ca, 1)
                    put = await _put(ca, {"scoring": {"top_k": 3}}, 1)
                    assert put.status_code == 200, put.text
                    slow_b = await _wait_version(cb, 2)
                    assert await _metric(cb, "publish_failures") == 1

                    await proxy.unblock()
                    with trio.fail_after(20):
                        while await _metric(cb, "subscriptions") < 2:
                            await trio.sleep(0.05)
                    before = await _metric(cb, "invalidations")
                    put = await _put(ca, {"scoring": {"top_k": 4}}, 2)
                    assert put.status_code == 200, put.text
                    back = await _wait_version(cb, 3)
                    with trio.fail_after(10):
                        while await _metric(cb, "invalidations") <= before:
                            await trio.sleep(0.05)
                    assert (await cb.get(PATH)).json()["settings"]["scoring"]["top_k"] == 4
            print(
                f"\nRedis cut: B->A {slow_a * 1000:.0f} ms, A->B {slow_b * 1000:.0f} ms "
                f"(version check every 2 s); after reconnect A->B {back * 1000:.1f} ms"
            )
        finally:
            _stop(a, b)
            with trio.fail_after(30):
                await a.wait()
                await b.wait()
