"""Supervisor: restarts with growing, jittered, capped delays; limits; cancellation.

Time runs on pytest-trio's ``autojump_clock`` (the supervisor reads trio's clock),
so the delays are checked exactly without sleeping for real. The end-to-end
check that an essential actor crashing past the limit makes the process exit 1
runs the real daemon through :func:`scheduler.cli.running.run_daemon`.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from accounts.db import DatabaseConfig, open_database, open_loop
from accounts.errors import SupervisorError
from scheduler.cli.running import EXIT_FAILURE, run_daemon
from scheduler.core.health import Health, Phase, State
from scheduler.core.metrics import Metrics
from scheduler.core.supervisor import RestartPolicy, Supervisor

from ...support import make_config, truncate_all


class Flaky:
    """Records the trio time of each start; crashes after (or before) started()."""

    def __init__(
        self,
        name: str = "flaky",
        *,
        essential: bool = False,
        crash_before_started: bool = False,
        crashes: int = 10**6,
    ) -> None:
        self.name = name
        self.essential = essential
        self.crash_before_started = crash_before_started
        self.crashes_left = crashes
        self.starts: list[float] = []
        self.settled = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        self.starts.append(trio.current_time())
        if self.crashes_left <= 0:
            task_status.started(len(self.starts))
            self.settled.set()
            await trio.sleep_forever()
        self.crashes_left -= 1
        if self.crash_before_started:
            raise RuntimeError("boom before started")
        task_status.started(len(self.starts))
        await trio.sleep(0)
        raise RuntimeError("boom")


def _truncate(pg_dsn: str) -> None:
    """What the async ``db`` fixture does, for a sync test."""

    async def go() -> None:
        async with open_loop(), open_database(DatabaseConfig(dsn=pg_dsn, pool_max=1)) as db:
            await truncate_all(db)

    trio.run(go)


def _supervisor(**policy: Any) -> tuple[Supervisor, Health, Metrics]:
    metrics = Metrics()
    health = Health(metrics, max_loop_lag_s=1.0)
    return Supervisor(RestartPolicy(**policy), health, metrics), health, metrics


def _restarts(metrics: Metrics, actor: str) -> float:
    value = metrics.registry.get_sample_value(
        "stationmaster_actor_restarts_total", {"actor": actor}
    )
    return value or 0.0


async def test_crashing_actor_restarts_with_growing_jittered_capped_delays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sup, health, metrics = _supervisor(
        backoff_initial_s=1.0, backoff_max_s=8.0, max_restarts=50, window_s=10_000
    )
    actor = Flaky(crashes=7)
    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            await sup.start(nursery, actor)
            await actor.settled.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert health.get("flaky").state is State.UP  # type: ignore[union-attr]
            nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in zip(actor.starts, actor.starts[1:], strict=False)]
    assert len(gaps) == 7
    for i, gap in enumerate(gaps, start=1):
        base = min(8.0, 2.0 ** (i - 1))
        assert 0.75 * base <= gap <= 1.25 * base, (i, gap)
    # Until the cap, each delay exceeds the previous despite the jitter.
    assert gaps[0] < gaps[1] < gaps[2] < gaps[3]
    assert _restarts(metrics, "flaky") == 7
    assert len(sup.restarts["flaky"]) == 7


async def test_quiet_window_resets_the_backoff(autojump_clock: trio.testing.MockClock) -> None:
    sup, _health, _metrics = _supervisor(
        backoff_initial_s=1.0, backoff_max_s=60.0, max_restarts=50, window_s=30
    )
    crash_now = trio.Event()
    starts: list[float] = []

    class Steady:
        name, essential = "steady", False

        async def run(
            self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
        ) -> None:
            nonlocal crash_now
            starts.append(trio.current_time())
            task_status.started()
            if len(starts) <= 3:
                raise RuntimeError("early crash")
            await crash_now.wait()
            crash_now = trio.Event()
            raise RuntimeError("late crash")

    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            await sup.start(nursery, Steady())
            while len(starts) < 4:
                await trio.sleep(0.5)
            # Three crashes in a row: the next delay would be ~8 s. Stay quiet
            # longer than the window, then crash once more.
            await trio.sleep(31)
            crash_now.set()
            while len(starts) < 5:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert 4 * 0.75 <= starts[3] - starts[2] <= 4 * 1.25
    assert 0.75 <= starts[4] - starts[3] - 31 <= 1.25 + 0.5


async def test_crash_before_started_is_retried_and_start_returns_the_value(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sup, health, metrics = _supervisor(backoff_initial_s=0.5, max_restarts=5)
    actor = Flaky(crash_before_started=True, crashes=3)
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            value = await sup.start(nursery, actor)
            assert value == 4  # the fourth run reported started
            assert health.get("flaky").state is State.UP  # type: ignore[union-attr]
            nursery.cancel_scope.cancel()
    assert _restarts(metrics, "flaky") == 3


async def test_essential_actor_past_the_limit_raises(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sup, health, _metrics = _supervisor(backoff_initial_s=0.1, max_restarts=3, window_s=60)
    actor = Flaky("core", essential=True)
    with trio.fail_after(100), pytest.RaisesGroup(SupervisorError, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            await sup.start(nursery, actor)
            await trio.sleep_forever()
    assert len(actor.starts) == 4  # the first run plus max_restarts restarts
    comp = health.get("core")
    assert comp is not None and comp.state is State.DOWN
    assert "gave up after 4 crashes" in comp.detail


async def test_essential_actor_failing_to_start_raises_from_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sup, _health, _metrics = _supervisor(backoff_initial_s=0.1, max_restarts=2)
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            with pytest.raises(SupervisorError) as info:
                await sup.start(nursery, Flaky("core", essential=True, crash_before_started=True))
    assert info.value.actor == "core"


async def test_non_essential_actor_past_the_limit_stays_down(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sup, health, metrics = _supervisor(backoff_initial_s=0.1, max_restarts=2, window_s=60)
    health.set_phase(Phase.RUNNING)
    actor = Flaky("optional")
    other = Flaky("other", crashes=0)
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            await sup.start(nursery, actor)
            await sup.start(nursery, other)
            await trio.sleep(50)
            # The other actor is untouched and the daemon stays ready.
            assert len(other.starts) == 1
            assert health.ready()
            nursery.cancel_scope.cancel()
    assert len(actor.starts) == 3
    comp = health.snapshot()["components"]["optional"]  # type: ignore[index]
    assert comp["state"] == "down" and "gave up" in comp["detail"]
    assert _restarts(metrics, "optional") == 2


async def test_stop_cancels_newest_first_and_cancellation_is_not_a_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Stopping is not crashing: no restart, even when cleanup itself raises."""
    sup, health, metrics = _supervisor(backoff_initial_s=0.1, max_restarts=1)
    stopped: list[str] = []

    class Quiet:
        def __init__(self, name: str, *, fail_in_cleanup: bool = False) -> None:
            self.name, self.essential, self.fail = name, True, fail_in_cleanup

        async def run(
            self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
        ) -> None:
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                stopped.append(self.name)
                if self.fail:
                    raise RuntimeError("cleanup went wrong")

    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            for actor in (Quiet("a"), Quiet("b", fail_in_cleanup=True), Quiet("c")):
                await sup.start(nursery, actor)
            await sup.stop(timeout_s=1)
    assert stopped == ["c", "b", "a"]
    assert sup.restarts == {}
    assert all(health.get(n).state is State.STOPPED for n in "abc")  # type: ignore[union-attr]
    assert _restarts(metrics, "b") == 0


