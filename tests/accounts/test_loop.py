"""The asyncio bridge loop: an error nobody awaits is reported, never fatal.

asyncpg's ``Pool.release`` resets a connection in a shielded asyncio task; when
PostgreSQL is slow and the caller stops waiting, that task later fails with a
TimeoutError nobody retrieves. trio-asyncio's default handler raised it in the
loop's nursery, which ended the daemon (bench/tasks.py, the completion burst).
Guard checked (broken once, seen red): without the handler set in
``open_loop`` this test ends in an ExceptionGroup holding the TimeoutError.
"""

from __future__ import annotations

import asyncio
import gc

import trio
from trio_asyncio import aio_as_trio

from accounts.db import open_loop


async def _fails_later() -> None:
    await asyncio.sleep(0)
    raise TimeoutError


async def _orphan() -> None:
    # As asyncpg does: a task the awaiting side no longer holds.
    asyncio.ensure_future(_fails_later())  # noqa: RUF006 (dropped on purpose: the orphan is the point)
    await asyncio.sleep(0.01)


async def test_an_unretrieved_task_error_is_reported_and_the_loop_lives_on() -> None:
    reports: list[tuple[str, str]] = []
    with trio.fail_after(10):
        async with open_loop(lambda message, error: reports.append((message, error))):
            await aio_as_trio(_orphan)()
            gc.collect()  # the finished task is collected: asyncio reports its error
            while not reports:  # the loop's handler runs on its next turn
                await trio.sleep(0.01)
            assert reports == [("Task exception was never retrieved", "TimeoutError")]
            # The bridge still works.
            await aio_as_trio(asyncio.sleep)(0)
