"""Where and how the lean Redis client connects: ``RedisConfig.url`` parsed.

Split from :mod:`snapshot.lean_redis` (which re-exports :class:`Endpoint`) to keep
that module to the client itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect, parsed from ``RedisConfig.url``."""

    host: str = "127.0.0.1"
    port: int = 6379
    unix_path: str | None = None
    tls: bool = False
    username: str | None = None
    password: str | None = None
    db: int = 0

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        """redis://[user:pass@]host[:port][/db], rediss://..., unix://[user:pass@]/path[?db=N]."""
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        db_text = query.get("db", [""])[0] or parts.path.lstrip("/")
        if parts.scheme == "unix":
            db_text = query.get("db", ["0"])[0]
        try:
            db = int(db_text or 0)
        except ValueError:
            raise ValueError("url: the database must be a number") from None
        if parts.scheme == "unix":
            return cls(unix_path=parts.path, username=username, password=password, db=db)
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            tls=parts.scheme == "rediss",
            username=username,
            password=password,
            db=db,
        )

    def handshake(self) -> list[tuple[str | int, ...]]:
        """Commands sent on every new connection before it serves calls."""
        commands: list[tuple[str | int, ...]] = []
        if self.password is not None:
            if self.username:
                commands.append(("AUTH", self.username, self.password))
            else:
                commands.append(("AUTH", self.password))
        if self.db:
            commands.append(("SELECT", self.db))
        return commands
