"""Two prober instances against one simulator: rates hold fleet-wide, one probe per account.

Counted where it matters, at the simulator: every usage request's arrival time
(simulator clock) per platform, and each account's concurrent-request peak.
"""

from __future__ import annotations

import bisect
from typing import Any

import pytest
import trio

from accounts.repository import AccountRepository

from .kit import CIPHER, create, oauth, open_instance, settings
from .simusage import SimUsage

ACCOUNTS_PER_PLATFORM = 500
# Below what two instances in one test process manage on a loaded 2-core machine, so the
# rates really bind (with the limiter broken, the simulator sees far more than these).
GLOBAL_RATE = 60.0
ANTHROPIC_RATE = 30.0
BURST = 5
# The window the rates are checked over, and the slack for network jitter: a probe
# admitted at t (Redis time) arrives at the simulator a little later, and not always
# equally late, so arrivals may bunch by up to this much relative to admissions.
WINDOW_S = 2.0
JITTER_S = 0.25


def max_in_window(times: list[float], window_s: float) -> int:
    """Most arrivals inside any half-open interval of ``window_s`` seconds."""
    times = sorted(times)
    return max(
        (bisect.bisect_left(times, t + window_s) - i for i, t in enumerate(times)), default=0
    )


def claims(inst: Any, reason: str) -> float:
    """This instance's claims refused for ``reason`` (its metrics counter)."""
    return sum(
        sample.value
        for metric in inst.metrics.usage_claims.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels.get("reason") == reason
    )


async def _until_probes(instances: tuple[Any, ...], total: int, timeout_s: float) -> None:
    """Wait until the instances have finished ``total`` probes (their own counters: asking the
    simulator from here would block this trio loop for a round trip each time)."""
    with trio.fail_after(timeout_s):
        while sum(inst.prober.probes for inst in instances) < total:
            await trio.sleep(0.05)


@pytest.mark.slow
async def test_rates_hold_with_a_thousand_accounts_due_at_once(
    db: Any,
    redis: Any,
    redis_url: str,
    redis_prefix: str,
    usage_sim_process: tuple[str, SimUsage],
) -> None:
    """1,000 accounts all due at the start of two instances: the simulator sees at most the
    global rate overall and the Anthropic rate for Anthropic, each account read exactly once."""
    base_url, sim = usage_sim_process
    repo = AccountRepository(db, CIPHER)
    box = settings(
        start_spread_s=0.0,
        min_interval_s=600.0,
        global_rate_per_s=GLOBAL_RATE,
        platform_rate_per_s=1000.0,
        platform_rates={"anthropic": ANTHROPIC_RATE},
        burst=BURST,
        concurrency=16,
    )
    n = ACCOUNTS_PER_PLATFORM
    await create(
        repo,
        [oauth(f"a{i}", "anthropic", base_url, f"tok-a{i}") for i in range(n)]
        + [oauth(f"o{i}", "openai", base_url, f"tok-o{i}") for i in range(n)],
    )
    async with (
        open_instance(redis_url, redis_prefix, box, repo) as one,
        open_instance(redis_url, redis_prefix, box, repo) as two,
    ):
        await _until_probes((one, two), 2 * n, timeout_s=120)
    anthropic, openai = sim.arrivals("anthropic"), sim.arrivals("openai")
    reads = sim.control.counters()["accounts"]
    assert len(anthropic) == len(openai) == n
    # Each account exactly once, whichever instance got it.
    assert sorted(reads[f"tok-a{i}"]["usage_reads"] for i in range(n)) == [1] * n
    assert sorted(reads[f"tok-o{i}"]["usage_reads"] for i in range(n)) == [1] * n
    # The rates, over any window, with the jitter slack.
    assert (
        max_in_window(anthropic + openai, WINDOW_S) <= GLOBAL_RATE * (WINDOW_S + JITTER_S) + BURST
    )
    assert max_in_window(anthropic, WINDOW_S) <= ANTHROPIC_RATE * (WINDOW_S + JITTER_S) + BURST
    # And they did limit: 500 Anthropic reads cannot go out faster than the Anthropic rate.
    assert max(anthropic) - min(anthropic) >= (n - BURST) / ANTHROPIC_RATE - JITTER_S


@pytest.mark.slow
async def test_two_instances_never_probe_one_account_at_once(
    db: Any, redis: Any, redis_url: str, redis_prefix: str, usage_sim: tuple[str, SimUsage]
) -> None:
    """Both instances want every account again every 50 ms (each can probe all of them at
    once), and each probe takes 100 ms at the simulator: only the lock keeps them apart. No
    account ever has two usage reads in flight."""
    base_url, sim = usage_sim
    sim.control.set(latency_s=0.1)
    repo = AccountRepository(db, CIPHER)
    box = settings(
        threshold=None,
        start_spread_s=0.0,
        min_interval_s=0.0,
        idle_interval_s=0.05,
        jitter=0.0,
        concurrency=2 * 8,
    )
    n = 8
    await create(
        repo,
        [oauth(f"a{i}", "anthropic", base_url, f"tok-a{i}") for i in range(n)]
        + [oauth(f"o{i}", "openai", base_url, f"tok-o{i}") for i in range(n)],
    )
    async with (
        open_instance(redis_url, redis_prefix, box, repo) as one,
        open_instance(redis_url, redis_prefix, box, repo) as two,
    ):
        await _until_probes((one, two), 2 * n * 8, timeout_s=60)
        locked = claims(one, "locked") + claims(two, "locked")
        print(
            "DBG",
            {r: (claims(one, r), claims(two, r)) for r in ("locked", "not_due", "over_rate")},
            one.prober.probes,
            two.prober.probes,
            one.prober.evaluations,
            two.prober.evaluations,
        )
    accounts = sim.control.counters()["accounts"]
    peaks = {k: v["concurrent_peak"] for k, v in accounts.items() if k.startswith("tok-")}
    assert len(peaks) == 2 * n
    assert max(peaks.values()) == 1, {k: p for k, p in peaks.items() if p > 1}
    # They did contend: each instance found accounts locked by the other.
    assert locked > 0
    assert min(v["usage_reads"] for k, v in accounts.items() if k.startswith("tok-")) >= 2
