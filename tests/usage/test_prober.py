"""The prober end to end: simulator over HTTP, real Redis and PostgreSQL, several instances."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

from accounts.errors import NoAccountAvailable
from accounts.model import Platform, QuotaWindow, Status, Window
from accounts.repository import AccountRepository
from scheduler.selection.reports import ReleaseOutcome
from scheduler.selection.select import SelectRequest
from scheduler.selection.store import encode_reading
from scheduler.usage.store import Claimed, NotDue

from .kit import CIPHER, GROUP, create, oauth, open_instance, publish, settings, state_of
from .simusage import SimUsage

ANTHROPIC = SelectRequest(group=GROUP, platform=Platform.ANTHROPIC, model="claude-x", wait_ms=0)
# The simulator's window resets this long after the test sets it.
RESET_IN_S = 1.5


async def _until(predicate: Any, timeout_s: float = 20.0, step_s: float = 0.02) -> None:
    """Wait until ``predicate()`` (sync or async) holds; fails after ``timeout_s``."""
    with trio.fail_after(timeout_s):
        while True:
            got = predicate()
            if hasattr(got, "__await__"):
                got = await got
            if got:
                return
            await trio.sleep(step_s)


async def test_paused_account_comes_back_on_another_instance_after_its_reset(
    db: Any, redis: Any, redis_url: str, redis_prefix: str, usage_sim: tuple[str, SimUsage]
) -> None:
    """A response pauses the account at 97 % with no reset given (paused until the reading is
    stale, two hours). The prober on instance A reads the usage endpoint, learns the reset,
    reads again just after it; instance B's next selection picks the account."""
    repo = AccountRepository(db, CIPHER)
    box = settings(paused_interval_s=0.5)
    base_url, sim = usage_sim
    [acct] = await create(repo, [oauth("p", "anthropic", base_url, "tok-p")])
    await publish(redis, [acct])
    async with open_instance(redis_url, redis_prefix, box, repo, prober=False) as b:
        got = await b.selector.select(ANTHROPIC)
        # The passive path: a response whose headers say 97 % of the 5h window, no reset.
        headers = {"anthropic-ratelimit-unified-5h-utilization": "0.97"}
        await b.reporter.release(got.lease_id, ReleaseOutcome(status=200, headers=headers))
        with pytest.raises(NoAccountAvailable) as none:
            await b.selector.select(ANTHROPIC)
        assert none.value.exclusions == {"quota_paused_5h": 1}
        sim.set_usage("tok-p", five={"used_percent": 97, "resets_in_s": RESET_IN_S})
        reset_mono = time.monotonic() + RESET_IN_S
        paused_at = time.time()
        async with open_instance(redis_url, redis_prefix, box, repo) as a:

            def b_sees_it_unpaused() -> bool:
                windows = b.selector.view.get(acct.id).windows
                return any(w.window == Window.FIVE_HOURS and w.used_ratio < 0.9 for w in windows)

            await _until(b_sees_it_unpaused)
            picked = await b.selector.select(ANTHROPIC)
            back_after_s = time.time() - paused_at
            assert a.prober.probes >= 2
            # The metrics saw a paused account come back after its reset.
            waited = a.metrics.usage_reset_to_schedulable.collect()[0].samples
            assert [x.value for x in waited if x.name.endswith("_count")] == [1.0]
            assert a.prober.paused_count("anthropic") == 0
    arrivals = sim.arrivals("anthropic")
    assert picked.account.id == acct.id
    # Read before the reset (to learn it) and after it (what brought the account back).
    assert min(arrivals) < reset_mono <= max(arrivals)
    # "Well before stale": seconds, against the two hours the reading had.
    assert back_after_s < box().quota.stale_after_s / 100


