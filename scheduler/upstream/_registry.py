"""The adapter registry and the one shared HTTP client."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import httpx
import trio

from accounts.errors import ConfigError

from ..core.config import UpstreamConfig
from ..core.transport import CookielessClient, TrioTransport
from ._http import Exchange
from .dashscope import DashScope
from .errors import Rejected
from .kling import Kling
from .model import Adapter
from .veo import Veo

# platform -> constructor(exchange, configured prices)
_FACTORIES: dict[str, Callable[[Exchange, dict[str, int]], Adapter]] = {
    DashScope.platform: DashScope,
    Kling.platform: Kling,
    Veo.platform: Veo,
}


class Upstream:
    """Every adapter, sharing one ``httpx.AsyncClient``; built by :func:`open_upstream`."""

    def __init__(self, adapters: dict[str, Adapter], client: httpx.AsyncClient) -> None:
        self._adapters = adapters
        self.client = client

    def adapter(self, platform: str) -> Adapter:
        """The platform's adapter; Rejected (not KeyError) for a platform without one."""
        found = self._adapters.get(str(platform))
        if found is None:
            raise Rejected(
                f"no adapter for platform `{platform}` (async tasks: "
                f"{', '.join(self.platforms())})",
                platform=str(platform),
            )
        return found

    def platforms(self) -> list[str]:
        return sorted(self._adapters)


def adapter_platforms() -> list[str]:
    """Platforms that have an adapter (for config validation and the admin API)."""
    return sorted(_FACTORIES)


# The largest upstream answer read: a task status with its result URLs is a few
# KB; a longer body is cut, fails to decode and counts as a Transient answer.
MAX_ANSWER_BYTES = 1024 * 1024


@contextlib.asynccontextmanager
async def open_upstream(
    config: UpstreamConfig, *, transport: httpx.AsyncBaseTransport | None = None
) -> AsyncIterator[Upstream]:
    """The registry with its client open; the client (and its connections) close on exit.

    The client's wire is :class:`~scheduler.core.transport.TrioTransport` (lean
    HTTP/1.1 keep-alive on trio: a fraction of httpcore's CPU per request, see
    bench/simulator.py); ``transport`` replaces it (benchmarks compare httpx's own).
    Raises ConfigError for a ``[upstream.platforms.X]`` naming no adapter.
    """
    unknown = sorted(set(config.platforms) - set(_FACTORIES))
    if unknown:
        raise ConfigError(f"upstream.platforms.{unknown[0]}", "no adapter for this platform")
    if transport is None:
        # Requests in flight (so connections) are bounded by the Exchanges'
        # limiters, per platform and in all; idle connections per origin here.
        transport = TrioTransport(
            max_body=MAX_ANSWER_BYTES,
            max_idle=config.max_connections_per_platform,
            idle_timeout_s=config.keepalive_expiry_s,
        )
    # trust_env=False: a proxy from the environment must not silently sit between us
    # and an upstream holding our credentials.
    async with CookielessClient(
        transport=transport, trust_env=False, follow_redirects=False
    ) as client:
        adapters: dict[str, Adapter] = {}
        shared = trio.CapacityLimiter(config.max_connections)
        for platform, factory in _FACTORIES.items():
            own = config.platforms.get(platform)
            exchange = Exchange(
                client,
                platform,
                connect_timeout_s=config.connect_timeout_s,
                timeout_s=(own and own.timeout_s) or config.timeout_s,
                submit_timeout_s=(own and own.submit_timeout_s) or config.submit_timeout_s,
                max_connections=(own and own.max_connections)
                or config.max_connections_per_platform,
                shared=shared,
            )
            adapters[platform] = factory(exchange, dict(own.prices) if own else {})
        yield Upstream(adapters, client)
