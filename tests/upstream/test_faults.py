"""Upstream misbehaviour becomes a classified error, never a crash; knobs do what they say."""

from __future__ import annotations

import pytest
import trio

from scheduler.upstream import (
    Ambiguous,
    AuthFailed,
    RateLimited,
    Transient,
    Upstream,
    UpstreamConfig,
    UpstreamRequest,
    UpstreamState,
    open_upstream,
)

from .conftest import account
from .simsupport import SimControl
from .test_dashscope import KEY, video

# Generous: only a broken timeout (hanging for ever) can exceed it.
HANG_BOUND_S = 10
# For tests that count outcomes, not time: no timeout a loaded machine can reach.
PATIENT = UpstreamConfig(connect_timeout_s=30.0, timeout_s=30.0, submit_timeout_s=30.0)


def images(task_id: str = "img-1", n: int = 4) -> UpstreamRequest:
    return UpstreamRequest(
        task_id=task_id,
        platform="dashscope",
        model="wanx2.1-t2i-turbo",
        kind="image",
        params={"prompt": "a cat", "n": n},
    )


async def test_malformed_body_is_transient_on_fetch_and_ambiguous_on_submit(
    sim: tuple[str, SimControl], upstream: Upstream
) -> None:
    base_url, control = sim
    acc = account(base_url, "dashscope")
    adapter = upstream.adapter("dashscope")
    task = await adapter.submit(acc, KEY, video())
    control.set(malformed_rate=1.0)
    with pytest.raises(Transient):
        await adapter.fetch(acc, KEY, task.upstream_id)
    with pytest.raises(Ambiguous):
        await adapter.submit(acc, KEY, video("t-2"))


async def test_truncated_body_is_transient(sim: tuple[str, SimControl], upstream: Upstream) -> None:
    base_url, control = sim
    acc = account(base_url, "dashscope")
    control.set(truncated_rate=1.0)
    with pytest.raises(Transient):
        await upstream.adapter("dashscope").fetch(acc, KEY, "any")


@pytest.mark.parametrize("platform", ["dashscope", "kling"])
async def test_hang_is_bounded_by_the_client_timeout(
    sim: tuple[str, SimControl], upstream: Upstream, platform: str
) -> None:
    base_url, control = sim
    acc = account(base_url, platform)
    creds = KEY if platform == "dashscope" else {"access_key": "ak", "secret_key": "s" * 32}
    control.set(hang_rate=1.0, kling_secrets={"ak": "s" * 32})
    adapter = upstream.adapter(platform)
    with trio.fail_after(HANG_BOUND_S), pytest.raises(Transient) as info:
        await adapter.fetch(acc, creds, "text2video/1" if platform == "kling" else "x")
    assert not isinstance(info.value, Ambiguous)
    req = (
        video()
        if platform == "dashscope"
        else UpstreamRequest(
            task_id="t", platform="kling", model="kling-v1", kind="video", params={"prompt": "p"}
        )
    )
    with trio.fail_after(HANG_BOUND_S), pytest.raises(Ambiguous):
        await adapter.submit(acc, creds, req)


async def test_submit_timeout_after_create_is_ambiguous_and_the_task_exists(
    sim: tuple[str, SimControl], upstream: Upstream
) -> None:
    base_url, control = sim
    control.set(submit_timeout_after_create_rate=1.0)
    with trio.fail_after(HANG_BOUND_S), pytest.raises(Ambiguous):
        await upstream.adapter("dashscope").submit(account(base_url, "dashscope"), KEY, video())
    assert control.counters()["clients"]["dashscope:t-1"]["submits"] == 1


async def test_burst_of_5xx_then_recovery(sim: tuple[str, SimControl], upstream: Upstream) -> None:
    base_url, control = sim
    acc = account(base_url, "dashscope")
    adapter = upstream.adapter("dashscope")
    control.set(burst_5xx=3)
    for _ in range(3):
        with pytest.raises(Transient):
            await adapter.fetch(acc, KEY, "x")
    assert (await adapter.fetch(acc, KEY, "x")).state is UpstreamState.UNKNOWN


