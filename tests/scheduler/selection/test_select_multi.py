"""Two daemon processes, one bucket, many trio tasks: never more leases than concurrency.

Two ``stationmaster run`` subprocesses share this test's database and Redis
prefix. Six accounts of one group (concurrency 1, 2, 3, 1, 2, 3) are hammered by
24 trio tasks split across both daemons' URLs, each looping select (short wait)
→ hold a random short time → release; a few leases are abandoned on purpose
(never released) and must expire by themselves (``leases.ttl_s`` set small
through the settings API). Two independent checks of the invariant:

* a sampler reads every account's lease set straight from Redis, many times per
  second, in one Lua call (one instant, Redis server time), counting only the
  unexpired leases exactly as ``acquire.lua`` does (score > now; it prunes
  score <= now), and asserts the count never exceeds concurrency;
* the test tracks, from the HTTP answers, which leases each account holds: a
  lease counts from its select answer until just before its release is sent
  (or until its expiry, for abandoned ones). That interval lies inside the real
  one, so the tracked count never overstates the truth: it exceeding
  concurrency would be a real double grant.

At the end every lease is released or expires: right after the workers stop,
the only live leases are abandoned ones; after their TTL, none; and the full
capacity (12 slots) can be taken again, the 13th select answering 503.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from datetime import datetime
from typing import Any

import httpx
import trio

from scheduler.selection.store import Keys
from snapshot.redis import RedisStore
from tests.support import GATEWAY_TOKEN, DaemonProcess, admin_client, config_dict

GROUP = "race"
SELECT = {"group": GROUP, "platform": "openai", "model": "gpt-4o"}
CONCURRENCY = (1, 2, 3, 1, 2, 3)
WORKERS = 24
# Long enough for thousands of select/release cycles, short enough for the 25 s budget.
HAMMER_S = 6.0
# The smallest TTL the settings allow plus slack: abandoned leases expire within the test.
LEASE_TTL_S = 2
# Abandoned leases in total: enough to exercise expiry, few enough not to starve the pool.
ABANDON_BUDGET = 10
ABANDON_P = 0.03
# An abandoned lease stops counting this long before its expiry: the tracked interval
# must stay inside the real one (expiry is in Redis server time, ms resolution).
EXPIRY_MARGIN_S = 0.1

# One instant for every account: Redis server TIME, then the live members of each lease
# set, "live" meaning score > now, because acquire.lua prunes score <= now before counting.
SAMPLE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('ZRANGEBYSCORE', key, '(' .. now, '+inf')
end
return out
"""


class Tracker:
    """Leases held per account as the HTTP answers show them; asserts the limit on each grant."""

    def __init__(self, limits: dict[str, int]) -> None:
        self.limits = limits
        # account id -> {lease id: end of the tracked hold (None: still held by a worker)}
        self.held: dict[str, dict[str, float | None]] = {a: {} for a in limits}
        self.max_held = dict.fromkeys(limits, 0)

    def granted(self, account_id: str, lease_id: str) -> None:
        now = time.time()
        holds = self.held[account_id]
        for lid, end in list(holds.items()):
            if end is not None and end <= now:
                del holds[lid]
        holds[lease_id] = None
        assert len(holds) <= self.limits[account_id], (account_id, sorted(holds))
        self.max_held[account_id] = max(self.max_held[account_id], len(holds))

    def released(self, account_id: str, lease_id: str) -> None:
        del self.held[account_id][lease_id]

    def abandoned(self, account_id: str, lease_id: str, expires_at: float) -> None:
        self.held[account_id][lease_id] = expires_at - EXPIRY_MARGIN_S


