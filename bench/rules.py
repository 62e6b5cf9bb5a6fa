"""Benchmark: the pure candidate rules over 10,000 varied accounts.

Evaluates ``quota_pause`` alone and the hot-path
``check`` (model + state + quota + deadlines) for every account, several rounds,
and prints the total per 10,000 and the cost per account. Target (issue 3): the
whole 10,000 in <= 20 ms. Pure Python, no servers.

    python bench/rules.py [--accounts 10000] [--rounds 30]
    python -m bench.rules        (same, from the repository root)
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, Python puts bench/ first on sys.path: swap the script's folder for
# the repository root before importing anything else, so the project's packages import.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import gc  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from importlib import metadata  # noqa: E402

from accounts.model import (  # noqa: E402
    Account,
    Kind,
    Platform,
    QuotaPolicy,
    QuotaWindow,
    Status,
    Window,
)
from accounts.rules import AccountRuntime, check, quota_pause  # noqa: E402

NOW = 1_790_000_000.0
# The budget for one pass over 10,000 accounts.
TARGET_MS = 20.0
MODELS = ("gpt-5", "gpt-5-codex", "claude-sonnet-4-5", "o3")


def _maybe(rng: random.Random, p: float, value: object) -> object:
    return value if rng.random() < p else None


def make_account(rng: random.Random, i: int) -> Account:
    """Mostly healthy accounts, with the mix of states a real pool has."""
    status = rng.choices(list(Status), weights=(90, 5, 5))[0]
    return Account(
        id=f"acc-{i}",
        name=f"account {i}",
        platform=rng.choice((Platform.OPENAI, Platform.ANTHROPIC)),
        kind=Kind.OAUTH,
        groups=("default",),
        models=rng.choice(((), (), ("gpt-5*",), ("claude-*", "o3"), ("gpt-5", "o3"))),
        status=status,
        schedulable=rng.random() < 0.97,
        expires_at=_maybe(rng, 0.2, datetime(2026, 9, rng.randint(1, 30), tzinfo=UTC)),  # type: ignore[arg-type]
        auto_pause_5h_threshold=_maybe(rng, 0.3, rng.uniform(0.5, 1.0)),  # type: ignore[arg-type]
        auto_pause_7d_threshold=_maybe(rng, 0.3, rng.uniform(0.5, 1.0)),  # type: ignore[arg-type]
        auto_pause_5h_disabled=rng.random() < 0.1,
        auto_pause_7d_disabled=rng.random() < 0.1,
    )


def make_runtime(rng: random.Random) -> AccountRuntime:
    """Deadlines past and future; zero to two readings, fresh, stale or reset."""
    windows = []
    for window in (Window.FIVE_HOURS, Window.SEVEN_DAYS):
        if rng.random() < 0.8:
            observed = NOW - rng.uniform(0, 3 * 3600)
            windows.append(
                QuotaWindow(
                    window=window,
                    used_ratio=rng.uniform(0, 1.05),
                    observed_at=observed,
                    reset_at=observed + rng.uniform(0, 6 * 3600) if rng.random() < 0.5 else None,
                    reset_after_s=rng.uniform(0, 6 * 86400),
                )
            )

    def deadline() -> float | None:
        return NOW + rng.uniform(-600, 600) if rng.random() < 0.1 else None

    return AccountRuntime(
        rate_limited_until=deadline(),
        overloaded_until=deadline(),
        unschedulable_until=deadline(),
        windows=tuple(windows),
        last_used_at=NOW - rng.uniform(0, 600),
    )


def time_rounds(fn: Callable[[], object], rounds: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU milliseconds per call of ``fn`` over ``rounds`` runs.

    One warm-up call first. CPU time (this thread's) is printed beside wall time
    because on a shared 2-core machine other processes stretch the wall clock
    while the work done stays the same. The cyclic GC is off while timing (as
    ``timeit`` does): the rules create no cycles, so a collection here would
    only measure the benchmark's own heap.
    """
    fn()
    wall, cpu = [], []
    gc.disable()
    try:
        for _ in range(rounds):
            c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
            fn()
            wall.append((time.perf_counter_ns() - t0) / 1e6)
            cpu.append((time.thread_time_ns() - c0) / 1e6)
    finally:
        gc.enable()
    return wall, cpu


def print_machine(title: str) -> None:
    """The shared setup lines (bench/_common.py) when present, else the same facts here."""
    try:
        from bench._common import print_setup
    except ImportError:
        pass
    else:
        print_setup(title, packages=("msgspec", "hypothesis"))
        return
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"== {title}")
    print(f"machine:  {os.cpu_count()} cores, {cpu}, load avg {load}")
    print(f"system:   {platform.system()} {platform.release()}")
    print(
        f"python:   {platform.python_implementation()} {platform.python_version()}; "
        f"msgspec {metadata.version('msgspec')}"
    )


def report(label: str, times: tuple[list[float], list[float]], n: int) -> None:
    wall, cpu = times
    p50 = statistics.median(wall)
    cpu50 = statistics.median(cpu)
    verdict = "OK" if p50 <= TARGET_MS else "OVER TARGET"
    print(
        f"{label:<28} {n} accounts: wall median {p50:6.2f} ms, best {min(wall):6.2f} ms, "
        f"worst {max(wall):6.2f} ms; cpu median {cpu50:6.2f} ms, best {min(cpu):6.2f} ms "
        f"| {p50 * 1e6 / n:5.0f} ns/account wall, {cpu50 * 1e6 / n:5.0f} ns cpu (medians) "
        f"| target <= {TARGET_MS:.0f} ms wall: {verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    pool = [
        (make_account(rng, i), make_runtime(rng), rng.choice(MODELS)) for i in range(args.accounts)
    ]
    policy = QuotaPolicy(default_5h_threshold=0.9, default_7d_threshold=0.95)

    def pauses() -> int:
        return sum(quota_pause(a, rt.windows, policy, NOW).paused for a, rt, _m in pool)

    def checks() -> Counter[str]:
        return Counter(str(check(a, rt, m, policy, NOW)) for a, rt, m in pool)

    def checks_loop() -> None:
        for account, runtime, model in pool:
            check(account, runtime, model, policy, NOW)

    print_machine("accounts rules: quota_pause, check")
    print(
        f"policy: 5h {policy.default_5h_threshold}, 7d {policy.default_7d_threshold}, "
        f"stale after {policy.stale_after_s:.0f} s; seed {args.seed}; {args.rounds} rounds"
    )
    outcome = checks()
    print("check() outcomes: " + ", ".join(f"{k}={v}" for k, v in outcome.most_common()))
    report("quota_pause", time_rounds(pauses, args.rounds), len(pool))
    report("check (model+state+quota+dl)", time_rounds(checks_loop, args.rounds), len(pool))


if __name__ == "__main__":
    main()
