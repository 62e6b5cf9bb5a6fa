"""Store errors reach the operator as one line and exit 1, never as a traceback.

Cases: an operator command against a database that was never migrated (a raw
PostgreSQL error underneath, wrapped by the asyncio bridge's nursery); an
operator command with Redis unreachable (a rebuild) (coredis' error wrapped by its pool's
task group).
"""

from __future__ import annotations

import secrets

from accounts.db import admin_execute

from ...support import config_dict, free_port, run_cli, with_database


async def test_unmigrated_database_is_one_line(
    aio_loop: None, pg_server_dsn: str, redis_url: str
) -> None:
    name = f"smtest_cli_{secrets.token_hex(4)}"
    await admin_execute(pg_server_dsn, f'CREATE DATABASE "{name}"')
    try:
        data = config_dict(with_database(pg_server_dsn, name), redis_url, "smcli:")
        code, out, err = await run_cli(data, "buckets", "list")
    finally:
        await admin_execute(pg_server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert code == 1, (out, err)
    assert "Traceback" not in err
    assert "UndefinedTableError" in err and "stationmaster migrate" in err


async def test_unreachable_redis_is_one_line(pg_dsn: str) -> None:
    data = config_dict(pg_dsn, f"redis://127.0.0.1:{free_port()}/0", "smcli:")
    data["redis"]["connect_timeout_s"] = 0.5
    code, out, err = await run_cli(data, "buckets", "rebuild", "g1/openai")
    assert code == 1, (out, err)
    assert "Traceback" not in err, err
    assert err.startswith("stationmaster: "), err
