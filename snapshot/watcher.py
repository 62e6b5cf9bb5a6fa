"""ScheduleWatcher: the actor that keeps a ScheduleView fresh.

Three loops in one nursery: the activation subscriber (Redis pub/sub; coredis
reconnects it by itself after a connection loss), the reloader that applies the
activations it hears, and the periodic check of active versions (default every
second), which catches a missed message and drives the PostgreSQL fallback
while Redis is down.
"""

from __future__ import annotations

from typing import Any

import trio

from .keys import channel, parse_activation
from .redis import UNAVAILABLE
from .tunable import current
from .view import ScheduleView

# Pause before resubscribing after an unexpected pub/sub failure.
RESUBSCRIBE_S = 1.0
# How long start-up waits for the subscription before serving without it.
SUBSCRIBE_WAIT_S = 2.0


class ScheduleWatcher:
    """Subscribes to activations and polls active versions for one view.

    ``started()`` once subscribed (waiting at most SUBSCRIBE_WAIT_S), or at once
    with ``subscribe=False``, which tests use to show that the periodic check
    converges on its own. Never crashes on store failures: the view degrades and
    the loops retry.
    """

    name = "schedule-watcher"
    essential = False

    def __init__(self, view: ScheduleView, *, subscribe: bool = True) -> None:
        self.view = view
        self.subscribe = subscribe
        self.messages = 0
        self.subscribed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.view.reload_pending)
            nursery.start_soon(self._poll)
            if self.subscribe:
                nursery.start_soon(self._listen)
                # Redis may be down at start: serve (degraded, polling) rather than wait.
                with trio.move_on_after(SUBSCRIBE_WAIT_S):
                    await self.subscribed.wait()
            task_status.started()

    async def _poll(self) -> None:
        while True:
            await trio.sleep(current(self.view.poll_s))
            await self.view.poll_once()

    async def _listen(self) -> None:
        name = channel(self.view.store.prefix)
        while True:
            pubsub = self.view.store.client.pubsub(channels=[name], ignore_subscribe_messages=True)
            try:
                async with pubsub:
                    self.subscribed.set()
                    async for message in pubsub:
                        self._handle(message)
            except UNAVAILABLE:
                pass  # the periodic check covers the gap while we reconnect
            finally:
                # coredis 6.9 leaves these open when entering the pubsub fails
                # (ResourceWarning at collection); closing twice is harmless.
                for stream in (pubsub._send_stream, pubsub._receive_stream):
                    stream.close()
            await trio.sleep(RESUBSCRIBE_S)

    def _handle(self, message: Any) -> None:
        if message.get("type") != "message":
            return
        parsed = parse_activation(str(message.get("data", "")))
        if parsed is None:
            return
        self.messages += 1
        self.view.request_reload(*parsed)
