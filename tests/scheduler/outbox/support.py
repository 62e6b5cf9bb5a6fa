"""Helpers for the outbox tests: a real webhook receiver (the customer's side) and row makers."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import trio
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from accounts.db import Database
from scheduler.core.config import OutboxConfig
from scheduler.outbox import DeliveryOutcome, Dispatcher, OutboxStore, Status

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

# What a script answers for the n-th arrival (1-based) of one webhook-id on a path:
# an HTTP status, (status, headers), or HANG (no answer until the receiver closes).
HANG = -1
Script = Callable[[int], int | tuple[int, dict[str, str]]]


@dataclass(frozen=True)
class Delivery:
    path: str
    webhook_id: str
    headers: dict[str, str]
    body: bytes
    verified: bool


class Receiver:
    """A customer's webhook endpoint on 127.0.0.1 (threaded ``http.server``, HTTP/1.1).

    Every request is checked with ``standardwebhooks``' own verifier and recorded
    at arrival, before the answer: "delivered" means the receiver got it. Paths
    are scripted with :meth:`script`; unscripted paths answer 200.
    """

    def __init__(self, secret: str = SECRET) -> None:
        self.verifier = Webhook(secret)
        self.deliveries: list[Delivery] = []
        self.counts: Counter[str] = Counter()
        self._scripts: dict[str, Script] = {}
        self._cond = threading.Condition()
        self._closing = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str = "/hook") -> str:
        return self.base_url + path

    def script(self, path: str, fn: Script) -> None:
        self._scripts[path] = fn

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        body = handler.rfile.read(length)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        try:
            self.verifier.verify(body, headers)
            verified = True
        except WebhookVerificationError:
            verified = False
        wid = headers.get("webhook-id", "")
        with self._cond:
            self.counts[wid] += 1
            n = self.counts[wid]
            self.deliveries.append(Delivery(handler.path, wid, headers, body, verified))
            self._cond.notify_all()
        path = urlsplit(handler.path).path
        answer = self._scripts.get(path, lambda _n: 200)(n)
        status, extra = answer if isinstance(answer, tuple) else (answer, {})
        if status == HANG:
            self._closing.wait(60)
            return
        payload = b"ok" if status < 300 else b"nope"
        handler.send_response(status)
        for k, v in extra.items():
            handler.send_header(k, v)
        handler.send_header("content-length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    async def wait_for(self, predicate: Callable[[Receiver], bool], timeout: float = 20) -> None:
        """Until ``predicate(self)`` holds (checked at each arrival); TooSlowError after timeout."""

        def wait() -> bool:
            with self._cond:
                return self._cond.wait_for(lambda: predicate(self), timeout)

        if not await trio.to_thread.run_sync(wait, abandon_on_cancel=True):
            raise trio.TooSlowError(f"receiver: condition not met in {timeout}s")


def outbox_config(**overrides: Any) -> OutboxConfig:
    """A fast test config: short backoff, polls and leases."""
    values: dict[str, Any] = {
        "webhook_secret": SECRET,
        "poll_interval_s": 0.2,
        "backoff_s": [0.05],
        "jitter": 0.0,
        "timeout_s": 2.0,
        "lease_s": 5.0,
        "concurrency": 16,
        "per_destination": 8,
    }
    values.update(overrides)
    return OutboxConfig(**values)


async def insert_events(
    db: Database, n: int, destination: str | None, *, prefix: str = "e"
) -> None:
    """``n`` events in one statement (keys ``<prefix><i>``), waking dispatchers."""
    await db.execute(
        """INSERT INTO outbox (event_key, type, payload, destination)
           SELECT $1 || g, 'test.event', jsonb_build_object('n', g), $2
             FROM generate_series(1, $3) AS g""",
        prefix,
        destination,
        n,
    )
    await db.execute("SELECT pg_notify('stationmaster_outbox', '')")


async def force_status(db: Database, prefix: str, status: str, *, age_s: float = 0) -> None:
    """Put rows straight into ``status`` (test set-up: the guard trigger is bypassed).

    Timestamps of that status (and created_at) are set ``age_s`` in the past.
    """
    async with db.transaction() as conn:
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(
            """UPDATE outbox SET status = $1,
                   created_at = now() - make_interval(secs => $3),
                   consumed_at = CASE WHEN $1 = 'consumed'
                                      THEN now() - make_interval(secs => $3) END,
                   dead_at = CASE WHEN $1 = 'dead' THEN now() - make_interval(secs => $3) END,
                   lease_owner = CASE WHEN $1 = 'published' THEN 'someone' END,
                   lease_expires_at = CASE WHEN $1 = 'published' THEN now() + interval '1 hour' END
             WHERE event_key LIKE $2 || '%'""",
            status,
            prefix,
            age_s,
        )


async def statuses(db: Database) -> dict[str, str]:
    rows = await db.fetch("SELECT event_key, status FROM outbox")
    return {r["event_key"]: r["status"] for r in rows}


class Journal:
    """The dispatcher's observer: every outcome written, and a way to wait on them."""

    def __init__(self) -> None:
        self.outcomes: list[tuple[DeliveryOutcome, bool]] = []
        self._changed = trio.Event()

    def __call__(self, batch: Sequence[DeliveryOutcome], recorded: set[int]) -> None:
        self.outcomes.extend((o, o.claim.id in recorded) for o in batch)
        self._changed.set()
        self._changed = trio.Event()

    def of(self, event_key: str) -> list[DeliveryOutcome]:
        return [o for o, ok in self.outcomes if ok and o.claim.event_key == event_key]

    def final(self, event_key: str) -> DeliveryOutcome | None:
        done = [o for o in self.of(event_key) if o.status in (Status.CONSUMED, Status.DEAD)]
        return done[-1] if done else None

    async def wait_for(self, predicate: Callable[[Journal], bool], timeout: float = 20) -> None:
        with trio.fail_after(timeout):
            while not predicate(self):
                await self._changed.wait()


@contextlib.asynccontextmanager
async def dispatching(
    db: Database, config: OutboxConfig, journal: Journal | None = None, **kwargs: Any
) -> AsyncIterator[Dispatcher]:
    """A Dispatcher running in this test (LISTEN on its own connection); stopped on exit."""
    kwargs.setdefault("listen", db.listen)
    dispatcher = Dispatcher(
        OutboxStore(db), config, owner=kwargs.pop("owner", "test"), observer=journal, **kwargs
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(dispatcher.run)
        try:
            yield dispatcher
        finally:
            nursery.cancel_scope.cancel()
