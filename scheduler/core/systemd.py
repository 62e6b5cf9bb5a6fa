"""systemd ``Type=notify`` support without extra dependencies.

:class:`Notifier` sends datagrams to ``$NOTIFY_SOCKET`` (a path, or an abstract
socket when it starts with ``@``); with no socket set, every call is a no-op.
:class:`Watchdog` is an actor that sends ``WATCHDOG=1`` every
``WATCHDOG_USEC / 2`` while the event loop's lag is under the bound, so a wedged
loop stops the pings and systemd restarts the process.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

import trio

from .health import Health
from .logs import get_logger

log = get_logger("systemd")


class Notifier:
    """sd_notify(3) over a Unix datagram socket."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if path.startswith("@"):
            self._address = "\0" + path[1:]
        elif path.startswith("/"):
            self._address = path
        self._sock: socket.socket | None = None
        self.last_status = ""

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *fields: str) -> None:
        """Send ``fields`` (``"READY=1"``, ``"STATUS=…"``) as one message. Never raises."""
        if self._address is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Called from the trio thread: a full receive queue must drop the
                # message, never block the event loop.
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            # systemd going away must not take the daemon down with it.
            log.warning("sd_notify failed", error=type(exc).__name__)

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        if status != self.last_status:
            self.last_status = status
            self.notify(f"STATUS={status}")

    def stopping(self, status: str = "draining") -> None:
        self.notify("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval_s(env: Mapping[str, str] | None = None) -> float | None:
    """Half of ``WATCHDOG_USEC`` in seconds, or None when systemd asked for no watchdog.

    ``WATCHDOG_PID``, when set, must be ours (systemd sets it for the main process).
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2 / 1_000_000 if value > 0 else None


class Watchdog:
    """Pings systemd's watchdog and keeps ``STATUS=`` in step with health."""

    name = "watchdog"
    essential = False

    def __init__(self, notifier: Notifier, health: Health, interval_s: float | None) -> None:
        self._notifier = notifier
        self._health = health
        self._interval_s = interval_s

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        # With no watchdog requested, still refresh STATUS= on state changes.
        period = self._interval_s or 1.0
        while True:
            if (
                self._interval_s is not None
                and self._health.loop_lag_s <= self._health.max_loop_lag_s
            ):
                self._notifier.notify("WATCHDOG=1")
            self._notifier.status(self._health.summary())
            await trio.sleep(period)
