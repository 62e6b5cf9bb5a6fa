"""Release outcomes change the right runtime state, shared by every instance (real Redis)."""

from __future__ import annotations

import time

import pytest
import trio

from accounts.model import Platform
from scheduler.selection.reports import ReleaseOutcome, Reporter
from scheduler.selection.select import SelectRequest

from .selectkit import GROUP, SettingsBox, make_account, open_selector, set_state

REQ = SelectRequest(group=GROUP, platform=Platform.OPENAI, model="gpt-4o")


async def _one(redis, box=None, **kw):
    a = make_account("a", concurrency=2, **kw)
    box = box or SettingsBox()
    sel = await open_selector(redis, [a], box)
    return a, sel, Reporter(sel, box)


async def _state(sel, a):
    return (await sel.runtime.read_many("openai", [a.id]))[a.id]


def _at_runtime(headers: dict[str, str], now: float) -> dict[str, str]:
    """Absolute reset times must be computed when the test runs, not at collection."""
    return {k: str(int(now) + 900) if v == "{now+900}" else v for k, v in headers.items()}


@pytest.mark.parametrize(
    ("headers", "low", "high"),
    [
        ({"Retry-After": "30"}, 29, 31),
        ({"retry-after-ms": "45000"}, 44, 46),
        (
            {
                "x-codex-primary-used-percent": "100",
                "x-codex-primary-window-minutes": "300",
                "x-codex-primary-reset-after-seconds": "1200",
            },
            1199,
            1201,
        ),
        (
            {
                "anthropic-ratelimit-unified-status": "rejected",
                # Epoch seconds, filled in when the test runs (see _at_runtime).
                "anthropic-ratelimit-unified-reset": "{now+900}",
            },
            899,
            901,
        ),
        ({"anthropic-ratelimit-unified-status": "rejected"}, 59, 61),  # no reset: default 60 s
        ({}, 59, 61),
    ],
)
async def test_429_sets_rate_limited_until_the_reset(redis, headers, low, high):
    a, sel, reporter = await _one(redis)
    with trio.fail_after(10):
        got = await sel.select(REQ)
        now = time.time()
        headers = _at_runtime(headers, now)
        done = await reporter.release(got.lease_id, ReleaseOutcome(status=429, headers=headers))
        state = await _state(sel, a)
    assert "rate_limited" in done.effects
    assert low <= state.rate_limited_until - now <= high


async def test_529_overloaded_and_success_updates_ewmas_and_quota(redis):
    a, sel, reporter = await _one(redis, box=SettingsBox(runtime={"overloaded_s": 90}))
    with trio.fail_after(10):
        got = await sel.select(REQ)
        now = time.time()
        await reporter.release(got.lease_id, ReleaseOutcome(status=529))
        state = await _state(sel, a)
        assert 89 <= state.overloaded_until - now <= 91
        assert state.error_rate == 1.0
        await set_state(sel.runtime, "openai", a.id, {"ol_until": "0"})
        # The release reply told this instance about the overload; a clear written
        # straight into Redis (as by another writer) is seen at the next refresh.
        sel.view.ttl_s = 0
        got = await sel.select(REQ)
        codex = {
            "x-codex-primary-used-percent": "42.5",
            "x-codex-primary-window-minutes": "300",
            "x-codex-primary-reset-after-seconds": "3600",
            "x-codex-secondary-used-percent": "10",
            "x-codex-secondary-window-minutes": "10080",
            "x-codex-secondary-reset-after-seconds": "86400",
        }
        out = ReleaseOutcome(
            status=200, latency_ms=100, ttft_ms=50, headers=codex, response_id="r1"
        )
        done = await reporter.release(got.lease_id, out)
        state = await _state(sel, a)
    assert set(done.effects) == {"quota", "response_binding"}
    assert abs(state.error_rate - 0.8) < 1e-9  # alpha 0.2: 0.2 * 0 + 0.8 * 1
    assert state.latency_ms == 100 and state.ttft_ms == 50
    used = {w.window.value: round(w.used_ratio, 4) for w in state.windows}
    assert used == {"5h": 0.425, "7d": 0.1}
    assert state.last_used_at is not None and abs(state.last_used_at - time.time()) < 5
    assert await redis.client.get(sel.runtime.keys.response("openai", GROUP, "r1")) == a.id


async def test_usage_crossing_threshold_pauses_on_another_instance(redis):
    """Instance 1 reports 95 % used; instance 2 (fresh local view) never picks the account."""
    a = make_account("a", concurrency=5, priority=0)
    b = make_account("b", concurrency=5, priority=9)
    box = SettingsBox(quota={"default_5h_threshold": 0.9}, scoring={"top_k": 1})
    one = await open_selector(redis, [a, b], box)
    two = await open_selector(redis, [a, b], box)
    with trio.fail_after(10):
        assert (await two.select(REQ)).account.id == a.id  # two's view is loaded now
        got = await one.select(REQ)
        headers = {
            "x-codex-primary-used-percent": "95",
            "x-codex-primary-window-minutes": "300",
            "x-codex-primary-reset-after-seconds": "3600",
        }
        await Reporter(one, box).release(got.lease_id, ReleaseOutcome(status=200, headers=headers))
        picks = {(await two.select(REQ)).account.id for _ in range(5)}
    assert picks == {b.id}


async def _stored_account(db):  # type: ignore[no-untyped-def]
    from accounts.crypto import Cipher, CryptoConfig
    from accounts.inputs import AccountCreate
    from accounts.repository import AccountRepository
    from tests.support import CRYPTO_KEY

    repo = AccountRepository(db, Cipher(CryptoConfig(keys=[CRYPTO_KEY])))
    created = await repo.create(
        AccountCreate(
            name="a",
            platform=Platform.OPENAI,
            groups=[GROUP],
            credentials={"api_key": "sk-" + "x" * 20},
        )
    )
    return repo, created


@pytest.mark.parametrize("late", [False, True], ids=["live", "late"])
async def test_401_marks_the_account_error_in_postgres(redis, db, late):
    """401: status error persisted through the repository (bucket dirty) and held out in Redis.

    Late (issue 10 item 6): the lease expired before the report; the account is taken
    out of rotation all the same and the answer says the lease was gone.
    """
    repo, created = await _stored_account(db)
    box = SettingsBox()
    sel = await open_selector(redis, [created], box)
    reporter = Reporter(sel, box, repo)
    with trio.fail_after(10):
        got = await sel.select(REQ)
        if late:  # the lease's expiry passes (as Redis judges it) before the report
            leases = sel.runtime.keys.leases("openai", created.id)
            await redis.client.zadd(leases, {got.lease_id: 1})  # expired at epoch 1 ms
        done = await reporter.release(got.lease_id, ReleaseOutcome(status=401))
        assert done.lease == ("gone" if late else "released")
        stored = await repo.get(created.id)
        state = await _state(sel, created)
        events = await db.fetchval(
            "SELECT count(*) FROM schedule_events WHERE kind = 'account_error'"
        )
    assert "account_error" in done.effects
    assert stored.status.value == "error"
    assert state.unschedulable_until and state.unschedulable_until > time.time()
    assert events >= 1
