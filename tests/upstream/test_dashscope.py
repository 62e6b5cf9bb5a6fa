"""The DashScope adapter against the simulator over real HTTP."""

from __future__ import annotations

import trio

from scheduler.upstream import (
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

KEY = {"api_key": "sk-test-1"}


def video(task_id: str = "t-1", **params: object) -> UpstreamRequest:
    return UpstreamRequest(
        task_id=task_id,
        platform="dashscope",
        model="wan2.2-t2v-plus",
        kind="video",
        params={"prompt": "a cat", "duration": 5, **params},
    )


async def _until_terminal(upstream: Upstream, acc, upstream_id: str):  # type: ignore[no-untyped-def]
    adapter = upstream.adapter("dashscope")
    seen = []
    with trio.fail_after(10):
        while True:
            status = await adapter.fetch(acc, KEY, upstream_id)
            seen.append(status.state)
            if status.state.terminal:
                return status, seen
            await trio.sleep(0.05)


async def test_submit_then_fetch_walks_pending_running_succeeded(
    sim: tuple[str, SimControl], upstream: Upstream
) -> None:
    base_url, control = sim
    acc = account(base_url, "dashscope")
    adapter = upstream.adapter("dashscope")
    task = await adapter.submit(acc, KEY, video())
    assert task.state is UpstreamState.PENDING
    status, seen = await _until_terminal(upstream, acc, task.upstream_id)
    assert status.state is UpstreamState.SUCCEEDED
    assert UpstreamState.PENDING in seen or UpstreamState.RUNNING in seen
    assert status.result_urls and status.usage["video_duration"] == 5
    assert adapter.final_cost(video(), status) == adapter.estimate_cost(video()) == 500_000
    control.assert_each_client_submitted_once()
    control.assert_no_fetch_after_terminal()


async def test_failed_and_unknown_map(sim: tuple[str, SimControl], upstream: Upstream) -> None:
    base_url, control = sim
    control.set(failure_rate=1.0)
    acc = account(base_url, "dashscope")
    adapter = upstream.adapter("dashscope")
    task = await adapter.submit(acc, KEY, video())
    status, _ = await _until_terminal(upstream, acc, task.upstream_id)
    assert status.state is UpstreamState.FAILED and status.failure_reason
    assert adapter.final_cost(video(), status) == 0
    unknown = await adapter.fetch(acc, KEY, "no-such-task")
    assert unknown.state is UpstreamState.UNKNOWN


async def test_cancel_only_while_pending(sim: tuple[str, SimControl], upstream: Upstream) -> None:
    base_url, control = sim
    control.set(duration_min_s=100, duration_max_s=100, pending_fraction=0.5)
    acc = account(base_url, "dashscope")
    adapter = upstream.adapter("dashscope")
    task = await adapter.submit(acc, KEY, video())
    await adapter.cancel(acc, KEY, task.upstream_id)
    assert (await adapter.fetch(acc, KEY, task.upstream_id)).state is UpstreamState.CANCELLED
    running = await adapter.submit(acc, KEY, video("t-2"))
    control.advance(60)
    try:
        await adapter.cancel(acc, KEY, running.upstream_id)
    except Rejected as exc:
        assert "PENDING" in exc.reason
    else:
        raise AssertionError("cancel of a RUNNING task must be Rejected")


async def test_error_classes(sim: tuple[str, SimControl], upstream: Upstream) -> None:
    base_url, control = sim
    acc = account(base_url, "dashscope")
    adapter = upstream.adapter("dashscope")
    cases = [
        (429, "Throttling.RateQuota", RateLimited),
        (401, "InvalidApiKey", AuthFailed),
        (403, "AccessDenied", AuthFailed),
        (400, "Arrearage", AuthFailed),
        (400, "DataInspectionFailed", Rejected),
        (500, "InternalError", Transient),
        (503, "ServiceUnavailable", Transient),
    ]
    for status, code, expected in cases:
        control.inject(status, code, op="fetch")
        try:
            await adapter.fetch(acc, KEY, "x")
        except expected as exc:
            assert type(exc) is expected, (status, code, type(exc))
        else:
            raise AssertionError(f"{status} {code} did not raise")
