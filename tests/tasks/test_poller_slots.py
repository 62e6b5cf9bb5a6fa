"""Poller write slots: a poll whose answer changes nothing never queues for one.

During a burst of completions every write slot (half the database pool) can be
taken by terminal transactions; the unchanged polls of the other thousands of
tasks must go on meanwhile. Guard checked (broken once, seen red): with the
``plan(...) is None`` check removed from ``Poller._observe`` the unchanged poll
below waits for the slot and the test's deadline fires.
"""

from __future__ import annotations

import time

import pytest
import trio

from scheduler.core.config import TasksConfig
from scheduler.tasks._model import Held
from scheduler.tasks._poller import Poller, _Track
from scheduler.tasks._states import Billing, Snapshot, TaskStatus
from scheduler.upstream import UpstreamState, UpstreamStatus


class _NoWriter:
    async def write(self, *_a: object, **_k: object) -> object:
        raise AssertionError("an unchanged poll must not write")


def _track(status: TaskStatus) -> _Track:
    now = time.time()
    held = Held(
        id="01900000-0000-7000-8000-000000000001",
        version=3,
        snapshot=Snapshot(status, upstream_id="u-1"),
        platform="dashscope",
        account_id="00000000-0000-0000-0000-000000000001",
        kind="video",
        model="m",
        billing=Billing(price=1, ratio_permille=1000, hold=10),
        created_at=now,
        deadline=now + 3600,
    )
    return _Track(held)


@pytest.mark.parametrize("state", [UpstreamState.RUNNING, UpstreamState.UNKNOWN])
async def test_an_unchanged_poll_does_not_wait_for_a_write_slot(state: UpstreamState) -> None:
    poller = Poller(
        None,  # type: ignore[arg-type]  # the store is not reached on this path
        _NoWriter(),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        "instance",
        TasksConfig(),
        db_slots=1,
    )
    async with poller._db:  # every write slot taken (by a burst of terminal writes)
        with trio.fail_after(1):
            result = await poller._observe(_track(TaskStatus.RUNNING), UpstreamStatus(state=state))
    assert result == "unchanged"
