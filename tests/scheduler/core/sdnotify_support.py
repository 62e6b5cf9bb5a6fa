"""A stand-in for systemd's notification socket: a bound Unix datagram socket."""

from __future__ import annotations

import contextlib
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import trio


class NotifySocket:
    """Collects sd_notify messages; each message is a list of ``KEY=value`` lines."""

    def __init__(self, sock: trio.socket.SocketType, path: Path) -> None:
        self._sock = sock
        self.path = path
        self.messages: list[list[str]] = []

    async def receive(self) -> list[str]:
        data = await self._sock.recv(65536)
        message = data.decode().split("\n")
        self.messages.append(message)
        return message

    async def wait_for(self, field: str) -> list[str]:
        """Receive until a message containing ``field`` (e.g. ``READY=1``) arrives."""
        while True:
            message = await self.receive()
            if field in message:
                return message

    def fields(self) -> list[str]:
        return [f for m in self.messages for f in m]


@contextlib.asynccontextmanager
async def open_notify_socket() -> AsyncIterator[NotifySocket]:
    # A short directory: Unix socket paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="smn") as directory:
        path = Path(directory) / "notify"
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with sock:
            await sock.bind(str(path))
            yield NotifySocket(sock, path)
