"""``stationmaster check``: validate config, reach the stores, report what was found."""

from __future__ import annotations

from collections.abc import Awaitable

import trio

from accounts.db import describe_dsn, open_database, open_loop
from accounts.errors import StationmasterError
from accounts.migrate import applied_versions, load_migrations
from snapshot.redis import describe_url, open_redis

from ..core.config import Config


def run_check(config: Config, source: str = "defaults") -> int:
    """Print one line per check; 0 if all passed, 1 otherwise. Secrets are never printed.

    Lines are labelled with the config section they check (``database``, ``redis``,
    ``auth``, ``crypto``), so a failing line names the section to fix; ``source``
    says where the config came from.
    """
    auth = config.auth
    results: list[tuple[bool, str]] = [
        (True, f"config: valid ({source})"),
        (
            True,
            f"auth: {len(auth.admin_tokens)} admin, {len(auth.gateway_tokens)} gateway token(s)",
        ),
        (True, f"crypto: {len(config.crypto.keys)} key(s)"),
    ]

    async def main() -> None:
        async with open_loop():
            results.append(await _reported("database", _check_postgres(config)))
            results.append(await _reported("redis", _check_redis(config)))

    trio.run(main)
    for ok, line in results:
        print(("ok   " if ok else "FAIL ") + line)
    return 0 if all(ok for ok, _ in results) else 1


async def _reported(store: str, check: Awaitable[tuple[bool, str]]) -> tuple[bool, str]:
    """The check's line, or a FAIL line naming the store's error (never a traceback).

    The drivers run their connections in task groups, so a failure inside
    ``open_redis`` arrives wrapped in an exception group.
    """
    try:
        return await check
    except StationmasterError as exc:
        return False, f"{store}: {_without_store(exc)}"
    except ExceptionGroup as group:
        matched, _rest = group.split(StationmasterError)
        if matched is None:
            raise
        first = _first_leaf(matched)
        reason = _without_store(first) if isinstance(first, StationmasterError) else "failed"
        return False, f"{store}: {reason}"


def _without_store(exc: StationmasterError) -> str:
    """The message without its ``postgres:`` / ``redis:`` prefix (the line has its own label)."""
    store = exc.details.get("store")
    return exc.message.removeprefix(f"{store}: ") if store else exc.message


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def _check_postgres(config: Config) -> tuple[bool, str]:
    async with open_database(config.database, retry_for_s=0) as db:
        ms = await db.ping(timeout_s=3)
        version = await db.fetchval("SHOW server_version")
        has_table = await db.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        applied = await applied_versions(db) if has_table else []
    pending = [m.version for m in load_migrations() if m.version not in applied]
    return True, (
        f"database: reachable ({ms * 1000:.1f} ms) at {describe_dsn(config.database.dsn)}, "
        f"PostgreSQL {version}, "
        f"schema {max(applied, default=0):04d}, pending migrations {pending or 'none'}"
    )


async def _check_redis(config: Config) -> tuple[bool, str]:
    async with open_redis(config.redis) as redis:
        ms = await redis.ping(timeout_s=3)
        info = await redis.client.info("server")
    return True, (
        f"redis: reachable ({ms * 1000:.1f} ms) at {describe_url(config.redis.url)}, "
        f"server {info.get('redis_version', '?')!s}, "
        f"key prefix {config.redis.key_prefix!r}"
    )
