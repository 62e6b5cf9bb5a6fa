"""Several daemon processes dispatching one backlog; a dispatcher killed mid-delivery.

The receiver counts deliveries per ``webhook-id`` at arrival (before it answers),
so "delivered" means the customer got it. Guards checked (broken once, seen red):
``FOR UPDATE SKIP LOCKED`` removed from CLAIM's due arm (216 of 2,000 events
delivered twice), the lapsed-lease arm of CLAIM disabled (the killed instance's
events never arrived again; the test timed out).
"""

from __future__ import annotations

import threading
from collections import Counter

import httpx
import pytest
import trio

from ...support import DaemonProcess, config_dict
from .support import HANG, Receiver, insert_events

pytestmark = pytest.mark.slow

OUTBOX = {
    "webhook_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "poll_interval_s": 0.2,
    "backoff_s": [0.1],
    "concurrency": 16,
    "per_destination": 16,
    "batch_size": 50,
}


async def wait_all_consumed(db, n: int) -> None:
    # The daemons' own actors record; nothing to hook into but the table.
    with trio.fail_after(60):
        while await db.fetchval("SELECT count(*) FROM outbox WHERE status = 'consumed'") < n:
            await trio.sleep(0.05)


async def consumed_by(url: str) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        text = (await client.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith('stationmaster_outbox_deliveries_total{result="consumed"}'):
            return float(line.split()[-1])
    return 0.0


def stop(*procs: DaemonProcess) -> None:
    for p in procs:
        p.kill()


async def test_two_daemons_deliver_a_backlog_of_2000_once_each(db, pg_dsn, redis_url, redis_prefix):
    data = config_dict(pg_dsn, redis_url, redis_prefix, outbox=OUTBOX)
    with Receiver() as rx:
        a, b = DaemonProcess(data), DaemonProcess(data)
        try:
            with trio.fail_after(60):
                url_a, url_b = await a.wait_ready(), await b.wait_ready()
            await insert_events(db, 2000, rx.url(), prefix="evt")
            await rx.wait_for(lambda r: len(r.counts) >= 2000, timeout=90)
            await wait_all_consumed(db, 2000)
            share = (await consumed_by(url_a), await consumed_by(url_b))
        finally:
            stop(a, b)
        assert len(rx.counts) == 2000
        assert set(rx.counts.values()) == {1}, Counter(rx.counts.values())
        assert all(d.verified for d in rx.deliveries)
    assert sum(share) == 2000 and min(share) > 0, share  # both really dispatched


async def test_a_dispatcher_killed_between_delivery_and_commit(db, pg_dsn, redis_url, redis_prefix):
    # Short leases so the survivor takes the dead one's claims over quickly; the
    # attempt timeout still dwarfs the time from arrival to kill.
    data = config_dict(
        pg_dsn, redis_url, redis_prefix, outbox={**OUTBOX, "timeout_s": 4.0, "lease_s": 5.0}
    )
    hung = 5
    lock = threading.Lock()
    arrivals = Counter[str]()

    def first_arrivals_hang(n: int) -> int:
        # The first `hung` arrivals get no answer: received, never acknowledged.
        with lock:
            arrivals["all"] += 1
            return HANG if arrivals["all"] <= hung else 200

    with Receiver() as rx:
        rx.script("/hook", first_arrivals_hang)
        a = DaemonProcess(data)
        b: DaemonProcess | None = None
        try:
            with trio.fail_after(60):
                await a.wait_ready()
                await insert_events(db, 300, rx.url("/hook"), prefix="evt")
                await rx.wait_for(lambda r: len(r.deliveries) >= hung)
            a.proc.kill()  # SIGKILL: no clean-up, claims left to their leases
            a.proc.wait()
            b = DaemonProcess(data)
            with trio.fail_after(60):
                await b.wait_ready()
            await rx.wait_for(lambda r: len(r.counts) >= 300, timeout=60)
            await wait_all_consumed(db, 300)
        finally:
            stop(a, *([b] if b else []))
        counts = rx.counts
        assert len(counts) == 300 and set(counts.values()) <= {1, 2}, Counter(counts.values())
        held = {d.webhook_id for d in rx.deliveries[:hung]}
        assert all(counts[k] == 2 for k in held)  # delivered, killed before commit, again
        for key in (k for k, n in counts.items() if n == 2):
            first, second = (d for d in rx.deliveries if d.webhook_id == key)
            assert first.body == second.body and first.verified and second.verified
            assert first.headers["webhook-id"] == second.headers["webhook-id"] == key
    rows = await db.fetch(
        "SELECT event_key, attempts FROM outbox WHERE event_key = ANY($1)", list(held)
    )
    assert {r["attempts"] for r in rows} == {2}
