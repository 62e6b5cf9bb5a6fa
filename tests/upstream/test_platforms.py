"""New platforms are known everywhere: the enum, the database constraint, the admin API."""

from __future__ import annotations

import re

import pytest
import trio

from accounts.db import Database
from accounts.errors import StoreUnavailable
from accounts.model import Platform
from scheduler.core.config import Config
from scheduler.upstream import adapter_platforms

from ..support import admin_client, open_daemon

BASE = "/v1/admin/accounts"


async def test_constraint_lists_exactly_the_platform_enum(db: Database) -> None:
    definition = await db.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conname = 'accounts_platform_known'"
    )
    assert set(re.findall(r"'([a-z0-9_]+)'", definition)) == {p.value for p in Platform}
    assert set(adapter_platforms()) <= {p.value for p in Platform}


async def test_database_refuses_an_unknown_platform(db: Database) -> None:
    insert = (
        "INSERT INTO accounts (id, name, platform, kind, groups, concurrency)"
        " VALUES (gen_random_uuid(), 'x', $1, 'apikey', '{g}', 1)"
    )
    await db.execute(insert, "kling")
    with pytest.raises(Exception) as info:  # asyncpg's CheckViolationError, or our wrapper
        await db.execute(insert, "sora")
    assert not isinstance(info.value, StoreUnavailable)
    assert "accounts_platform_known" in str(info.value)


async def test_admin_api_accepts_every_platform_and_names_a_wrong_one(
    config: Config, db: Database
) -> None:
    with trio.fail_after(30):
        async with open_daemon(config) as (_daemon, url), admin_client(url) as http:
            for platform in Platform:
                doc = {
                    "name": f"acct-{platform.value}",
                    "platform": platform.value,
                    "groups": ["g"],
                    "credentials": {"access_key": "ak", "secret_key": "sk"},
                }
                r = await http.post(BASE, json=doc)
                assert r.status_code == 201, r.text
            r = await http.post(BASE, json={**doc, "name": "bad", "platform": "sora"})
            assert r.status_code == 422
            assert r.json()["error"]["details"]["errors"][0]["field"] == "platform"
            listed = await http.get(BASE, params={"platform": "kling"})
            assert [a["name"] for a in listed.json()["items"]] == ["acct-kling"]