class Sampler:
    """Reads every lease set from Redis in one script call; asserts ≤ concurrency each time."""

    def __init__(self, redis: RedisStore, limits: dict[str, int]) -> None:
        keys = Keys(redis)
        self.client = redis.client
        self.ids = list(limits)
        self.keys = [keys.leases("openai", a) for a in self.ids]
        self.limits = limits
        self.max_seen = dict.fromkeys(limits, 0)
        self.samples = 0

    async def sample(self) -> dict[str, set[str]]:
        reply: Any = await self.client.eval(SAMPLE_LUA, keys=self.keys, args=[])
        live = {a: set(members) for a, members in zip(self.ids, reply, strict=True)}
        for account_id, members in live.items():
            assert len(members) <= self.limits[account_id], (account_id, sorted(members))
            self.max_seen[account_id] = max(self.max_seen[account_id], len(members))
        self.samples += 1
        return live

    async def run(self, stop: trio.Event) -> None:
        while not stop.is_set():
            await self.sample()
            await trio.sleep(0.002)


async def _start_daemons(cfg: dict[str, Any], n: int) -> tuple[list[DaemonProcess], list[str]]:
    procs = [DaemonProcess(cfg) for _ in range(n)]
    urls = [await p.wait_ready(timeout=30) for p in procs]
    return procs, urls


