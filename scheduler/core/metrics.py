"""Prometheus metrics, one registry per daemon (several daemons can share a test process)."""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .. import __version__

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Store probes and selection run well under a second; finer buckets at the low end.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """Every collector the daemon exports. Subsystems add theirs here, not ad hoc."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.build_info = Gauge(
            "stationmaster_build_info",
            "Build information (always 1).",
            ["version", "python"],
            registry=r,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.actor_restarts = Counter(
            "stationmaster_actor_restarts_total",
            "Actor restarts after a crash.",
            ["actor"],
            registry=r,
        )
        self.actor_up = Gauge(
            "stationmaster_actor_up", "1 while the actor is running.", ["actor"], registry=r
        )
        self.loop_lag = Gauge(
            "stationmaster_loop_lag_seconds", "Latest measured event-loop lag.", registry=r
        )
        self.probe_latency = Histogram(
            "stationmaster_store_probe_seconds",
            "Health probe round trip per store.",
            ["store"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.probe_failures = Counter(
            "stationmaster_store_probe_failures_total",
            "Failed health probes per store.",
            ["store"],
            registry=r,
        )
        self.store_up = Gauge(
            "stationmaster_store_up", "1 while the store answers probes.", ["store"], registry=r
        )
        self.http_requests = Counter(
            "stationmaster_http_requests_total",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=r,
        )
        self.ready = Gauge("stationmaster_ready", "1 while /readyz answers 200.", registry=r)
        # Schedule snapshot (scheduler/schedule.py feeds these from the snapshot package).
        self.schedule_reloads = Counter(
            "stationmaster_schedule_reloads_total",
            "Bucket copies replaced in the schedule view, by source (redis, postgres).",
            ["source"],
            registry=r,
        )
        self.schedule_fallbacks = Counter(
            "stationmaster_schedule_fallbacks_total",
            "PostgreSQL fallback loads of the schedule view (loaded, limited, failed).",
            ["outcome"],
            registry=r,
        )
        self.schedule_rebuilds = Counter(
            "stationmaster_schedule_rebuilds_total",
            "Snapshot publishes by outcome (activated, stale, fenced, busy).",
            ["outcome"],
            registry=r,
        )
        self.schedule_rebuild_seconds = Histogram(
            "stationmaster_schedule_rebuild_seconds",
            "Time to read, write and activate a bucket snapshot.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.schedule_lag_seconds = Histogram(
            "stationmaster_schedule_lag_seconds",
            "Age of the oldest schedule event of a bucket when its new version activated.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
            registry=r,
        )
        self.settings_events = Counter(
            "stationmaster_settings_events_total",
            "Settings snapshot events (refreshes, refresh_failures, invalidations, ...).",
            ["event"],
            registry=r,
        )
        self.settings_version = Gauge(
            "stationmaster_settings_version", "Settings version this instance serves.", registry=r
        )
        # Selection (scheduler/select.py).
        self.selections = Counter(
            "stationmaster_selections_total",
            "Selections by path (response, session, pool, none) and outcome"
            " (immediate, waited, none).",
            ["path", "outcome"],
            registry=r,
        )
        self.exclusions = Counter(
            "stationmaster_select_exclusions_total",
            "Candidates excluded during selection, by reason.",
            ["reason"],
            registry=r,
        )
        self.acquire_attempts = Counter(
            "stationmaster_acquire_attempts_total",
            "Lease acquire attempts by result.",
            ["result"],
            registry=r,
        )
        self.select_wait = Histogram(
            "stationmaster_select_wait_seconds",
            "Time selections spent waiting for a free account.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.leases = Gauge(
            "stationmaster_bucket_leases",
            "Active leases per bucket, as this instance last saw them.",
            ["bucket"],
            registry=r,
        )

        # Usage prober (scheduler/usage).
        self.usage_probes = Counter(
            "stationmaster_usage_probes_total",
            "Usage probes by platform and result (ok, cannot_probe, auth_failed,"
            " rate_limited, failed).",
            ["platform", "result"],
            registry=r,
        )
        self.usage_claims = Counter(
            "stationmaster_usage_claims_total",
            "Probe claims that did not start a probe, by reason (locked, not_due, over_rate).",
            ["reason"],
            registry=r,
        )
        self.usage_paused = Gauge(
            "stationmaster_usage_accounts_paused",
            "Probe-able accounts quota-paused when the prober last looked, by platform.",
            ["platform"],
            registry=r,
        )
        self.usage_reset_to_schedulable = Histogram(
            "stationmaster_usage_reset_to_schedulable_seconds",
            "From a paused account's window reset to the probe that made it schedulable.",
            buckets=(1, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 7200),
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
