"""Fixtures for the upstream adapters: a simulator per test and an open registry."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from accounts.model import Account, Kind
from scheduler.upstream import Upstream, UpstreamConfig, open_upstream

from .simsupport import SimControl, start_simulator

# Short client timeouts: a hang must cost a test well under a second.
FAST = UpstreamConfig(connect_timeout_s=1.0, timeout_s=0.5, submit_timeout_s=0.5)


@pytest.fixture
def sim() -> Iterator[tuple[str, SimControl]]:
    """A fresh simulator whose tasks finish quickly (0.2-0.4 s)."""
    with start_simulator(seed=7, duration_min_s=0.2, duration_max_s=0.4) as running:
        yield running


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with open_upstream(FAST) as up:
        yield up


def account(base_url: str, platform: str, name: str = "a1") -> Account:
    return Account(
        id=f"00000000-0000-0000-0000-{abs(hash(name)) % 10**12:012d}",
        name=name,
        platform=platform,  # type: ignore[arg-type]  # a Platform value as text
        kind=Kind.APIKEY,
        groups=("g",),
        base_url=base_url,
    )
