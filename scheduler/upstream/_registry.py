"""The adapter registry and the one shared HTTP client."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import trio

from accounts.errors import ConfigError

from ..core.config import UpstreamConfig
from ..core.transport import TrioTransport
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
    """Every adapter, sharing one transport; built by :func:`open_upstream`."""

    def __init__(self, adapters: dict[str, Adapter], transport: TrioTransport) -> None:
        self._adapters = adapters
        self.transport = transport

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
async def open_upstream(config: UpstreamConfig) -> AsyncIterator[Upstream]:
    """The registry with its transport open; its connections close on exit.

    The wire is :class:`~scheduler.core.transport.TrioTransport` (lean HTTP/1.1
    keep-alive on trio, called without httpx's models: a fraction of httpx +
    httpcore's CPU per request, see bench/simulator.py). No proxy from the
    environment ever sits between us and an upstream holding our credentials,
    no cookie travels from one account's answer to another's request, and
    redirects are not followed.
    Raises ConfigError for a ``[upstream.platforms.X]`` naming no adapter.
    """
    unknown = sorted(set(config.platforms) - set(_FACTORIES))
    if unknown:
        raise ConfigError(f"upstream.platforms.{unknown[0]}", "no adapter for this platform")
    # Requests in flight (so connections) are bounded by the Exchanges' limiters,
    # per platform and in all; idle connections per origin here.
    transport = TrioTransport(
        max_body=MAX_ANSWER_BYTES,
        max_idle=config.max_connections_per_platform,
        idle_timeout_s=config.keepalive_expiry_s,
    )
    try:
        adapters: dict[str, Adapter] = {}
        shared = trio.CapacityLimiter(config.max_connections)
        for platform, factory in _FACTORIES.items():
            own = config.platforms.get(platform)
            exchange = Exchange(
                transport,
                platform,
                connect_timeout_s=config.connect_timeout_s,
                timeout_s=(own and own.timeout_s) or config.timeout_s,
                submit_timeout_s=(own and own.submit_timeout_s) or config.submit_timeout_s,
                max_connections=(own and own.max_connections)
                or config.max_connections_per_platform,
                shared=shared,
            )
            adapters[platform] = factory(exchange, dict(own.prices) if own else {})
        yield Upstream(adapters, transport)
    finally:
        with trio.move_on_after(1, shield=True):
            await transport.aclose()