async def test_a_probe_error_backs_off_and_changes_no_account_state(
    db: Any, redis: Any, redis_url: str, redis_prefix: str, usage_sim: tuple[str, SimUsage]
) -> None:
    """5xx, 429 (with Retry-After), a hang and a 403 (no scope): each backs off in the shared
    record and leaves the account's runtime state and its row exactly as they were."""
    repo = AccountRepository(db, CIPHER)
    box = settings(failure_backoff_s=30.0, timeout_s=0.5, lock_ttl_s=2.0)
    base_url, sim = usage_sim
    sim.control.set(retry_after_s=120)
    [acct] = await create(repo, [oauth("e", "anthropic", base_url, "tok-e")])
    async with open_instance(redis_url, redis_prefix, box, repo, prober=False) as inst:
        # Some state to keep: a reading near the threshold and a last-use stamp.
        near = QuotaWindow(window=Window.FIVE_HOURS, used_ratio=0.85, observed_at=time.time())
        await inst.selector.runtime.set_state(
            "anthropic", acct.id, {"last_used": "1", **dict([encode_reading(near)])}
        )
        before_state = await inst.redis.client.hgetall(
            inst.selector.runtime.keys.state("anthropic", acct.id)
        )
        before_row = await repo.get(acct.id)
        store = inst.probe.store
        cases: list[tuple[str, Any, float]] = [
            ("failed", lambda: sim.control.inject(503, platform="anthropic", op="usage"), 30),
            (
                "rate_limited",
                lambda: sim.control.inject(429, platform="anthropic", op="usage"),
                120,
            ),
            ("failed", lambda: sim.control.set(hang_rate=1.0, faults_on=["usage"]), 30),
            (
                "cannot_probe",
                lambda: sim.no_scope("anthropic"),
                6 * 3600,
            ),
        ]
        fails = 0
        for expected, arrange, at_least_s in cases:
            sim.control.set(hang_rate=0.0)
            arrange()
            started = time.time()
            with trio.fail_after(10):
                result = await inst.probe.probe_now(acct.id)
            assert (result.result, result.windows, result.account_error) == (expected, (), False)
            record = (await store.records([acct.id]))[acct.id]
            fails = fails if expected == "cannot_probe" else fails + 1
            assert record.fails == fails and record.result == expected
            assert record.not_before is not None
            assert record.not_before >= started + at_least_s * 0.99
            # The schedule's claim (not an operator's) is refused until the backoff ends.
            claim = await store.claim(acct.id, "anthropic", box().usage)
            assert isinstance(claim, NotDue) and claim.not_before == pytest.approx(
                record.not_before
            )
        after_state = await inst.redis.client.hgetall(
            inst.selector.runtime.keys.state("anthropic", acct.id)
        )
        after_row = await repo.get(acct.id)
    assert after_state == before_state
    assert (after_row.status, after_row.version) == (Status.ACTIVE, before_row.version)


async def test_a_probe_401_marks_the_account_errored_exactly_as_a_reported_401(
    db: Any, redis: Any, redis_url: str, redis_prefix: str, usage_sim: tuple[str, SimUsage]
) -> None:
    repo = AccountRepository(db, CIPHER)
    box = settings()
    base_url, sim = usage_sim
    reported, probed, scoped = await create(
        repo,
        [
            oauth("r", "anthropic", base_url, "tok-r"),
            oauth("q", "anthropic", base_url, "tok-q"),
            oauth("s", "anthropic", base_url, "tok-s"),
        ],
    )
    await publish(redis, [reported])
    sim.control.set(refused_accounts=["tok-q"])
    # Probed after tok-q (whose 401 comes before any injected answer): tok-s gets the 403.
    sim.no_scope("anthropic")
    async with open_instance(redis_url, redis_prefix, box, repo, prober=False) as inst:
        t0 = time.time()
        got = await inst.selector.select(ANTHROPIC)
        await inst.reporter.release(got.lease_id, ReleaseOutcome(status=401))
        result = await inst.probe.probe_now(probed.id)
        scope_result = await inst.probe.probe_now(scoped.id)
        t1 = time.time()
        states = {a.id: await state_of(inst, a) for a in (reported, probed, scoped)}
    rows = {a.id: await repo.get(a.id) for a in (reported, probed, scoped)}
    events = await db.fetch(
        "SELECT kind, count(*) AS n FROM schedule_events GROUP BY kind ORDER BY kind"
    )
    assert (result.result, result.account_error) == ("auth_failed", True)
    for a in (reported, probed):
        row, state = rows[a.id], states[a.id]
        assert (row.status, row.error_reason) == (Status.ERROR, "upstream answered 401")
        assert row.version == a.version + 1
        assert state.unschedulable_reason == "upstream answered 401"
        assert t0 + 299 <= (state.unschedulable_until or 0) <= t1 + 301
    # 403 missing scope: cannot probe; the account is untouched.
    assert (scope_result.result, scope_result.account_error) == ("cannot_probe", False)
    assert rows[scoped.id].status == Status.ACTIVE and states[scoped.id].unschedulable_until is None
    assert {r["kind"]: r["n"] for r in events}.get("account_error") == 2


async def test_the_probe_lock_keeps_a_second_instance_out(
    db: Any, redis: Any, redis_url: str, redis_prefix: str, usage_sim: tuple[str, SimUsage]
) -> None:
    """The claim script on its own: a held lock refuses everyone else, even an operator."""
    repo = AccountRepository(db, CIPHER)
    box = settings(min_interval_s=0.0)
    base_url, _sim = usage_sim
    [acct] = await create(repo, [oauth("l", "openai", base_url, "tok-l")])
    async with (
        open_instance(redis_url, redis_prefix, box, repo, prober=False) as a,
        open_instance(redis_url, redis_prefix, box, repo, prober=False) as b,
    ):
        first = await a.probe.store.claim(acct.id, "openai", box().usage)
        assert isinstance(first, Claimed)
        second = await b.probe.store.claim(acct.id, "openai", box().usage, force=True)
        assert not isinstance(second, Claimed)
        # Only the owner's token releases it.
        assert not await b.probe.store.finish(
            acct.id, "not-the-token", result="ok", fails=0, delay_s=0
        )
        assert await a.probe.store.finish(acct.id, first.token, result="ok", fails=0, delay_s=0)
        assert isinstance(await b.probe.store.claim(acct.id, "openai", box().usage), Claimed)
