"""The Settler batches terminal writes; an outage fails its batch, a bad row only itself.

Guards checked (broken once, seen red): the one-by-one fallback (removed: the
good tasks of the poisoned batch got the poison's error), and the batching
(each write sent alone: the burst test saw 40 batches of one).
"""

from __future__ import annotations

import time
from typing import Any

import trio
import trio.testing

from accounts.errors import StoreUnavailable
from scheduler.tasks._apply import Result, Written
from scheduler.tasks._model import Held
from scheduler.tasks._settler import Settler
from scheduler.tasks._states import Billing, Event, Proposal, Snapshot, TaskStatus
from scheduler.upstream import UpstreamState, UpstreamStatus

DONE = UpstreamStatus(state=UpstreamState.SUCCEEDED)
PROPOSAL = Proposal(Event.OBSERVED, TaskStatus.SUCCEEDED)


def held(n: int) -> Held:
    now = time.time()
    return Held(
        id=f"01900000-0000-7000-8000-{n:012d}",
        version=1,
        snapshot=Snapshot(TaskStatus.RUNNING, upstream_id=f"u-{n}"),
        platform="dashscope",
        account_id=None,
        kind="video",
        model="m",
        billing=Billing(price=1, ratio_permille=1000, hold=10),
        created_at=now,
        deadline=now + 3600,
    )


class Writer:
    """finish_many records its batches; ``fail`` makes it raise; ``poison`` fails one task."""

    def __init__(self, fail: BaseException | None = None, poison: str | None = None) -> None:
        self.batches: list[int] = []
        self.fail = fail
        self.poison = poison
        self.gate = trio.Event()

    async def finish_many(self, items: list[tuple[Held, Any, Any]]) -> list[Result]:
        await self.gate.wait()  # writes pile up meanwhile, as behind a slow transaction
        self.batches.append(len(items))
        if self.fail is not None:
            raise self.fail
        if self.poison and any(h.id == self.poison for h, _, _ in items):
            raise RuntimeError("a row PostgreSQL refuses")
        return [Result(Written.FINISHED, h) for h, _, _ in items]

    async def write(self, h: Held, *_a: Any, **_k: Any) -> Result:
        if h.id == self.poison:
            raise RuntimeError("a row PostgreSQL refuses")
        return Result(Written.FINISHED, h)


async def run_burst(writer: Writer, n: int) -> list[Result | BaseException | None]:
    settler = Settler(writer, trio.Semaphore(2))  # type: ignore[arg-type]
    out: list[Result | BaseException | None] = [None] * n

    async def one(i: int) -> None:
        try:
            out[i] = await settler.end(held(i), PROPOSAL, DONE)
        except Exception as exc:
            out[i] = exc

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(settler.run)
            async with trio.open_nursery() as polls:
                for i in range(n):
                    polls.start_soon(one, i)
                await trio.testing.wait_all_tasks_blocked()
                writer.gate.set()
            nursery.cancel_scope.cancel()
    return out


async def test_a_burst_is_written_in_few_batches() -> None:
    writer = Writer()
    out = await run_burst(writer, 40)
    assert all(isinstance(r, Result) and r.written is Written.FINISHED for r in out)
    assert sum(writer.batches) == 40 and len(writer.batches) <= 3


async def test_a_store_outage_fails_every_poll_of_the_batch() -> None:
    out = await run_burst(Writer(fail=StoreUnavailable("postgres", "down")), 5)
    assert all(isinstance(r, StoreUnavailable) for r in out)


async def test_a_bad_row_fails_only_its_own_poll() -> None:
    out = await run_burst(Writer(poison=held(3).id), 6)
    assert isinstance(out[3], RuntimeError)
    assert all(isinstance(r, Result) for i, r in enumerate(out) if i != 3)
