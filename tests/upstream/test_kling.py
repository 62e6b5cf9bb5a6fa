"""The Kling adapter against the simulator over real HTTP: JWT, statuses, lookup."""

from __future__ import annotations

import jwt
import pytest
import trio

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
from scheduler.upstream.kling import TOKEN_LIFETIME_S, TOKEN_MARGIN_S, Kling

from .conftest import account
from .simsupport import SimControl

CREDS = {"access_key": "ak-test", "secret_key": "sk-test-secret-of-at-least-32-bytes"}


def video(
    task_id: str = "01900000-0000-7000-8000-000000000001", **params: object
) -> UpstreamRequest:
    return UpstreamRequest(
        task_id=task_id,
        platform="kling",
        model="kling-v2-1",
        kind="video",
        params={"prompt": "a cat", "duration": 5, "mode": "std", **params},
    )


@pytest.fixture
def sim_kling(sim: tuple[str, SimControl]) -> tuple[str, SimControl]:
    base_url, control = sim
    control.set(kling_secrets={CREDS["access_key"]: CREDS["secret_key"]})
    return base_url, control


async def test_submit_fetch_and_lookup_by_our_id(
    sim_kling: tuple[str, SimControl], upstream: Upstream
) -> None:
    base_url, control = sim_kling
    acc = account(base_url, "kling")
    adapter = upstream.adapter("kling")
    task = await adapter.submit(acc, CREDS, video())
    assert task.state is UpstreamState.PENDING and task.upstream_id.startswith("text2video/")
    found = await adapter.lookup(acc, CREDS, video().task_id)
    assert found is not None and found.upstream_id == task.upstream_id
    assert await adapter.lookup(acc, CREDS, "never-submitted") is None
    with trio.fail_after(10):
        while not (status := await adapter.fetch(acc, CREDS, task.upstream_id)).state.terminal:
            await trio.sleep(0.05)
    assert status.state is UpstreamState.SUCCEEDED and status.result_urls
    assert adapter.final_cost(video(), status) == adapter.estimate_cost(video()) == 140_000
    control.assert_each_client_submitted_once()


async def test_jwt_verifies_with_the_secret(upstream: Upstream) -> None:
    adapter = upstream.adapter("kling")
    assert isinstance(adapter, Kling)
    token = adapter.tokens.token(CREDS["access_key"], CREDS["secret_key"])
    claims = jwt.decode(token, CREDS["secret_key"], algorithms=["HS256"])
    assert claims["iss"] == CREDS["access_key"]
    assert claims["exp"] - claims["nbf"] == TOKEN_LIFETIME_S + 5
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "another-secret-of-at-least-32-bytes", algorithms=["HS256"])


async def test_wrong_secret_is_auth_failed(
    sim_kling: tuple[str, SimControl], upstream: Upstream
) -> None:
    base_url, _control = sim_kling
    with pytest.raises(AuthFailed):
        await upstream.adapter("kling").submit(
            account(base_url, "kling"),
            {**CREDS, "secret_key": "wrong-secret-of-at-least-32-bytes"},
            video(),
        )


async def test_token_regenerated_before_expiry(sim_kling: tuple[str, SimControl]) -> None:
    """The adapter's clock and the simulator's move on together; the old token would be refused."""
    base_url, control = sim_kling
    now = [1_000_000.0]
    from scheduler.upstream import UpstreamConfig, open_upstream

    async with open_upstream(UpstreamConfig(timeout_s=2)) as up:
        real = up.adapter("kling")
        assert isinstance(real, Kling)
        adapter = Kling(real._x, clock=lambda: now[0])  # same exchange, our clock
        import time

        now[0] = time.time()
        acc = account(base_url, "kling")
        task = await adapter.submit(acc, CREDS, video())
        first = adapter.tokens.token(CREDS["access_key"], CREDS["secret_key"])
        # Still well inside its life: reused.
        now[0] += TOKEN_LIFETIME_S - TOKEN_MARGIN_S - 60
        assert adapter.tokens.token(CREDS["access_key"], CREDS["secret_key"]) == first
        # Inside the margin: a new one, and the simulator (past the old exp) accepts it.
        now[0] += 120
        control.advance(TOKEN_LIFETIME_S + 10)
        status = await adapter.fetch(acc, CREDS, task.upstream_id)
        assert adapter.tokens.token(CREDS["access_key"], CREDS["secret_key"]) != first
        assert status.state is UpstreamState.SUCCEEDED


async def test_resubmit_after_ambiguous_finds_the_task(
    sim_kling: tuple[str, SimControl], upstream: Upstream
) -> None:
    base_url, control = sim_kling
    acc = account(base_url, "kling")
    adapter = upstream.adapter("kling")
    control.set(submit_timeout_after_create_rate=1.0)
    with pytest.raises(Ambiguous):
        await adapter.submit(acc, CREDS, video())
    control.set(submit_timeout_after_create_rate=0.0)
    again = await adapter.submit(acc, CREDS, video())
    assert again.upstream_id.startswith("text2video/")
    control.assert_each_client_submitted_once()


async def test_error_codes(sim_kling: tuple[str, SimControl], upstream: Upstream) -> None:
    base_url, control = sim_kling
    acc = account(base_url, "kling")
    adapter = upstream.adapter("kling")
    cases = [
        (1004, AuthFailed),
        (1102, AuthFailed),
        (1103, AuthFailed),
        (1301, Rejected),
        (1200, Rejected),
        (1302, RateLimited),
        (1303, RateLimited),
        (5000, Transient),
        (5001, Transient),
    ]
    for code, expected in cases:
        control.inject(400, code, op="submit")
        with pytest.raises(expected) as info:
            await adapter.submit(acc, CREDS, video(f"t-{code}"))
        assert type(info.value) is expected, code
    status = await adapter.fetch(acc, CREDS, "text2video/404404")
    assert status.state is UpstreamState.UNKNOWN
    with pytest.raises(Rejected):
        await adapter.cancel(acc, CREDS, "text2video/1")
