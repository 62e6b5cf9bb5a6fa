"""The Veo adapter (platform gemini) against the simulator over real HTTP."""

from __future__ import annotations

import pytest

from scheduler.upstream import (
    Ambiguous,
    AuthFailed,
    RateLimited,
    Rejected,
    Transient,
    Upstream,
    UpstreamRequest,
    UpstreamState,
)

from .conftest import account
from .simsupport import SimControl

KEY = {"api_key": "gemini-key-1"}


def veo(samples: int = 1, model: str = "veo-3.0-fast-generate-001") -> UpstreamRequest:
    return UpstreamRequest(
        task_id="t-veo",
        platform="gemini",
        model=model,
        kind="video",
        params={"prompt": "a cat", "durationSeconds": 8, "sampleCount": samples},
    )


async def test_operation_runs_then_succeeds(
    sim: tuple[str, SimControl], upstream: Upstream
) -> None:
    base_url, control = sim
    control.set(duration_min_s=100, duration_max_s=100)
    acc = account(base_url, "gemini")
    adapter = upstream.adapter("gemini")
    task = await adapter.submit(acc, KEY, veo())
    assert "/operations/" in task.upstream_id and task.state is UpstreamState.RUNNING
    assert (await adapter.fetch(acc, KEY, task.upstream_id)).state is UpstreamState.RUNNING
    control.advance(101)
    status = await adapter.fetch(acc, KEY, task.upstream_id)
    assert status.state is UpstreamState.SUCCEEDED and len(status.result_urls) == 1
    assert adapter.final_cost(veo(), status) == adapter.estimate_cost(veo()) == 1_200_000


async def test_failed_filtered_partial_and_unknown(
    sim: tuple[str, SimControl], upstream: Upstream
) -> None:
    base_url, control = sim
    acc = account(base_url, "gemini")
    adapter = upstream.adapter("gemini")
    control.set(failure_rate=1.0)
    failed = await adapter.submit(acc, KEY, veo())
    control.set(failure_rate=0.0, partial_rate=1.0)
    partial = await adapter.submit(acc, KEY, veo(samples=4))
    control.advance(60)
    status = await adapter.fetch(acc, KEY, failed.upstream_id)
    assert status.state is UpstreamState.FAILED and "INTERNAL" in (status.failure_reason or "")
    status = await adapter.fetch(acc, KEY, partial.upstream_id)
    assert status.state is UpstreamState.SUCCEEDED and len(status.result_urls) == 2
    assert "partial" in (status.failure_reason or "")
    assert adapter.final_cost(veo(4), status) == adapter.estimate_cost(veo(4)) // 2
    gone = await adapter.fetch(acc, KEY, "models/veo-3.0-fast-generate-001/operations/nope")
    assert gone.state is UpstreamState.UNKNOWN


async def test_error_statuses(sim: tuple[str, SimControl], upstream: Upstream) -> None:
    base_url, control = sim
    acc = account(base_url, "gemini")
    adapter = upstream.adapter("gemini")
    for status, code, expected in [
        (429, "RESOURCE_EXHAUSTED", RateLimited),
        (403, "PERMISSION_DENIED", AuthFailed),
        (400, "INVALID_ARGUMENT", Rejected),
        (503, "UNAVAILABLE", Transient),
        (504, "DEADLINE_EXCEEDED", Ambiguous),  # on submit: the job may exist
    ]:
        control.inject(status, code, op="submit")
        with pytest.raises(expected) as info:
            await adapter.submit(acc, KEY, veo())
        assert type(info.value) is expected, (status, code)
    with pytest.raises(Rejected):
        await adapter.submit(acc, KEY, veo(model="imagen-4"))
