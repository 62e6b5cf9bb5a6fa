"""How to reach Redis: the settings both Redis clients (coredis and the lean one) read.

Its own module so :mod:`snapshot.redis` (which opens both clients) and
:mod:`snapshot.lean_redis` share it without importing each other both ways.
"""

from __future__ import annotations

from typing import Annotated

import msgspec


class RedisConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How to reach Redis and how this deployment names its keys."""

    url: str = "redis://127.0.0.1:6379/0"
    # Every key starts with this, so several deployments (or test runs) can share
    # one server. Keep it short: it is sent with every command.
    key_prefix: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "sm:"
    connect_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    # Bounds every command so a wedged server becomes StoreUnavailable quickly.
    command_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    # coredis' pool (pub/sub, builds, admin); the lean hot-path client keeps its own
    # few pipelined connections (snapshot.lean_redis).
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 64

    def __post_init__(self) -> None:
        # Checked here so a typo fails at start with exit 2, not at first command.
        if not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("url: must start with redis://, rediss:// or unix://")
