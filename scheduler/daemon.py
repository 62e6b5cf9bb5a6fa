"""The daemon: open the stores, migrate, start the actors in order, serve, drain.

Lifetimes nest from the outside in: asyncio bridge loop → PostgreSQL pool →
Redis client → the supervisor's nursery. Stores outlive every actor that uses
them, so shutdown can cancel actors without any of them finding a closed pool.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import trio

from accounts.crypto import Cipher
from accounts.db import open_database, open_loop
from accounts.key_rotation import check_credentials_key
from accounts.migrate import migrate
from accounts.repository import AccountRepository
from snapshot.redis import open_redis
from snapshot.settings import SettingsSnapshot, SettingsStore

from . import __version__
from .core.config import Config
from .core.health import Health, Phase
from .core.logs import bind, get_logger, register_secret
from .core.metrics import Metrics
from .core.probes import InstanceRegistry, LoopLag, StoreProber
from .core.supervisor import RestartPolicy, Supervisor
from .core.systemd import Notifier, Watchdog, watchdog_interval_s
from .http.app import build_app
from .http.data_plane import wire_handler
from .http.endpoints import Endpoint, Plane
from .http.planes import Shared, all_endpoints, wrap_plane
from .http.server import HttpServer
from .http.wire import WireLimits, WireServer
from .outbox import build_outbox
from .selection.install import install as install_selection
from .selection.schedule import build_schedule
from .services import Services
from .tasks import build as build_tasks
from .upstream import open_upstream
from .usage import install as install_usage

log = get_logger("daemon")

# Each actor gets this long to run its cleanup (shielded finally blocks) once
# cancelled; the stores close after, so a stuck cleanup must not hold them forever.
_ACTOR_STOP_TIMEOUT_S = 5.0


class Daemon:
    """One stationmaster process. ``run`` serves until :meth:`shutdown` (or a signal, via the CLI).

    ``started()`` hands back the control plane's URLs once every actor is up and READY=1
    was sent; :attr:`data_urls` then holds the data plane's.
    Raises SupervisorError (in an exception group) if an essential actor keeps crashing.

    ``extra_actors`` start after the built-in ones (before HTTP) and
    ``extra_endpoints`` are served next to the built-in routes (on the planes they
    name): the seam tests use
    to inject a crashing actor or a slow route without patching production code.
    """

    def __init__(
        self,
        config: Config,
        *,
        env: Mapping[str, str] | None = None,
        extra_actors: Sequence[Any] = (),
        extra_endpoints: Sequence[Endpoint] = (),
    ) -> None:
        self.config = config
        self.env = os.environ if env is None else env
        self.extra_actors = list(extra_actors)
        self.extra_endpoints = list(extra_endpoints)
        self.metrics = Metrics()
        self.health = Health(self.metrics, max_loop_lag_s=config.health.max_loop_lag_s)
        self.notifier = Notifier(self.env)
        self.instance_id = f"{os.uname().nodename}-{os.getpid()}-{secrets.token_hex(3)}"
        self.services: Services | None = None
        # The bound URLs once ready: the control plane's (what run()'s started() hands
        # back) and the data plane's.
        self.urls: list[str] = []
        self.data_urls: list[str] = []
        self._shutdown = trio.Event()
        register_secret(*config.auth.admin_tokens, *config.auth.gateway_tokens, *config.crypto.keys)

    def shutdown(self) -> None:
        """Begin the graceful stop (idempotent, callable from any trio task)."""
        self._shutdown.set()

    async def run(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        bind(instance=self.instance_id)
        cfg = self.config
        self.notifier.status("starting: connecting to stores")
        try:
            async with open_loop(_report_loop_error), open_database(cfg.database) as db:
                applied = await migrate(db)
                if applied:
                    log.info("migrations applied", versions=applied)
                cipher = Cipher(cfg.crypto)
                # Refuse to start when stored credentials exist that no key opens.
                await check_credentials_key(db, cipher)
                async with open_redis(cfg.redis) as redis, open_upstream(cfg.upstream) as up:
                    self.services = Services(
                        cfg, self.health, self.metrics, db, redis, self.instance_id
                    )
                    self.services.accounts = AccountRepository(db, cipher)
                    self.services.upstream = up
                    await self._serve(self.services, task_status)
        finally:
            self.health.set_phase(Phase.STOPPED)
            self.notifier.close()

    async def _serve(self, services: Services, task_status: trio.TaskStatus[list[str]]) -> None:
        cfg = self.config
        policy = RestartPolicy(
            **{f: getattr(cfg.supervisor, f) for f in cfg.supervisor.__struct_fields__}
        )
        supervisor = Supervisor(policy, self.health, self.metrics)
        control, data = self._planes(services)
        try:
            async with trio.open_nursery() as nursery:
                for actor in [*self._actors(services), *self.extra_actors]:
                    await supervisor.start(nursery, actor)
                urls = self.urls = await supervisor.start(nursery, control)
                self.data_urls = await supervisor.start(nursery, data)
                self.health.set_phase(Phase.RUNNING)
                self.notifier.ready(self.health.summary())
                log.info("ready", urls=urls, data_urls=self.data_urls, version=__version__)
                task_status.started(urls)
                await self._shutdown.wait()
                await self._drain((control, data), supervisor)
                nursery.cancel_scope.cancel()
        except BaseException:
            self.health.set_phase(Phase.FAILING)
            self.notifier.status("failing")
            raise
        log.info("stopped")

    def _planes(self, services: Services) -> tuple[HttpServer, WireServer]:
        """The control plane (hypercorn + starlette) and the data plane (the wire) servers."""
        cfg = self.config.http
        endpoints = [*all_endpoints(), *self.extra_endpoints]
        shared = Shared.of(services)
        control = HttpServer(build_app(wrap_plane(Plane.CONTROL, endpoints, shared)), cfg)
        limits = WireLimits(
            max_body_bytes=cfg.max_body_bytes,
            max_header_bytes=cfg.max_header_bytes,
            max_headers=cfg.max_headers,
            read_timeout_s=cfg.read_timeout_s,
            keep_alive_timeout_s=cfg.keep_alive_timeout_s,
            drain_timeout_s=cfg.drain_timeout_s,
        )
        data = WireServer(
            wire_handler(wrap_plane(Plane.DATA, endpoints, shared)),
            host=cfg.data_host,
            port=cfg.data_port,
            limits=limits,
        )
        return control, data

    async def _drain(self, servers: tuple[HttpServer, WireServer], supervisor: Supervisor) -> None:
        """Stop intake, let in-flight requests finish (bounded), then stop the actors."""
        cfg = self.config.http
        # Order matters: readiness 503 and STOPPING=1 first, so the load balancer
        # stops sending while connections are still accepted; then close the
        # listeners and drain in-flight requests; then stop the rest.
        self.health.set_phase(Phase.DRAINING)
        self.notifier.stopping()
        log.info("draining", delay_s=cfg.drain_delay_s, timeout_s=cfg.drain_timeout_s)
        await trio.sleep(cfg.drain_delay_s)
        # Both planes at once: each closes its listeners, finishes what is in flight
        # and closes idle connections, within drain_timeout_s.
        async with trio.open_nursery() as nursery:
            for server in servers:
                nursery.start_soon(server.drain)
        await supervisor.stop(timeout_s=_ACTOR_STOP_TIMEOUT_S)

    def _settings_event(self, event: str, version: int) -> None:
        self.metrics.settings_events.labels(event).inc()
        self.metrics.settings_version.set(version)

    def _tasks(self, services: Services) -> list[Any]:
        services.tasks, actors = build_tasks(services)
        return actors

    def _actors(self, services: Services) -> list[Any]:
        """Actors in start order (dependencies first); the two HTTP servers start after them."""
        cfg = self.config
        services.settings = SettingsSnapshot(
            SettingsStore(services.db), services.redis, on_event=self._settings_event
        )
        services.schedule = build_schedule(services)
        outbox = build_outbox(
            services.db, cfg.outbox, owner=self.instance_id, registry=self.metrics.registry
        )
        services.outbox = outbox.store
        return [
            LoopLag(self.health, self.metrics),
            StoreProber(
                services.db,
                services.redis,
                self.health,
                self.metrics,
                interval_s=cfg.health.probe_interval_s,
                timeout_s=cfg.health.probe_timeout_s,
            ),
            # Essential: started() only after the first load, so readiness waits for it.
            services.settings,
            *services.schedule.actors(),
            InstanceRegistry(services.db, self.instance_id, __version__, os.getpid()),
            # Selection last: it reads the settings and the schedule view built above.
            *install_selection(services),
            # Tasks use selection (submit) and the account repository.
            *self._tasks(services),
            # The usage prober writes through selection's runtime store (installed just above).
            *install_usage(services),
            *outbox.actors,
            Watchdog(self.notifier, self.health, watchdog_interval_s(self.env)),
        ]


def _report_loop_error(message: str, error: str) -> None:
    # A leftover of the asyncio side (see accounts.db.open_loop): logged, never fatal.
    log.warning("database driver: error nobody awaited", message=message, error=error)