@given(
    initial=st.floats(0.001, 10),
    cap=st.floats(0.001, 100),
    n=st.integers(1, 10_000),
    rand=st.floats(0, 1),
)
def test_delay_is_bounded_capped_and_grows(initial: float, cap: float, n: int, rand: float) -> None:
    policy = RestartPolicy(backoff_initial_s=initial, backoff_max_s=cap)
    delay = policy.delay(n, lambda: rand)
    base = min(cap, initial * 2.0 ** min(n - 1, 60))
    assert 0.75 * base - 1e-9 <= delay <= 1.25 * base + 1e-9
    assert delay <= 1.25 * cap + 1e-9
    assert policy.delay(n + 1, lambda: rand) >= delay - 1e-9


def test_run_daemon_exits_1_when_an_essential_actor_keeps_crashing(
    pg_dsn: str, redis_url: str, redis_prefix: str
) -> None:
    """The real daemon, in this process: started fine, then an essential actor dies repeatedly."""
    config = make_config(
        pg_dsn,
        redis_url,
        redis_prefix,
        supervisor={"backoff_initial_s": 0.01, "backoff_max_s": 0.05, "max_restarts": 2},
    )
    _truncate(pg_dsn)  # rows left by other tests (other Fernet keys) would stop the start
    actor = Flaky("doomed", essential=True)
    assert run_daemon(config, extra_actors=[actor]) == EXIT_FAILURE
    assert len(actor.starts) == 3
