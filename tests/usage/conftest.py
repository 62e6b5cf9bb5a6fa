"""Fixtures of the usage tests: a simulator per test (started outside trio, like the others)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .simusage import SimUsage, start_usage_sim


@pytest.fixture
def usage_sim() -> Iterator[tuple[str, SimUsage]]:
    with start_usage_sim(seed=3) as running:
        yield running


@pytest.fixture
def usage_sim_process() -> Iterator[tuple[str, SimUsage]]:
    """The simulator in a process of its own: its CPU does not slow the instances under test."""
    with start_usage_sim(process=True) as running:
        yield running
