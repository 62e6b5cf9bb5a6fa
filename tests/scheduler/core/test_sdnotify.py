"""systemd notify: READY=1, WATCHDOG=1 pings (only while the loop keeps up), STOPPING=1.

A bound Unix datagram socket stands in for systemd's ``$NOTIFY_SOCKET``. The
end-to-end tests run ``stationmaster run`` as a subprocess with
``WATCHDOG_USEC=300000`` (pings every 0.15 s), with and without a foreign
``WATCHDOG_PID``; the watchdog rule itself is checked on the autojump clock.
"""

from __future__ import annotations

import os
import socket

import pytest
import trio
import trio.testing

from accounts.db import Database
from scheduler.core.health import Health
from scheduler.core.metrics import Metrics
from scheduler.core.systemd import Notifier, Watchdog, watchdog_interval_s

from ...support import DaemonProcess, config_dict
from .sdnotify_support import NotifySocket, open_notify_socket


async def _collect(notify: NotifySocket) -> None:
    while True:
        await notify.receive()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "300000"}, 0.15),
        ({"WATCHDOG_USEC": "300000", "WATCHDOG_PID": str(os.getpid())}, 0.15),
        ({"WATCHDOG_USEC": "300000", "WATCHDOG_PID": "1"}, None),  # another process's
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval_from_env(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval_s(env) == expected


async def test_notifier_without_socket_is_a_no_op_and_abstract_addresses_work() -> None:
    silent = Notifier({})
    assert not silent.enabled
    silent.notify("READY=1")  # nothing to send to, nothing raised
    name = f"smtest-{os.getpid()}-abstract"
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with sock, trio.fail_after(5):
        await sock.bind("\0" + name)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        notifier.ready("running")
        fields = (await sock.recv(4096)).decode().split("\n")
        notifier.close()
    assert fields[0] == "READY=1"
    assert "STATUS=running" in fields
    assert f"MAINPID={os.getpid()}" in fields


async def test_watchdog_pings_only_while_loop_lag_is_under_the_bound(
    autojump_clock: trio.testing.MockClock,
) -> None:
    health = Health(Metrics(), max_loop_lag_s=1.0)
    async with open_notify_socket() as notify:
        notifier = Notifier({"NOTIFY_SOCKET": str(notify.path)})
        watchdog = Watchdog(notifier, health, interval_s=0.5)

        def pings() -> int:
            return notify.fields().count("WATCHDOG=1")

        with trio.fail_after(100):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_collect, notify)
                await nursery.start(watchdog.run)
                await trio.sleep(2.2)
                await trio.testing.wait_all_tasks_blocked()
                healthy = pings()
                assert healthy >= 4

                health.loop_lag_s = 1.5  # the loop is falling behind: stop vouching
                await trio.sleep(0.6)
                await trio.testing.wait_all_tasks_blocked()
                before = pings()
                await trio.sleep(3)
                await trio.testing.wait_all_tasks_blocked()
                assert pings() == before

                health.loop_lag_s = 0.1
                await trio.sleep(2)
                await trio.testing.wait_all_tasks_blocked()
                assert pings() >= before + 3
                nursery.cancel_scope.cancel()
        notifier.close()


async def test_subprocess_ready_watchdog_stopping(
    pg_dsn: str, redis_url: str, redis_prefix: str, db: Database
) -> None:
    async with open_notify_socket() as notify:
        proc = DaemonProcess(
            config_dict(pg_dsn, redis_url, redis_prefix),
            extra_env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "300000"},
        )
        try:
            with trio.fail_after(60):
                ready = await notify.wait_for("READY=1")
                assert f"MAINPID={proc.proc.pid}" in ready
                seen_after_ready = 0
                while seen_after_ready < 3:
                    if "WATCHDOG=1" in await notify.receive():
                        seen_after_ready += 1
                await proc.wait_ready()
                proc.terminate()
                stopping = await notify.wait_for("STOPPING=1")
                assert any(f.startswith("STATUS=") for f in stopping)
                assert await proc.wait() == 0
        finally:
            proc.kill()


async def test_subprocess_ignores_a_watchdog_meant_for_another_pid(
    pg_dsn: str, redis_url: str, redis_prefix: str, db: Database
) -> None:
    """WATCHDOG_PID names another process: READY=1 and STOPPING=1, but no pings."""
    async with open_notify_socket() as notify:
        proc = DaemonProcess(
            config_dict(pg_dsn, redis_url, redis_prefix),
            extra_env={
                "NOTIFY_SOCKET": str(notify.path),
                "WATCHDOG_USEC": "300000",
                "WATCHDOG_PID": "1",
            },
        )
        try:
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_collect, notify)
                    await proc.wait_ready()
                    # Five would-be watchdog periods.
                    await trio.sleep(0.75)
                    proc.terminate()
                    assert await proc.wait() == 0
                    await trio.sleep(0.05)  # let the last datagrams arrive
                    nursery.cancel_scope.cancel()
        finally:
            proc.kill()
    fields = notify.fields()
    assert "READY=1" in fields and "STOPPING=1" in fields
    assert "WATCHDOG=1" not in fields
