"""The dispatcher actor: claim due events, deliver them outside any transaction, record.

Three tasks share one nursery:

- the *claim loop* claims up to the free capacity in one round trip (due rows
  and rows whose lease lapsed), starts one delivery task per claim, and sleeps
  until woken: by a NOTIFY, by a slot freeing up after a full batch, by the
  earliest retry it knows is due, or by the poll interval (the safety net: a
  NOTIFY can be lost while the listener reconnects, and one sent by an instance
  before we started is never seen);
- *delivery tasks*, at most ``concurrency`` at once and ``per_destination`` per
  origin, each one POST bounded by ``timeout_s``: a receiver that hangs holds
  its own slots and nothing else;
- the *recorder* writes outcomes in batches (one statement for everything
  finished since its last write), so throughput is not one commit per event.

Claims are held (counted against both limits) until their outcome is recorded;
the claim query skips origins at their limit, and rows over it that one batch
brought are handed straight back, attempt refunded.

Crash safety: a claim is a lease. If this process dies between a delivery and
its record, the row stays ``published`` until the lease lapses, then any
instance claims it again and delivers it again, with the same ``webhook-id``
and body: at least once, never lost. On a graceful stop, finished outcomes are
recorded and unfinished claims handed back (shielded, bounded).

``started()`` is called once listening and recording run; it passes nothing.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager

import httpx
import trio

from accounts.errors import StoreUnavailable

from ..core.config import OutboxConfig
from ..core.logs import get_logger
from ..core.transport import CookielessClient, TrioTransport
from . import _queries as q
from ._delivery import Answer, Signer, deliver
from ._metrics import OutboxMetrics
from ._rules import Status, Verdict, classify, display_url, origin, retry_delay_s, settle
from ._store import Claim, DeliveryOutcome, OutboxStore

log = get_logger("outbox")

Listen = Callable[[str, Callable[[str], None]], AbstractAsyncContextManager[trio.Event]]
Observer = Callable[[Sequence[DeliveryOutcome], set[int]], None]

# Outcomes written per statement at most; bounds the statement, not throughput.
_RECORD_BATCH = 500
# A failed write of outcomes is retried after this (doubling, capped): the leases
# outlive a short outage; past them other instances redeliver, which is allowed.
_RECORD_RETRY_S = (0.1, 5.0)
# Bounds the shielded clean-up on stop (record finished, hand back unfinished).
_STOP_TIMEOUT_S = 5.0

_STATUS = {
    Verdict.CONSUMED: Status.CONSUMED,
    Verdict.RETRY: Status.PENDING,
    Verdict.DEAD: Status.DEAD,
}


class Dispatcher:
    """Delivers outbox events as signed webhooks; run it on any number of instances."""

    name = "outbox-dispatcher"
    # Selection and the APIs serve without it; events wait in the table meanwhile.
    essential = False

    def __init__(
        self,
        store: OutboxStore,
        config: OutboxConfig,
        *,
        owner: str,
        listen: Listen,
        metrics: OutboxMetrics | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        observer: Observer | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        """``listen`` is ``Database.listen``; ``transport`` and ``observer`` are test seams
        (``observer(outcomes, recorded_ids)`` runs after each record write)."""
        self._store = store
        self._cfg = config
        self._owner = owner
        self._listen = listen
        self._metrics = metrics
        self._transport = transport
        self._observer = observer
        self._rand = rand
        self._signer = Signer(config.webhook_secret)
        self._held: dict[int, Claim] = {}
        self._per_origin: Counter[str] = Counter()
        self._wake = trio.Event()
        # Set with _wake when there is work now (not just an earlier retry to wait for).
        self._work = False
        # True when the last claim filled the free capacity: more may be due.
        self._starved = False
        # Origins the last claim left alone or handed back (at their limit): a slot
        # freeing up for one of them is a reason to claim again, not to wait a poll.
        self._deferred: set[str] = set()
        # Earliest retry we scheduled (trio clock), so short backoffs do not wait a poll.
        self._next_due = math.inf
        self._send, self._recv = trio.open_memory_channel[DeliveryOutcome](math.inf)
        # Outcomes taken by the recorder whose write has not returned yet.
        self._recording: list[DeliveryOutcome] = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self._cfg
        transport = self._transport or TrioTransport()
        try:
            # trust_env=False: deliveries go where the row says, not via a proxy
            # some environment variable happens to name. deliver() bounds each
            # attempt as a whole with a trio deadline.
            async with (
                CookielessClient(
                    transport=transport, trust_env=False, timeout=cfg.timeout_s
                ) as client,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(self._listen_loop)
                nursery.start_soon(self._record_loop)
                task_status.started()
                await self._claim_loop(nursery, client)
        finally:
            with trio.move_on_after(_STOP_TIMEOUT_S, shield=True):
                await self._stop_cleanly()

    # --- claiming -----------------------------------------------------------------

    async def _claim_loop(self, nursery: trio.Nursery, client: httpx.AsyncClient) -> None:
        cfg = self._cfg
        while True:
            free = cfg.concurrency - len(self._held)
            if free <= 0:
                self._starved = True
                await self._sleep()
                continue
            limit = min(cfg.batch_size, free)
            saturated = [o for o, n in self._per_origin.items() if n >= cfg.per_destination]
            try:
                with trio.fail_after(cfg.timeout_s):
                    claims = await self._store.claim(
                        self._owner, limit=limit, lease_s=cfg.lease_s, exclude=saturated
                    )
                    overflow = self._start(nursery, client, claims)
                    self._deferred = set(saturated) | {origin(c.destination) for c in overflow}
                    if overflow:
                        await self._store.release(
                            self._owner, [c.id for c in overflow], refund=True
                        )
            except (StoreUnavailable, trio.TooSlowError) as exc:
                log.warning("outbox claim failed", error=type(exc).__name__)
                claims = []
            self._starved = len(claims) >= limit
            if not self._starved:
                await self._sleep()

    def _start(
        self, nursery: trio.Nursery, client: httpx.AsyncClient, claims: Sequence[Claim]
    ) -> list[Claim]:
        """Start a delivery per claim within the per-origin limit; the claims over it."""
        overflow: list[Claim] = []
        for claim in claims:
            if claim.id in self._held:
                # Our own lapsed lease, taken again: the delivery under way records it.
                self._held[claim.id] = claim
                continue
            key = origin(claim.destination)
            if self._per_origin[key] >= self._cfg.per_destination:
                overflow.append(claim)
                continue
            self._held[claim.id] = claim
            self._per_origin[key] += 1
            nursery.start_soon(self._deliver, client, claim)
        return overflow

    async def _sleep(self) -> None:
        """Until woken (NOTIFY, freed capacity), a known retry is due, or the poll interval."""
        poll_at = trio.current_time() + self._cfg.poll_interval_s
        while True:
            deadline = min(poll_at, self._next_due)
            with trio.move_on_at(deadline):
                await self._wake.wait()
            self._wake = trio.Event()
            # Woken only because an earlier retry was scheduled: sleep on to it.
            if self._work or trio.current_time() >= min(poll_at, self._next_due):
                break
        self._work = False
        if self._next_due <= trio.current_time():
            self._next_due = math.inf

    def _kick(self, *, work: bool = True) -> None:
        self._work = self._work or work
        self._wake.set()

    async def _listen_loop(self) -> None:
        while True:
            try:
                async with self._listen(q.CHANNEL, self._on_notify) as lost:
                    # Anything sent while we were not listening is covered by one claim now.
                    self._kick()
                    await lost.wait()
                log.warning("outbox listener lost its connection; listening again")
            except StoreUnavailable as exc:
                log.warning("outbox listener cannot connect", error=exc.message)
            # The poll keeps claiming meanwhile; this only paces reconnects.
            await trio.sleep(self._cfg.poll_interval_s)

    def _on_notify(self, _payload: str) -> None:
        self._kick()

    # --- delivering -----------------------------------------------------------------

    async def _deliver(self, client: httpx.AsyncClient, claim: Claim) -> None:
        started = trio.current_time()
        answer = await deliver(client, self._signer, claim, timeout_s=self._cfg.timeout_s)
        if self._metrics is not None:
            self._metrics.delivery_seconds.observe(trio.current_time() - started)
        self._send.send_nowait(self._judge(claim, answer))

    def _judge(self, claim: Claim, answer: Answer) -> DeliveryOutcome:
        verdict = Verdict.DEAD if answer.unrecoverable else classify(answer.status_code)
        settled = settle(verdict, claim.attempts, claim.max_attempts)
        error = answer.error
        if settled is not verdict:
            error = f"gave up after {claim.attempts} attempts; last: {error}"
        delay = 0.0
        if settled is Verdict.RETRY:
            delay = retry_delay_s(
                claim.attempts,
                self._cfg.backoff_s,
                jitter=self._cfg.jitter,
                rand=self._rand(),
                retry_after_s=answer.retry_after_s,
            )
        return DeliveryOutcome(claim, _STATUS[settled], answer.status_code, error, delay)

    # --- recording ------------------------------------------------------------------

    async def _record_loop(self) -> None:
        async for first in self._recv:
            batch = [first]
            while len(batch) < _RECORD_BATCH:
                try:
                    batch.append(self._recv.receive_nowait())
                except trio.WouldBlock:
                    break
            self._recording = batch
            recorded = await self._write(batch)
            self._recording = []
            self._settle(batch, recorded)

    async def _write(self, batch: Sequence[DeliveryOutcome]) -> set[int]:
        delay, cap = _RECORD_RETRY_S
        while True:
            try:
                return await self._store.record(self._owner, batch)
            except StoreUnavailable as exc:
                log.warning("outbox record failed; retrying", error=exc.message, n=len(batch))
                await trio.sleep(delay)
                delay = min(delay * 2, cap)

    def _settle(self, batch: Sequence[DeliveryOutcome], recorded: set[int]) -> None:
        """Free the slots of a written batch; count and log what it decided."""
        freed_deferred = False
        for outcome in batch:
            claim = outcome.claim
            if self._held.pop(claim.id, None) is not None:
                key = origin(claim.destination)
                freed_deferred = freed_deferred or key in self._deferred
                self._per_origin[key] -= 1
                if self._per_origin[key] <= 0:
                    del self._per_origin[key]
            self._count(outcome, claim.id in recorded)
            if outcome.status is Status.PENDING and claim.id in recorded:
                # Due at the database's commit time + delay, which is before now + delay.
                due = trio.current_time() + outcome.delay_s
                if due < self._next_due:
                    self._next_due = due
                    self._kick(work=False)
        free = self._cfg.concurrency - len(self._held)
        if (self._starved and free >= self._refill_at()) or (freed_deferred and free > 0):
            self._kick()
        if self._observer is not None:
            self._observer(batch, recorded)

    def _refill_at(self) -> int:
        # Claim again once a quarter of a batch is free, not per finished delivery.
        return max(1, min(self._cfg.batch_size, self._cfg.concurrency) // 4)

    def _count(self, outcome: DeliveryOutcome, recorded: bool) -> None:
        status = outcome.status
        if recorded and status is Status.DEAD:
            log.warning(
                "outbox event dead",
                event_key=outcome.claim.event_key,
                destination=display_url(outcome.claim.destination),
                attempts=outcome.claim.attempts,
                status_code=outcome.status_code,
                error=outcome.error,
            )
        if self._metrics is None:
            return
        result = {Status.CONSUMED: "consumed", Status.DEAD: "dead"}.get(status, "retry")
        self._metrics.deliveries.labels(result if recorded else "stale").inc()
        if recorded and status in (Status.CONSUMED, Status.DEAD):
            self._metrics.attempts.observe(outcome.claim.attempts)

    async def _stop_cleanly(self) -> None:
        """Record what finished, hand back what did not (called shielded, bounded).

        Whatever happens, this instance forgets its claims: a restarted run starts
        empty, and any claim not handed back here lapses with its lease.
        """
        finished = list(self._recording)
        while True:
            try:
                finished.append(self._recv.receive_nowait())
            except (trio.WouldBlock, trio.ClosedResourceError, trio.EndOfChannel):
                break
        try:
            recorded = await self._store.record(self._owner, finished)
            self._settle(finished, recorded)
            # Sent or not, we cannot tell: the attempt stays counted.
            released = await self._store.release(self._owner, list(self._held), refund=False)
            if released:
                log.info("outbox stop: claims handed back", n=len(released))
        except StoreUnavailable as exc:
            log.warning("outbox stop: claims left to their leases", error=exc.message)
        finally:
            self._recording = []
            self._held.clear()
            self._per_origin.clear()
            self._deferred.clear()
            self._starved = False

    # For tests and /readyz-style introspection.
    def held(self) -> int:
        return len(self._held)
