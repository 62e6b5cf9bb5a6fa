"""The control plane's HTTP server actor: hypercorn on trio, with graceful drain.

The data plane has its own server (:mod:`scheduler.http.wire`); both serve
handlers made from the same Endpoint table (:mod:`scheduler.http.planes`).
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from ..core.config import HttpConfig
from ..core.logs import get_logger

log = get_logger("http")


class HttpServer:
    """Serves ``app``; ``started()`` hands back the bound URLs (``["http://127.0.0.1:PORT"]``).

    :meth:`drain` stops accepting connections and waits for in-flight requests
    up to ``drain_timeout_s``; whatever is still running then is cancelled.
    """

    name = "http"
    essential = True

    def __init__(self, app: Any, config: HttpConfig) -> None:
        self._app = app
        self._config = config
        self._stop = trio.Event()
        self._stopped = trio.Event()
        self.urls: list[str] = []

    def _hypercorn_config(self) -> HypercornConfig:
        hc = HypercornConfig()
        host = f"[{self._config.host}]" if ":" in self._config.host else self._config.host
        hc.bind = [f"{host}:{self._config.port}"]
        hc.graceful_timeout = self._config.drain_timeout_s
        hc.keep_alive_timeout = self._config.keep_alive_timeout_s
        hc.accesslog = None
        hc.errorlog = _quiet_logger()
        hc.backlog = 1024
        return hc

    async def run(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self._stop = trio.Event()
        self._stopped = trio.Event()

        async def started_hook(*, task_status: trio.TaskStatus[list[str]]) -> None:
            await serve(
                self._app,
                self._hypercorn_config(),
                shutdown_trigger=self._stop.wait,
                task_status=task_status,
            )

        try:
            async with trio.open_nursery() as nursery:
                self.urls = await nursery.start(started_hook)
                log.info("listening", urls=self.urls)
                task_status.started(self.urls)
        finally:
            self._stopped.set()

    async def drain(self) -> None:
        """Stop intake; wait for in-flight requests (hypercorn enforces the drain timeout)."""
        self._stop.set()
        with trio.move_on_after(self._config.drain_timeout_s + 1):
            await self._stopped.wait()


def _quiet_logger() -> logging.Logger:
    # hypercorn's own "Running on" lines go to a stdlib logger; we log the bound
    # URLs ourselves as JSON, so keep its logger at warning.
    logger = logging.getLogger("stationmaster.hypercorn")
    logger.setLevel(logging.WARNING)
    return logger
