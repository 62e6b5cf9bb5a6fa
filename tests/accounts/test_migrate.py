"""Migrations: applied once, in order, even when two processes start at the same moment."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from accounts.db import DatabaseConfig, PostgresError, admin_execute, open_database
from accounts.migrate import MigrationError, applied_versions, load_migrations, migrate

from ..support import ROOT, create_database, drop_database, with_database


def test_two_processes_migrate_at_once(pg_server_dsn: str) -> None:
    name = "smtest_mig_" + Path(__file__).stem[-4:] + "_" + str(id(object()))[-6:]
    dsn = create_database(pg_server_dsn, name)
    try:
        env_base = {
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(ROOT),
            "STATIONMASTER_DATABASE_DSN": dsn,
        }
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "scheduler", "migrate"],
                env=env_base,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
            for _ in range(2)
        ]
        outputs = [p.communicate(timeout=60)[0].decode() for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs
        # Exactly one of them applied the files; the other found nothing to do.
        applied = [o for o in outputs if "nothing (up to date)" not in o]
        assert len(applied) == 1, outputs
        versions = [m.version for m in load_migrations()]
        rows = subprocess.run(
            ["psql", dsn, "-Atc", "SELECT version FROM schema_migrations ORDER BY version"],
            capture_output=True,
            text=True,
            check=False,
        )
        if rows.returncode == 0:  # psql is optional on a developer machine
            assert [int(v) for v in rows.stdout.split()] == versions
    finally:
        drop_database(pg_server_dsn, name)


async def test_migrate_is_idempotent_and_detects_edits(
    aio_loop: None, pg_server_dsn: str, tmp_path: Path
) -> None:
    name = f"smtest_mig_{secrets.token_hex(4)}"
    await admin_execute(pg_server_dsn, f'CREATE DATABASE "{name}"')
    try:
        (tmp_path / "0001_a.sql").write_text("CREATE TABLE probe_a (id int);")
        (tmp_path / "0002_b.sql").write_text("ALTER TABLE probe_a ADD COLUMN b text;")
        async with open_database(DatabaseConfig(dsn=with_database(pg_server_dsn, name))) as db:
            assert await migrate(db, tmp_path) == [1, 2]
            assert await migrate(db, tmp_path) == []
            # A broken new file rolls back whole: nothing of it, no row for it.
            (tmp_path / "0003_c.sql").write_text(
                "ALTER TABLE probe_a ADD COLUMN c text; SELECT nope;"
            )
            with pytest.raises(PostgresError):
                await migrate(db, tmp_path)
            assert await applied_versions(db) == [1, 2]
            cols = await db.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'probe_a'"
            )
            assert sorted(r["column_name"] for r in cols) == ["b", "id"]
            (tmp_path / "0003_c.sql").unlink()
            # Editing an applied file is refused rather than silently ignored.
            (tmp_path / "0001_a.sql").write_text("CREATE TABLE probe_a (id bigint);")
            with pytest.raises(MigrationError, match="changed after it was applied"):
                await migrate(db, tmp_path)
    finally:
        await admin_execute(pg_server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_misnamed_or_duplicate_files_refused(tmp_path: Path) -> None:
    (tmp_path / "1_bad.sql").write_text("")
    with pytest.raises(MigrationError):
        load_migrations(tmp_path)
    (tmp_path / "1_bad.sql").unlink()
    (tmp_path / "0001_a.sql").write_text("")
    (tmp_path / "0001_b.sql").write_text("")
    with pytest.raises(MigrationError):
        load_migrations(tmp_path)


def test_with_database_keeps_host_and_query() -> None:
    assert (
        with_database("postgresql://postgres:@/postgres?host=/tmp/x", "db1")
        == "postgresql://postgres:@/db1?host=/tmp/x"
    )


async def test_0007_drops_the_scoring_queue_weight_from_a_stored_document(
    aio_loop: None, pg_server_dsn: str, tmp_path: Path
) -> None:
    """``scoring.queue`` is gone (issue 10 item 8: nothing counted waiting selects). A document
    that set it would no longer load; 0007 removes the key and bumps the version."""
    from accounts.migrate import MIGRATIONS_DIR
    from snapshot.settings import SettingsStore

    name = f"smtest_mig7_{secrets.token_hex(4)}"
    await admin_execute(pg_server_dsn, f'CREATE DATABASE "{name}"')
    try:
        for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
            if int(path.name[:4]) < 7:
                (tmp_path / path.name).write_text(path.read_text())
        async with open_database(DatabaseConfig(dsn=with_database(pg_server_dsn, name))) as db:
            await migrate(db, tmp_path)
            await db.execute(
                "INSERT INTO settings (id, version, document) VALUES (1, 4, $1)",
                {"scoring": {"queue": 2, "top_k": 3}, "wait": {"max_wait_ms": 5}},
            )
            assert 7 in await migrate(db)
            record = await SettingsStore(db).load()
    finally:
        await admin_execute(pg_server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert record.version == 5
    assert record.document == {"scoring": {"top_k": 3}, "wait": {"max_wait_ms": 5}}
    assert record.settings.scoring.top_k == 3


async def test_0008_keeps_the_oldest_name_and_renames_later_duplicates(
    aio_loop: None, pg_server_dsn: str, tmp_path: Path
) -> None:
    """Existing duplicates (allowed before 0008): the oldest keeps the name, later ones
    become "<name> #<id>" with their version bumped; then the unique index refuses more."""
    from accounts.migrate import MIGRATIONS_DIR

    name = f"smtest_m8_{secrets.token_hex(4)}"
    await admin_execute(pg_server_dsn, f'CREATE DATABASE "{name}"')
    try:
        before = [f for f in sorted(MIGRATIONS_DIR.glob("*.sql")) if f.name < "0008"]
        for f in before:
            (tmp_path / f.name).write_text(f.read_text())
        async with open_database(DatabaseConfig(dsn=with_database(pg_server_dsn, name))) as db:
            await migrate(db, tmp_path)
            insert = (
                "INSERT INTO accounts (id, name, platform, kind, groups, concurrency, created_at)"
                " VALUES ($1::uuid, $2, 'openai', 'apikey', '{g}', 1, $3::text::timestamptz)"
            )
            rows = [
                ("00000000-0000-0000-0000-000000000003", "main", "2024-01-01T00:00:00Z"),
                ("00000000-0000-0000-0000-000000000001", "main", "2024-01-02T00:00:00Z"),
                ("00000000-0000-0000-0000-000000000002", "x" * 200, "2024-01-01T00:00:00Z"),
                ("00000000-0000-0000-0000-000000000004", "x" * 200, "2024-01-01T00:00:00Z"),
                ("00000000-0000-0000-0000-000000000005", "solo", "2024-01-01T00:00:00Z"),
            ]
            for row in rows:
                await db.execute(insert, *row)
            assert 8 in await migrate(db)  # the real directory: 0008 and whatever follows
            got = {
                str(r["id"])[-1]: (r["name"], r["version"])
                for r in await db.fetch("SELECT id, name, version FROM accounts")
            }
            assert got["3"] == ("main", 1)  # oldest keeps it
            assert got["1"] == ("main #00000000-0000-0000-0000-000000000001", 2)
            assert got["2"] == ("x" * 200, 1)  # same time: the lower id is the older
            assert got["4"] == ("x" * 160 + " #00000000-0000-0000-0000-000000000004", 2)
            assert got["5"] == ("solo", 1)
            assert (
                await db.fetchval(
                    "SELECT count(*) FROM schedule_events WHERE kind = 'accounts_renamed'"
                )
                == 1
            )
            with pytest.raises(PostgresError):
                await db.execute(
                    insert, "00000000-0000-0000-0000-000000000006", "solo", "2025-01-01"
                )
    finally:
        await admin_execute(pg_server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