async def _stop_daemons(procs: list[DaemonProcess]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            await p.wait(timeout=15)
        except trio.TooSlowError:
            p.kill()


async def _setup(urls: list[str]) -> dict[str, int]:
    """Accounts via the admin API, a short lease TTL via settings; wait until both serve them."""
    limits: dict[str, int] = {}
    async with admin_client(urls[0]) as admin:
        for i, concurrency in enumerate(CONCURRENCY):
            r = await admin.post(
                "/v1/admin/accounts",
                json={
                    "name": f"race{i}",
                    "platform": "openai",
                    "groups": [GROUP],
                    "concurrency": concurrency,
                    "base_url": "https://api.example.com",
                    "credentials": {"api_key": f"sk-race-{i}-" + "x" * 20},
                },
            )
            assert r.status_code in (200, 201), r.text
            limits[r.json()["id"]] = concurrency
        r = await admin.get("/v1/admin/settings")
        version = r.json()["version"]
        patch = {"leases": {"ttl_s": LEASE_TTL_S}, "wait": {"retry_interval_ms": 20}}
        r = await admin.put("/v1/admin/settings", json=patch, headers={"if-match": f'"{version}"'})
        assert r.status_code == 200, r.text
        version = r.json()["version"]
    for url in urls:
        async with admin_client(url) as admin:
            while True:
                r = await admin.get("/v1/admin/settings")
                if r.json()["instance_version"] == version:
                    break
                await trio.sleep(0.05)
            while True:
                r = await admin.get("/v1/admin/explain", params=SELECT)
                if r.status_code == 200 and len(r.json()["candidates"]) == len(limits):
                    break
                await trio.sleep(0.05)
    return limits


class Hammer:
    """The workers: select → hold → release, a few abandoning their lease."""

    def __init__(self, tracker: Tracker, stop_at: float) -> None:
        self.tracker = tracker
        self.stop_at = stop_at
        self.counts: Counter[str] = Counter()
        self.abandoned: dict[str, float] = {}  # lease id -> expiry (epoch s)
        self.per_url: Counter[str] = Counter()

    async def worker(self, gw: httpx.AsyncClient) -> None:
        rng = random.Random()
        while trio.current_time() < self.stop_at:
            r = await gw.post("/v1/select", json={**SELECT, "wait_ms": 200})
            if r.status_code == 503:
                assert r.json()["error"]["code"] == "no_available_accounts"
                self.counts["503"] += 1
                continue
            assert r.status_code == 200, r.text
            got = r.json()
            expires = datetime.fromisoformat(got["lease_expires_at"]).timestamp()
            account_id, lease_id = got["account"]["id"], got["lease_id"]
            self.tracker.granted(account_id, lease_id)
            self.counts["selects"] += 1
            self.per_url[str(gw.base_url)] += 1
            if len(self.abandoned) < ABANDON_BUDGET and rng.random() < ABANDON_P:
                self.tracker.abandoned(account_id, lease_id, expires)
                self.abandoned[lease_id] = expires
                continue
            await trio.sleep(rng.random() * 0.02)
            self.tracker.released(account_id, lease_id)
            r = await gw.post(f"/v1/leases/{lease_id}/release", json={"status": 200})
            if r.status_code == 404:
                # Only a lease older than its TTL may be gone (it expired first).
                assert time.time() >= expires, r.text
                self.counts["expired_before_release"] += 1
            else:
                assert r.status_code == 200, r.text
                self.counts["released"] += 1


async def _take_all(data_urls: list[str], capacity: int) -> list[tuple[httpx.AsyncClient, str]]:
    """After expiry every slot is free again: ``capacity`` grants, then a 503 (all full)."""
    clients = [admin_client(u, token=GATEWAY_TOKEN) for u in data_urls]
    taken = []
    for i in range(capacity):
        gw = clients[i % len(clients)]
        r = await gw.post("/v1/select", json={**SELECT, "wait_ms": 1000})
        assert r.status_code == 200, (i, r.text)
        taken.append((gw, r.json()["lease_id"]))
    r = await clients[0].post("/v1/select", json={**SELECT, "wait_ms": 0})
    assert r.status_code == 503, r.text
    assert r.json()["error"]["details"]["exclusions"] == {"full": len(CONCURRENCY)}
    for gw, lease_id in taken:
        r = await gw.post(f"/v1/leases/{lease_id}/release", json={"status": 200})
        assert r.status_code == 200, r.text
    for c in clients:
        await c.aclose()
    return taken


async def test_two_daemons_never_exceed_concurrency(pg_dsn, redis_url, redis_prefix, db, redis):
    """24 tasks over 2 daemon processes on one bucket (concurrency 1-3): the limit always holds."""
    with trio.fail_after(45):
        procs, urls = await _start_daemons(config_dict(pg_dsn, redis_url, redis_prefix), 2)
        try:
            limits = await _setup(urls)
            tracker, sampler = Tracker(limits), Sampler(redis, limits)
            hammer = Hammer(tracker, trio.current_time() + HAMMER_S)
            stop = trio.Event()
            gateways = [admin_client(p.data(), token=GATEWAY_TOKEN) for p in procs]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sampler.run, stop)
                async with trio.open_nursery() as workers:
                    for i in range(WORKERS):
                        workers.start_soon(hammer.worker, gateways[i % len(gateways)])
                stop.set()
            for gw in gateways:
                await gw.aclose()

            # Right after the workers stop, only abandoned leases may still be live.
            live = await sampler.sample()
            assert set().union(*live.values()) <= set(hammer.abandoned)
            # After their TTL nothing is held at all, and the whole capacity is back.
            latest = max(hammer.abandoned.values(), default=time.time())
            await trio.sleep(max(0.0, latest - time.time()) + 0.05)
            assert not any((await sampler.sample()).values())
            await _take_all([p.data() for p in procs], sum(limits.values()))
            assert not any((await sampler.sample()).values())
        finally:
            with trio.move_on_after(20, shield=True):
                await _stop_daemons(procs)

    by_conc = {c: max(sampler.max_seen[a] for a in limits if limits[a] == c) for c in CONCURRENCY}
    print(
        f"\nselects={hammer.counts['selects']} released={hammer.counts['released']}"
        f" abandoned={len(hammer.abandoned)} 503s={hammer.counts['503']}"
        f" expired_before_release={hammer.counts['expired_before_release']}"
        f" per_daemon={sorted(hammer.per_url.values())} samples={sampler.samples}"
        f" max_live_by_concurrency={by_conc} max_tracked={sorted(tracker.max_held.values())}"
    )
    assert len(hammer.per_url) == 2 and min(hammer.per_url.values()) > 0  # both daemons served
    assert sampler.samples > HAMMER_S * 5  # many per second even on a loaded machine
    assert hammer.abandoned  # expiry was exercised
    # Every slot was in use at some point (seen by either check), so the limit was pressed.
    assert {a: max(sampler.max_seen[a], tracker.max_held[a]) for a in limits} == limits
