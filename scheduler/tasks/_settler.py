"""Terminal writes of the pollers, settled many to a transaction.

A poll that sees a task end hands its write to the :class:`Settler` and waits;
the settler takes every write waiting (up to a batch) and writes them through
:meth:`TaskWriter.finish_many`: one params query, then one transaction of three
statements, each row its own compare-and-set, only the winners settled. Why:
a burst of completions settled one transaction each (about eight round trips
through the asyncio bridge) could not keep up with 200 completions/s on the
2-core machine (bench/tasks.py), and their lag grew to a minute and a half.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import trio

from accounts.errors import StationmasterError

from ..core.logs import get_logger
from ..upstream import UpstreamStatus
from ._apply import Result, TaskWriter
from ._model import Held
from ._states import Proposal

log = get_logger("tasks.settler")

# Terminal writes settled together in one transaction at most (bench/tasks.py: one
# transaction each could not keep up with 200 completions/s on 2 cores).
SETTLE_BATCH = 200
# Batches written at once, each holding one write slot.
SETTLERS = 2
# A poll waits this long at most for the batch that carries its terminal write.
SETTLE_WAIT_S = 60.0


@dataclass(slots=True)
class _Ending:
    """A terminal write waiting for its batch; ``done`` is set with result or error."""

    held: Held
    proposal: Proposal
    status: UpstreamStatus
    done: trio.Event = field(default_factory=trio.Event)
    result: Result | None = None
    error: BaseException | None = None


class Settler:
    """Batches terminal writes; ``slots`` is the poller's write-slot semaphore."""

    def __init__(self, writer: TaskWriter, slots: trio.Semaphore) -> None:
        self.writer = writer
        self._slots = slots
        self._send, self._recv = trio.open_memory_channel[_Ending](math.inf)
        self._stopped = False

    async def end(self, held: Held, proposal: Proposal, status: UpstreamStatus) -> Result | None:
        """The write's result once its batch is written; None if that took too long.

        Raises what the write raised (StoreUnavailable: tried again by a later poll).
        """
        if self._stopped:
            return None
        ending = _Ending(held, proposal, status)
        self._send.send_nowait(ending)
        # Shielded: once queued, the batch may write it; the poll learns the outcome.
        with trio.move_on_after(SETTLE_WAIT_S, shield=True):
            await ending.done.wait()
        if ending.error is not None:
            raise ending.error
        return ending.result

    async def run(self) -> None:
        """The batch writers, until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(SETTLERS):
                    nursery.start_soon(self._loop)
        finally:
            # Stopping: writes still queued will not be written; their polls stop waiting.
            self._stopped = True
            while True:
                try:
                    self._recv.receive_nowait().done.set()
                except trio.WouldBlock:
                    break

    async def _loop(self) -> None:
        batch: list[_Ending] = []
        try:
            while True:
                batch = [await self._recv.receive()]
                while len(batch) < SETTLE_BATCH:
                    try:
                        batch.append(self._recv.receive_nowait())
                    except trio.WouldBlock:
                        break
                async with self._slots:
                    await self._settle(batch)
                batch = []
        finally:
            # Stopping: nobody waits for ever on a batch that will not be written.
            for ending in batch:
                ending.done.set()

    async def _settle(self, batch: list[_Ending]) -> None:
        try:
            items = [(e.held, e.proposal, e.status) for e in batch]
            for ending, result in zip(batch, await self.writer.finish_many(items), strict=True):
                ending.result = result
                ending.done.set()
        except StationmasterError as exc:
            # The store is down: every poll of the batch fails and is tried again.
            for ending in batch:
                ending.error = exc
                ending.done.set()
        except Exception:
            # One bad row must not fail the others for ever: each on its own.
            log.exception("settlement batch failed; settling one by one", tasks=len(batch))
            for ending in batch:
                try:
                    ending.result = await self.writer.write(
                        ending.held, ending.proposal, status=ending.status
                    )
                except Exception as exc:
                    ending.error = exc
                ending.done.set()
