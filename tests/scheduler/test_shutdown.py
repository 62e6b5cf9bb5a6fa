"""SIGTERM: readiness 503 first, in-flight requests finish, new connections refused, exit 0.

In process, the test sends SIGTERM to itself while :func:`scheduler.cli.running.run_until_signal`
runs (trio's signal receiver works in the main thread); as a subprocess, the real
``run_daemon`` handles it and the exit code is checked. In-flight requests are
held open by an injected route that waits for the test's go-ahead, so "in
flight while draining" is a fact, not a timing guess.
"""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from accounts.db import Database
from scheduler.cli.running import run_until_signal
from scheduler.core.health import Phase
from scheduler.daemon import Daemon
from scheduler.http.endpoints import Call, Endpoint, Plane

from ..support import config_dict, make_config
from .core.sdnotify_support import open_notify_socket
from .slow_daemon import SlowDaemonProcess


class Gate:
    """An injected ``GET /test/slow`` that answers once the test opens the gate."""

    def __init__(self, plane: Plane = Plane.CONTROL) -> None:
        self.plane = plane
        self.entered = trio.Event()
        self.release = trio.Event()
        self.outcome: list[str] = []

    def endpoint(self) -> Endpoint:
        async def slow(call: Call) -> dict[str, bool]:
            self.entered.set()
            finished = False
            try:
                await self.release.wait()
                finished = True
            finally:
                self.outcome.append("finished" if finished else "cancelled")
            return {"ok": True}

        return Endpoint("GET", "/test/slow", slow, "test only", planes=(self.plane,))


async def _wait_running(daemon: Daemon, plane: Plane = Plane.CONTROL) -> str:
    """The base URL of ``plane`` once the daemon runs."""
    while daemon.health.phase is not Phase.RUNNING:
        await trio.sleep(0.01)
    return daemon.urls[0] if plane is Plane.CONTROL else daemon.data_urls[0]


async def _wait_refused(url: str) -> None:
    """Poll with fresh connections until connecting fails.

    A probe whose handshake the kernel completed just before the listener closed
    sits in the closed listener's backlog and is reset, unread: that counts as
    refused too (seen under load with two servers draining at once).
    """
    while True:
        try:
            async with httpx.AsyncClient(base_url=url, timeout=5) as fresh:
                await fresh.get("/livez")
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
            return
        await trio.sleep(0.02)


@pytest.mark.parametrize("plane", [Plane.CONTROL, Plane.DATA])
async def test_sigterm_flips_readiness_then_drains_in_flight_requests(
    pg_dsn: str, redis_url: str, redis_prefix: str, db: Database, plane: Plane
) -> None:
    """On either plane: /readyz of that port says 503 first, then its listener closes, and
    the request in flight there is answered."""
    config = make_config(
        pg_dsn, redis_url, redis_prefix, http={"drain_delay_s": 1.0, "drain_timeout_s": 10}
    )
    gate = Gate(plane)
    results: dict[str, Any] = {}
    async with open_notify_socket() as notify:
        daemon = Daemon(
            config, env={"NOTIFY_SOCKET": str(notify.path)}, extra_endpoints=[gate.endpoint()]
        )
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                done = trio.Event()

                async def run() -> None:
                    await run_until_signal(daemon)
                    done.set()

                nursery.start_soon(run)
                await notify.wait_for("READY=1")
                url = await _wait_running(daemon, plane)
                async with httpx.AsyncClient(base_url=url, timeout=20) as client:

                    async def slow_call() -> None:
                        results["slow"] = await client.get("/test/slow")

                    nursery.start_soon(slow_call)
                    await gate.entered.wait()
                    os.kill(os.getpid(), signal.SIGTERM)

                    # Readiness flips first, while connections are still accepted.
                    async with httpx.AsyncClient(base_url=url, timeout=5) as probe:
                        while (ready := await probe.get("/readyz")).status_code == 200:
                            await trio.sleep(0.01)
                    assert ready.status_code == 503
                    assert ready.json()["phase"] == "draining"
                    assert "STOPPING=1" in await notify.wait_for("STOPPING=1")

                    # Then new connections are refused; the in-flight one is still open.
                    await _wait_refused(url)
                    assert not done.is_set()
                    assert gate.outcome == []
                    gate.release.set()
                    await done.wait()
    assert results["slow"].status_code == 200
    assert results["slow"].json() == {"ok": True}
    assert gate.outcome == ["finished"]
    assert daemon.health.phase is Phase.STOPPED


@pytest.mark.parametrize("plane", [Plane.CONTROL, Plane.DATA])
async def test_work_past_the_drain_timeout_is_cancelled(
    pg_dsn: str, redis_url: str, redis_prefix: str, db: Database, plane: Plane
) -> None:
    config = make_config(pg_dsn, redis_url, redis_prefix, http={"drain_timeout_s": 0.5})
    gate = Gate(plane)
    daemon = Daemon(config, env={}, extra_endpoints=[gate.endpoint()])
    errors: list[BaseException] = []
    # Bounded well below the 30 s a hung drain would take: exits after the drain timeout.
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def run() -> None:
                await run_until_signal(daemon)
                done.set()

            nursery.start_soon(run)
            url = await _wait_running(daemon, plane)
            async with httpx.AsyncClient(base_url=url, timeout=20) as client:

                async def slow_call() -> None:
                    try:
                        await client.get("/test/slow")
                    except httpx.HTTPError as exc:
                        errors.append(exc)

                nursery.start_soon(slow_call)
                await gate.entered.wait()
                os.kill(os.getpid(), signal.SIGTERM)
                await done.wait()
    assert gate.outcome == ["cancelled"]
    assert len(errors) == 1  # the connection closed without an answer
    assert daemon.health.phase is Phase.STOPPED


async def test_subprocess_drains_and_exits_0_on_sigterm(
    pg_dsn: str, redis_url: str, redis_prefix: str, db: Database
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        release = Path(directory) / "release"
        proc = SlowDaemonProcess(
            config_dict(pg_dsn, redis_url, redis_prefix, http={"drain_timeout_s": 10}),
            release_file=release,
        )
        try:
            url = await proc.wait_ready()
            result: dict[str, httpx.Response] = {}
            with trio.fail_after(30):
                # The client outlives the nursery: the request task must end first.
                async with (
                    httpx.AsyncClient(base_url=url, timeout=20) as client,
                    trio.open_nursery() as nursery,
                ):

                    async def slow_call() -> None:
                        result["slow"] = await client.get("/test/slow")

                    nursery.start_soon(slow_call)
                    while not any(r.get("event") == "slow request entered" for r in proc.log_lines):
                        await trio.sleep(0.02)
                    proc.terminate()
                    await _wait_refused(url)
                    assert "slow" not in result
                    release.touch()
            assert await proc.wait() == 0
        finally:
            proc.kill()
    assert result["slow"].status_code == 200
    events = [r.get("event") for r in proc.log_lines]
    assert events.index("draining") < events.index("stopped")
