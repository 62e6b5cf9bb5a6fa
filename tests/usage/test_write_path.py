"""One write path: a probe stores readings exactly as a reported response does, for everyone."""

from __future__ import annotations

import json
import time
from typing import Any

import msgspec
import trio

from accounts.model import Platform, QuotaWindow
from accounts.repository import AccountRepository
from scheduler.selection.reports import ReleaseOutcome
from scheduler.selection.select import Selector, SelectRequest
from scheduler.selection.watcher import ReleaseWatcher
from scheduler.usage import ADAPTERS
from snapshot.redis import RedisConfig, open_redis
from snapshot.view import ScheduleView

from .kit import CIPHER, GROUP, create, oauth, open_instance, publish, settings

OPENAI = SelectRequest(group=GROUP, platform=Platform.OPENAI, model="gpt-5", wait_ms=0)
RESET_5H, RESET_7D = 9_000, 400_000  # seconds from now


def _decoded(flat: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {k: json.loads(v) for k, v in flat.items() if k.startswith("q:")}


async def test_probe_readings_are_stored_exactly_as_a_reported_response_stores_them(
    db: Any, redis: Any, redis_url: str, redis_prefix: str
) -> None:
    """The same Codex windows, once as response headers through a release, once as a usage
    answer through the prober's write: the same fields, the same values, and both stamped
    with the wall clock at the moment the answer was handled."""
    repo = AccountRepository(db, CIPHER)
    passive, probed = await create(
        repo, [oauth("p", "openai", "http://unused", "t1"), oauth("q", "openai", "http://x", "t2")]
    )
    await publish(redis, [passive])
    async with open_instance(redis_url, redis_prefix, settings(), repo, prober=False) as inst:
        t0 = time.time()
        now = int(t0)
        headers = {
            "x-codex-primary-used-percent": "42",
            "x-codex-primary-window-minutes": "300",
            "x-codex-primary-reset-at": str(now + RESET_5H),
            "x-codex-secondary-used-percent": "7",
            "x-codex-secondary-window-minutes": "10080",
            "x-codex-secondary-reset-at": str(now + RESET_7D),
        }
        got = await inst.selector.select(OPENAI)
        await inst.reporter.release(got.lease_id, ReleaseOutcome(status=200, headers=headers))
        answer = {
            "plan_type": "plus",
            "rate_limit": {
                "primary_window": {
                    "used_percent": 42,
                    "limit_window_seconds": 18000,
                    "reset_at": now + RESET_5H,
                },
                "secondary_window": {
                    "used_percent": 7,
                    "limit_window_seconds": 604800,
                    "reset_at": now + RESET_7D,
                },
            },
        }
        report = ADAPTERS["openai"].parse(answer, time.time())
        await inst.selector.runtime.write_readings("openai", probed.id, report.windows)
        t1 = time.time()
        keys = inst.selector.runtime.keys
        a = _decoded(await inst.redis.client.hgetall(keys.state("openai", passive.id)))
        b = _decoded(await inst.redis.client.hgetall(keys.state("openai", probed.id)))
    assert set(a) == set(b) == {"q:5h", "q:7d"}
    for field in a:
        stamp_a, stamp_b = a[field].pop("observed_at"), b[field].pop("observed_at")
        assert t0 <= stamp_a <= t1 and t0 <= stamp_b <= t1
        # Each write puts the reading's times on Redis TIME (issue 10: one clock): the
        # same absolute reset agrees between the two writes up to a reply's latency.
        reset_a, reset_b = a[field].pop("reset_at"), b[field].pop("reset_at")
        assert abs(reset_a - reset_b) < 0.5, (reset_a, reset_b)
        assert a[field] == b[field]
        msgspec.convert({**a[field], "observed_at": 0.0}, QuotaWindow)  # the reading's own shape


async def test_other_instances_see_probe_readings_at_once(
    db: Any, redis: Any, redis_url: str, redis_prefix: str
) -> None:
    """Instance B runs no view refresher: only the readings message can bring it the new
    reading. B's view has it (and its waiters are woken) right after A's write."""
    repo = AccountRepository(db, CIPHER)
    [acct] = await create(repo, [oauth("w", "anthropic", "http://x", "tok-w")])
    await publish(redis, [acct])
    async with (
        open_redis(RedisConfig(url=redis_url, key_prefix=redis_prefix)) as b_redis,
        open_instance(redis_url, redis_prefix, settings(), repo, prober=False) as a,
    ):
        b = Selector(b_redis, ScheduleView(b_redis, None), settings())  # type: ignore[arg-type]
        watcher = ReleaseWatcher(b)
        async with trio.open_nursery() as nursery:
            await nursery.start(watcher.run)
            reading = ADAPTERS["anthropic"].parse(
                {"five_hour": {"utilization": 12.0, "resets_at": None}}, time.time()
            )
            await a.selector.runtime.write_readings("anthropic", acct.id, reading.windows)
            with trio.fail_after(10):
                while watcher.readings < 1:
                    await trio.sleep(0.01)
            seen = b.view.get(acct.id).windows
            nursery.cancel_scope.cancel()
    # Times travel on Redis TIME and come back on B's clock (issue 10: one clock): the
    # reading is the same, its stamp the same up to a reply's latency.
    assert len(seen) == len(reading.windows) == 1
    assert abs(seen[0].observed_at - reading.windows[0].observed_at) < 0.5
    assert msgspec.structs.replace(seen[0], observed_at=0.0) == msgspec.structs.replace(
        reading.windows[0], observed_at=0.0
    )
    # The writer's own message is skipped by its own watcher (the writer puts the state
    # it wrote into its view itself, see UsageProbe.on_state).
    assert a.watcher.readings == 0
