"""A loopback TCP proxy that a test can block and unblock: a store "outage" on demand.

The machine's PostgreSQL and Redis are shared by every test run, so tests never
stop them. Instead the daemon under test is pointed at this proxy, and the test
cuts the line::

    async with open_proxy("127.0.0.1", 6379) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        ...
        await proxy.block("refuse")   # drop every connection, refuse new ones
        await proxy.block("hold")     # drop every connection, accept new ones, never answer
        await proxy.unblock()         # forward again (same port)

The target is ``host, port``, or a Unix socket path as the host (port ignored).
"refuse" closes the listening socket, so connecting fails at once (ECONNREFUSED);
"hold" keeps accepting but forwards nothing, like a wedged server, so only the
client's timeouts notice. :meth:`unblock` listens again on the same port.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import AsyncIterator
from typing import Literal

import trio

Mode = Literal["refuse", "hold"]
# Large enough for any single read PostgreSQL or Redis sends in a test.
_CHUNK = 65536


class Proxy:
    """Forwards ``127.0.0.1:port`` to ``target``; see the module docstring."""

    def __init__(self, nursery: trio.Nursery, target_host: str, target_port: int) -> None:
        self._nursery = nursery
        self._target = (target_host, target_port)
        self.port = 0
        self.mode: Mode | None = None
        self._listen_scope: trio.CancelScope | None = None
        self._connections: set[trio.CancelScope] = set()
        self._held: set[trio.SocketStream] = set()

    async def listen(self) -> None:
        """(Re)open the listener on :attr:`port` (0 the first time picks a free one)."""
        listener = await self._bind()
        self.port = listener.socket.getsockname()[1]
        self._listen_scope = trio.CancelScope()
        self._nursery.start_soon(self._accept_loop, listener, self._listen_scope)

    async def _bind(self) -> trio.SocketListener:
        # After "refuse", the old port can be briefly unavailable; retry a little.
        for _ in range(100):
            try:
                listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
                return listeners[0]
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or self.port == 0:
                    raise
                await trio.sleep(0.05)
        raise RuntimeError(f"port {self.port} stayed in use")

    async def _accept_loop(self, listener: trio.SocketListener, scope: trio.CancelScope) -> None:
        with scope:
            async with listener:
                while True:
                    stream = await listener.accept()
                    self._nursery.start_soon(self._handle, stream)

    async def _handle(self, client: trio.SocketStream) -> None:
        if self.mode == "hold":
            # Accepted but never answered; closed on unblock or at the end.
            self._held.add(client)
            return
        scope = trio.CancelScope()
        self._connections.add(scope)
        try:
            with scope:
                server = await _connect(*self._target)
                async with client, server, trio.open_nursery() as pipes:
                    pipes.start_soon(_pipe, client, server, pipes.cancel_scope)
                    pipes.start_soon(_pipe, server, client, pipes.cancel_scope)
        except OSError:
            pass
        finally:
            self._connections.discard(scope)
            await trio.aclose_forcefully(client)

    def _drop_all(self) -> None:
        for scope in list(self._connections):
            scope.cancel()

    async def block(self, mode: Mode = "refuse") -> None:
        """Cut every open connection; new ones are refused or held, per ``mode``."""
        self.mode = mode
        self._drop_all()
        if mode == "refuse" and self._listen_scope is not None:
            self._listen_scope.cancel()
            self._listen_scope = None
        # Let the cancelled tasks close their sockets before the test goes on.
        await trio.sleep(0)

    async def unblock(self) -> None:
        """Forward again; held connections are closed (their clients will reconnect)."""
        was = self.mode
        self.mode = None
        for stream in list(self._held):
            await trio.aclose_forcefully(stream)
        self._held.clear()
        if was == "refuse":
            await self.listen()

    async def aclose(self) -> None:
        self.mode = "hold"
        self._drop_all()
        if self._listen_scope is not None:
            self._listen_scope.cancel()
        for stream in list(self._held):
            await trio.aclose_forcefully(stream)


async def _pipe(
    source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
) -> None:
    """Copy bytes one way; either side closing ends both directions."""
    try:
        while data := await source.receive_some(_CHUNK):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        scope.cancel()


async def _connect(host: str, port: int) -> trio.abc.Stream:
    # A path is a Unix socket (the embedded PostgreSQL of a run without servers).
    if host.startswith("/"):
        return await trio.open_unix_socket(host)
    return await trio.open_tcp_stream(host, port)


@contextlib.asynccontextmanager
async def open_proxy(target_host: str, target_port: int) -> AsyncIterator[Proxy]:
    """A running :class:`Proxy`; everything it opened is closed on exit."""
    async with trio.open_nursery() as nursery:
        proxy = Proxy(nursery, target_host, target_port)
        await proxy.listen()
        try:
            yield proxy
        finally:
            await proxy.aclose()
            nursery.cancel_scope.cancel()
