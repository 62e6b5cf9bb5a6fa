"""The dispatcher against real PostgreSQL and a real local receiver (the customer's side).

Guards checked (broken once, seen red): classify() answering retry for 410
(the 410 test), the per-origin exclusion and overflow hand-back (the
per-destination test), the NOTIFY listener (the notify test timed out with a
60 s poll), settle() (the max-attempts test kept retrying). Not broken on
purpose: the hang's bound, which is held twice (deliver()'s trio deadline and
the client's own timeout).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
import trio
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from scheduler.outbox import Status, enqueue

from .support import HANG, SECRET, Journal, Receiver, dispatching, insert_events, outbox_config

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


async def add(db, key: str, url: str, **kw) -> None:
    async with db.transaction() as conn:
        assert await enqueue(
            conn,
            event_key=key,
            type="task.succeeded",
            payload={"k": key},
            destination=url,
            **kw,
        )


async def row(db, key: str):
    return await db.fetchrow("SELECT * FROM outbox WHERE event_key = $1", key)


def consumed(*keys: str) -> Callable[[Journal], bool]:
    return lambda j: all(
        (o := j.final(k)) is not None and o.status is Status.CONSUMED for k in keys
    )


async def test_fails_twice_then_succeeds_three_deliveries_and_never_again(db):
    journal = Journal()
    with Receiver() as rx:
        rx.script("/flaky", lambda n: 500 if n <= 2 else 200)
        async with dispatching(db, outbox_config(), journal):
            await add(db, "task:1:succeeded", rx.url("/flaky"))
            await journal.wait_for(consumed("task:1:succeeded"))
            # More rounds after success is recorded: another event goes through.
            await add(db, "task:2:succeeded", rx.url("/other"))
            await journal.wait_for(consumed("task:2:succeeded"))
        assert rx.counts["task:1:succeeded"] == 3
        assert [o.status for o in journal.of("task:1:succeeded")] == [
            Status.PENDING,
            Status.PENDING,
            Status.CONSUMED,
        ]
        assert all(d.verified for d in rx.deliveries)
    r = await row(db, "task:1:succeeded")
    assert (r["status"], r["attempts"], r["last_status_code"]) == ("consumed", 3, 200)


@pytest.mark.parametrize("code", [410, 400, 404, 422])
async def test_gone_or_refused_is_dead_after_one_try(db, code):
    journal = Journal()
    with Receiver() as rx:
        rx.script("/gone", lambda n: code)
        async with dispatching(db, outbox_config(), journal):
            await add(db, "e", rx.url("/gone"))
            await journal.wait_for(lambda j: j.final("e") is not None)
        assert rx.counts["e"] == 1
    r = await row(db, "e")
    assert (r["status"], r["attempts"], r["last_status_code"]) == ("dead", 1, code)
    assert r["last_error"].startswith(f"HTTP {code}")


async def test_max_attempts_then_dead(db):
    journal = Journal()
    with Receiver() as rx:
        rx.script("/down", lambda n: 503)
        async with dispatching(db, outbox_config(), journal):
            await add(db, "e", rx.url("/down"), max_attempts=3)
            await journal.wait_for(lambda j: j.final("e") is not None)
        assert rx.counts["e"] == 3
    r = await row(db, "e")
    assert (r["status"], r["attempts"]) == ("dead", 3)
    assert r["last_error"].startswith("gave up after 3 attempts; last: HTTP 503")


async def test_retry_after_is_honoured(db):
    journal = Journal()
    with Receiver() as rx:
        rx.script("/busy", lambda n: (429, {"retry-after": "1"}) if n == 1 else 200)
        # Retry-After is a floor, capped at the schedule's longest step (5 s here).
        async with dispatching(db, outbox_config(backoff_s=[0.01, 5.0]), journal):
            await add(db, "e", rx.url("/busy"))
            await journal.wait_for(consumed("e"))
    first = journal.of("e")[0]
    assert first.status is Status.PENDING and first.status_code == 429 and first.delay_s >= 1.0


async def test_a_hanging_receiver_times_out_and_others_keep_flowing(db):
    journal = Journal()
    with Receiver() as stuck, Receiver() as fine:
        stuck.script("/hang", lambda n: HANG if n == 1 else 200)
        cfg = outbox_config(timeout_s=3.0, lease_s=10.0)
        async with dispatching(db, cfg, journal):
            await add(db, "hang", stuck.url("/hang"))
            await stuck.wait_for(lambda r: r.counts["hang"] == 1)
            await insert_events(db, 30, fine.url(), prefix="ok")
            await journal.wait_for(consumed(*(f"ok{i}" for i in range(1, 31))))
            # Everything else went through while that one attempt was still hanging.
            assert journal.of("hang") == []
            await journal.wait_for(consumed("hang"))
        first = journal.of("hang")[0]
        assert first.status is Status.PENDING and first.error == "no answer within 3s"
        assert stuck.counts["hang"] == 2


async def test_a_slow_destination_holds_only_its_own_slots(db):
    journal = Journal()
    with Receiver() as slow, Receiver() as fast:
        slow.script("/slow", lambda n: HANG)
        cfg = outbox_config(
            concurrency=6, per_destination=2, batch_size=20, timeout_s=30, lease_s=60
        )
        async with dispatching(db, cfg, journal):
            await insert_events(db, 10, slow.url("/slow"), prefix="slow")
            await slow.wait_for(lambda r: len(r.deliveries) == 2)
            await insert_events(db, 40, fast.url(), prefix="fast")
            await journal.wait_for(consumed(*(f"fast{i}" for i in range(1, 41))))
            # The per-destination limit held while forty others went through.
            assert len(slow.deliveries) == 2
        r = await db.fetch("SELECT attempts FROM outbox WHERE event_key LIKE 'slow%'")
        # Rows handed back over the limit had their attempt refunded.
        assert sorted(x["attempts"] for x in r) == [0] * 8 + [1, 1]


async def test_signatures_verify_and_a_tampered_body_does_not(db):
    journal = Journal()
    with Receiver() as rx:
        async with dispatching(db, outbox_config(), journal):
            await add(db, "task:9:failed", rx.url())
            await journal.wait_for(consumed("task:9:failed"))
        (d,) = rx.deliveries
    assert d.verified and d.webhook_id == "task:9:failed"
    assert d.headers["webhook-signature"].startswith("v1,")
    verifier = Webhook(SECRET)
    assert verifier.verify(d.body, d.headers) == {
        "type": "task.succeeded",
        "timestamp": verifier.verify(d.body, d.headers)["timestamp"],
        "data": {"k": "task:9:failed"},
    }
    for body in (d.body.replace(b"task:9", b"task:8"), d.body + b" "):
        with pytest.raises(WebhookVerificationError):
            verifier.verify(body, d.headers)
    with pytest.raises(WebhookVerificationError):
        verifier.verify(d.body, {**d.headers, "webhook-id": "task:9:succeeded"})
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "QUJD" * 8).verify(d.body, d.headers)


async def test_notify_wakes_the_dispatcher_and_the_poll_covers_a_lost_notify(db):
    journal = Journal()
    with Receiver() as rx:
        # A 60 s poll: only the NOTIFY can make this quick.
        async with dispatching(db, outbox_config(poll_interval_s=60), journal):
            await trio.sleep(0)
            await add(db, "woken", rx.url())
            await journal.wait_for(consumed("woken"), timeout=20)

        @contextlib.asynccontextmanager
        async def deaf(_channel, _callback):
            yield trio.Event()  # listening, but no notification ever arrives

        async with dispatching(db, outbox_config(poll_interval_s=0.2), journal, listen=deaf):
            await add(db, "polled", rx.url())
            await journal.wait_for(consumed("polled"))


async def test_a_lapsed_lease_is_claimed_again(db):
    journal = Journal()
    with Receiver() as rx:
        await add(db, "orphan", rx.url())
        # An instance claimed it and died: published, attempt 1, its lease over.
        await db.execute(
            "UPDATE outbox SET status = 'published', attempts = 1, lease_owner = 'gone',"
            " lease_expires_at = now() - interval '1 s'"
        )
        async with dispatching(db, outbox_config(), journal):
            await journal.wait_for(consumed("orphan"))
    r = await row(db, "orphan")
    assert (r["status"], r["attempts"]) == ("consumed", 2)


async def test_stopping_hands_unfinished_claims_back(db):
    with Receiver() as rx:
        rx.script("/hang", lambda n: HANG)
        async with dispatching(db, outbox_config(timeout_s=30, lease_s=60)):
            await insert_events(db, 3, rx.url("/hang"))
            await rx.wait_for(lambda r: len(r.deliveries) == 3)
    rows = await db.fetch("SELECT status, attempts, lease_owner FROM outbox")
    # Sent (maybe received): the attempt stays counted; due again now, no lease.
    assert [tuple(r.values()) for r in rows] == [("pending", 1, None)] * 3
