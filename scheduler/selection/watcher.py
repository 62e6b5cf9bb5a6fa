"""The release watcher: release messages from every instance wake this one's waiters.

It also listens for quota readings written outside a release (the usage
prober, on any instance): it re-reads that account's runtime state into this
instance's view and wakes its waiters, so an account a probe unpaused is
schedulable here on the next selection, not one view refresh later.
"""

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
        # Readings messages from other instances applied to the view (tests wait on it).
        self.readings = 0
        self._readings: dict[str, str] = {}

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        keys = self.selector.runtime.keys
        channels = {keys.released_channel(p.value): p.value for p in Platform}
        self._readings = {keys.readings_channel(p.value): p.value for p in Platform}
        channels.update(self._readings)
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
                        channel = str(message.get("channel", ""))
                        platform = channels.get(channel)
                        if message.get("type") != "message" or platform is None:
                            continue
                        self.messages += 1
                        account_id, _, origin = str(message.get("data", "")).partition(" ")
                        # Our own releases already updated the view and woke our waiters
                        # (the release reply carries the state): counting them again
                        # would take a second slot off the local lease count.
                        if origin == own:
                            continue
                        if channel in self._readings:
                            await self._reread(platform, account_id)
                        else:
                            self.selector.on_release(platform, account_id)
            except UNAVAILABLE:
                pass
            await trio.sleep(RESUBSCRIBE_S)

    async def _reread(self, platform: str, account_id: str) -> None:
        """New readings of ``account_id`` elsewhere: its state into the view, waiters woken."""
        states = await self.selector.runtime.read_many(platform, [account_id])
        self.selector.on_release(platform, account_id, states[account_id])
        self.readings += 1
