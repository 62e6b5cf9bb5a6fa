"""The release watcher: release messages from every instance wake this one's waiters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from accounts.model import Platform
from snapshot.redis import UNAVAILABLE

if TYPE_CHECKING:
    from .select import Selector

# A subscription that dropped is retried after this; waiters still retry periodically.
RESUBSCRIBE_S = 1.0


class ReleaseWatcher:
    """Actor: turns release messages (pub/sub, every instance) into waiter wake-ups.

    ``started()`` once subscribed (or after a short wait if Redis is down: waiters
    then rely on their periodic retry). Never crashes on Redis failures.
    """

    name = "release-watcher"
    essential = False

    def __init__(self, selector: Selector) -> None:
        self.selector = selector
        self.messages = 0

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        keys = self.selector.runtime.keys
        channels = {keys.released_channel(p.value): p.value for p in Platform}
        subscribed = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._listen, channels, subscribed)
            with trio.move_on_after(2):
                await subscribed.wait()
            task_status.started()

    async def _listen(self, channels: dict[str, str], subscribed: trio.Event) -> None:
        client = self.selector.runtime.redis.client
        own = self.selector.runtime.origin
        while True:
            try:
                async with client.pubsub(
                    channels=list(channels), ignore_subscribe_messages=True
                ) as pubsub:
                    subscribed.set()
                    async for message in pubsub:
                        platform = channels.get(str(message.get("channel", "")))
                        if message.get("type") != "message" or platform is None:
                            continue
                        self.messages += 1
                        account_id, _, origin = str(message.get("data", "")).partition(" ")
                        # Our own releases already updated the view and woke our waiters
                        # (the release reply carries the state): counting them again
                        # would take a second slot off the local lease count.
                        if origin != own:
                            self.selector.on_release(platform, account_id)
            except UNAVAILABLE:
                pass
            await trio.sleep(RESUBSCRIBE_S)
