"""Fixtures for the task tests: simulators started from a sync fixture.

``start_simulator`` stops its thread with ``trio.from_thread``, which refuses to
run inside a trio run; a sync fixture's teardown runs outside the test's run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.upstream.simsupport import SimControl, start_simulator

StartSim = Callable[..., tuple[str, SimControl]]


@pytest.fixture
def simulator() -> Iterator[StartSim]:
    """``simulator(**knobs) -> (base_url, control)``; every one started is stopped at teardown."""
    with contextlib.ExitStack() as stack:

        def start(**knobs: Any) -> tuple[str, SimControl]:
            return stack.enter_context(start_simulator(**knobs))

        yield start
