"""The outbox's Prometheus collectors, registered on the daemon's registry.

Kept in the outbox package (not scheduler/metrics.py) so the subsystem's names
live next to the code that feeds them; the daemon passes its registry in, so
``/metrics`` exports them with everything else.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ._store import Backlog

# Attempts an event took to end (consumed or dead); the default schedule allows 8.
_ATTEMPT_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 15, 20)
# Local receivers answer in milliseconds; the default timeout is 10 s.
_DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class OutboxMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.backlog = Gauge(
            "stationmaster_outbox_events",
            "Outbox events by status (pending, published, dead; consumed rows are not counted).",
            ["status"],
            registry=r,
        )
        self.oldest_pending = Gauge(
            "stationmaster_outbox_oldest_pending_seconds",
            "Age of the oldest pending outbox event (0 when none).",
            registry=r,
        )
        self.deliveries = Counter(
            "stationmaster_outbox_deliveries_total",
            "Delivery attempts recorded, by result (consumed, retry, dead, stale: the row"
            " had moved on, e.g. another instance took over its lapsed lease).",
            ["result"],
            registry=r,
        )
        self.attempts = Histogram(
            "stationmaster_outbox_attempts",
            "Attempts an event took until consumed or dead.",
            buckets=_ATTEMPT_BUCKETS,
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "stationmaster_outbox_delivery_seconds",
            "Duration of one delivery attempt.",
            buckets=_DELIVERY_BUCKETS,
            registry=r,
        )
        self.purged = Counter(
            "stationmaster_outbox_purged_total",
            "Consumed outbox events deleted past retention.",
            registry=r,
        )

    def set_backlog(self, backlog: Backlog) -> None:
        self.backlog.labels("pending").set(backlog.pending)
        self.backlog.labels("published").set(backlog.published)
        self.backlog.labels("dead").set(backlog.dead)
        self.oldest_pending.set(backlog.oldest_pending_s or 0.0)
