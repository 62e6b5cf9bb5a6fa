"""``stationmaster check`` as a real subprocess: exit codes, the lines it prints, no secrets.

Cases: a valid config against this run's servers (exit 0, one ``ok`` line per
check); Redis unreachable (exit 1, a ``FAIL redis`` line, PostgreSQL still
reported, no traceback); PostgreSQL refusing the role (exit 1, ``FAIL
postgres``, the DSN's password never printed); a bad value (``pool_max = 0``:
exit 2 naming the key, nothing checked).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ...support import config_dict, run_cli

PASSWORD = "pw-check-" + "s3cr3t" * 3


async def check(data: dict[str, Any]) -> tuple[int, str, str]:
    return await run_cli(data, "check")


def _lines(out: str) -> dict[str, str]:
    """``{"database": "ok   database: …", …}`` keyed by the config section each line checks."""
    return {
        line[5:].split(":")[0]: line for line in out.splitlines() if line[:5] in ("ok   ", "FAIL ")
    }


async def test_valid_config_reaches_both_stores(pg_dsn: str, redis_url: str) -> None:
    code, out, err = await check(config_dict(pg_dsn, redis_url, "smcheck:"))
    assert code == 0, (out, err)
    lines = _lines(out)
    assert set(lines) == {"config", "auth", "crypto", "database", "redis"}, out
    assert all(line.startswith("ok   ") for line in lines.values()), out
    assert "reachable" in lines["database"] and "pending migrations none" in lines["database"]
    assert "config: valid (" in lines["config"]
    assert "reachable" in lines["redis"] and "'smcheck:'" in lines["redis"]
    assert "auth: 1 admin, 1 gateway" in lines["auth"]


async def test_unreachable_redis_fails_with_a_line_not_a_traceback(pg_dsn: str) -> None:
    data = config_dict(pg_dsn, "redis://127.0.0.1:1/0", "smcheck:")
    data["redis"].update(connect_timeout_s=1, command_timeout_s=1)
    code, out, err = await check(data)
    assert code == 1, (out, err)
    lines = _lines(out)
    assert lines["redis"].startswith("FAIL redis"), out
    assert lines["database"].startswith("ok   database"), out
    assert "127.0.0.1:1, db 0" in lines["redis"], out  # names what it tried
    assert "Traceback" not in out + err


async def test_refused_postgres_fails_without_printing_the_password(
    pg_dsn: str, redis_url: str
) -> None:
    parts = urlsplit(pg_dsn)
    netloc = f"no_such_role_x:{PASSWORD}@{parts.hostname}:{parts.port or 5432}"
    dsn = urlunsplit(parts._replace(netloc=netloc))
    code, out, err = await check(config_dict(dsn, redis_url, "smcheck:"))
    assert code == 1, (out, err)
    lines = _lines(out)
    assert lines["database"].startswith("FAIL database"), out
    assert f"{parts.hostname}:{parts.port or 5432}" in lines["database"], out
    assert lines["redis"].startswith("ok   redis"), out
    assert "Traceback" not in out + err
    assert PASSWORD not in out + err


async def test_missing_database_names_host_and_database(pg_dsn: str, redis_url: str) -> None:
    """The issue's `cannot connect (InvalidCatalogNameError)` now says where and which database."""
    parts = urlsplit(pg_dsn)
    netloc = f"postgres:{PASSWORD}@{parts.hostname}:{parts.port or 5432}"
    dsn = urlunsplit(parts._replace(netloc=netloc, path="/no_such_db_here"))
    data = config_dict(dsn, redis_url, "smcheck:")
    data["database"]["start_timeout_s"] = 0
    code, out, err = await check(data)
    assert code == 1, (out, err)
    line = _lines(out)["database"]
    assert f"{parts.hostname}:{parts.port or 5432}, database 'no_such_db_here'" in line, line
    assert PASSWORD not in out + err


async def test_bad_config_exits_2_naming_the_key(pg_dsn: str, redis_url: str) -> None:
    data = config_dict(pg_dsn, redis_url, "smcheck:")
    data["database"]["pool_max"] = 0
    code, out, err = await check(data)
    assert code == 2, (out, err)
    assert "database.pool_max" in err
    assert not _lines(out)