@pytest.mark.slow
async def test_429_rate_over_1000_calls(sim: tuple[str, SimControl]) -> None:
    base_url, control = sim
    control.set(rate_429=0.3, retry_after_s=7, seed=11)
    acc = account(base_url, "dashscope")
    limited = 0

    async def worker() -> None:
        nonlocal limited
        for _ in range(50):
            try:
                await adapter.fetch(acc, KEY, "x")
            except RateLimited as exc:
                assert exc.retry_after_s == 7
                limited += 1

    # Not FAST: this counts 429s, and 20 workers on a machine with both cores busy took
    # more than its 1 s to connect to the simulator once (a Transient, not a 429).
    async with open_upstream(PATIENT) as upstream:
        adapter = upstream.adapter("dashscope")
        async with trio.open_nursery() as nursery:  # 20 x 50 = 1,000 calls
            for _ in range(20):
                nursery.start_soon(worker)
    # Binomial(1000, 0.3): sd ~14.5, so +-50 is beyond 3 sd.
    assert 250 <= limited <= 350, limited
    assert control.account("sk-test-1")["refused_429"] == limited


async def test_qps_limit_refuses_beyond_it(sim: tuple[str, SimControl], upstream: Upstream) -> None:
    base_url, control = sim
    control.set(qps_limit=5)
    acc = account(base_url, "dashscope")
    adapter = upstream.adapter("dashscope")
    outcomes = []
    for _ in range(10):  # far faster than 10 s: at least 5 of them fall in one second
        try:
            await adapter.fetch(acc, KEY, "x")
            outcomes.append("ok")
        except RateLimited:
            outcomes.append("429")
    assert "429" in outcomes and outcomes[:5] == ["ok"] * 5


async def test_refused_account_is_auth_failed(
    sim: tuple[str, SimControl], upstream: Upstream
) -> None:
    base_url, control = sim
    control.set(refused_accounts=["sk-test-1"])
    with pytest.raises(AuthFailed):
        await upstream.adapter("dashscope").fetch(account(base_url, "dashscope"), KEY, "x")


async def test_never_finishing_task_and_retention(
    sim: tuple[str, SimControl], upstream: Upstream
) -> None:
    base_url, control = sim
    acc = account(base_url, "dashscope")
    adapter = upstream.adapter("dashscope")
    control.set(never_finish_rate=1.0)
    stuck = await adapter.submit(acc, KEY, video())
    control.set(never_finish_rate=0.0)
    done = await adapter.submit(acc, KEY, video("t-2"))
    control.advance(3600)
    assert (await adapter.fetch(acc, KEY, stuck.upstream_id)).state is UpstreamState.RUNNING
    assert (await adapter.fetch(acc, KEY, done.upstream_id)).state is UpstreamState.SUCCEEDED
    control.advance(86400)  # past the 24 h retention of a finished task
    assert (await adapter.fetch(acc, KEY, done.upstream_id)).state is UpstreamState.UNKNOWN


async def test_partial_success_costs_what_was_produced(
    sim: tuple[str, SimControl], upstream: Upstream
) -> None:
    base_url, control = sim
    acc = account(base_url, "dashscope")
    adapter = upstream.adapter("dashscope")
    control.set(partial_rate=1.0)
    task = await adapter.submit(acc, KEY, images())
    control.advance(60)
    status = await adapter.fetch(acc, KEY, task.upstream_id)
    assert status.state is UpstreamState.SUCCEEDED
    assert status.usage["image_count"] == 2 and len(status.result_urls) == 2
    assert status.failure_reason and "partial" in status.failure_reason
    assert adapter.estimate_cost(images()) == 80_000
    assert adapter.final_cost(images(), status) == 40_000


async def test_counters_see_fetch_after_terminal_and_concurrency(
    sim: tuple[str, SimControl], upstream: Upstream
) -> None:
    base_url, control = sim
    acc = account(base_url, "dashscope")
    adapter = upstream.adapter("dashscope")
    task = await adapter.submit(acc, KEY, video())
    control.advance(60)
    await adapter.fetch(acc, KEY, task.upstream_id)  # the terminal answer
    control.assert_no_fetch_after_terminal()
    await adapter.fetch(acc, KEY, task.upstream_id)  # one too many
    assert control.task(task.upstream_id)["fetches_after_terminal"] == 1
    with pytest.raises(AssertionError):
        control.assert_no_fetch_after_terminal()
    control.set(latency_s=0.2)
    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(adapter.fetch, acc, KEY, task.upstream_id)
    assert control.account("sk-test-1")["concurrent_peak"] == 4
