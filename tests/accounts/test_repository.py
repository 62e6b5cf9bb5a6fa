"""AccountRepository against real PostgreSQL: CRUD, pages, compare-and-set races, events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
import trio

from accounts.crypto import Cipher, CryptoConfig, generate_key
from accounts.db import Database
from accounts.errors import ConfigError, Conflict, NotFound, ValidationFailed
from accounts.inputs import AccountCreate, AccountPatch
from accounts.key_rotation import check_credentials_key
from accounts.model import Platform, Status
from accounts.repository import AccountRepository
from accounts.validation import convert

from ..support import CRYPTO_KEY

SECRET = "sk-test-" + "q" * 30 + "WXYZ"


def new(**fields: Any) -> AccountCreate:
    doc: dict[str, Any] = {
        "name": "acct",
        "platform": "openai",
        "groups": ["default"],
        "credentials": {"api_key": SECRET},
    }
    doc.update(fields)
    return convert(doc, AccountCreate)


@pytest.fixture
def repo(db: Database) -> AccountRepository:
    return AccountRepository(db, Cipher(CryptoConfig(keys=[CRYPTO_KEY])))


async def events(db: Database) -> list[tuple[str, str | None, str | None]]:
    rows = await db.fetch(
        "SELECT kind, bucket_group, bucket_platform FROM schedule_events ORDER BY id"
    )
    return [(r["kind"], r["bucket_group"], r["bucket_platform"]) for r in rows]


async def test_create_get_update_disable_delete(repo: AccountRepository, db: Database) -> None:
    with trio.fail_after(20):
        created = await repo.create(new(groups=["a", "b"], models=["gpt-4o*"], priority=3))
        assert created.version == 1 and created.status is Status.ACTIVE
        assert created.groups == ("a", "b") and created.platform is Platform.OPENAI
        assert created.credentials_enc and SECRET not in created.credentials_enc
        assert repo.cipher.decrypt(created.credentials_enc) == {"api_key": SECRET}
        assert await repo.get(created.id) == created

        patch = AccountPatch(concurrency=4, groups=["b", "c"], load_factor=2.5)
        updated = await repo.update(created.id, patch, expected_version=1)
        assert (updated.version, updated.concurrency, updated.groups) == (2, 4, ("b", "c"))
        assert updated.updated_at is not None and created.updated_at is not None
        assert updated.updated_at >= created.updated_at

        cleared = await repo.update(created.id, AccountPatch(load_factor=None), expected_version=2)
        assert cleared.load_factor is None and cleared.version == 3

        disabled = await repo.disable(created.id)
        assert disabled.status is Status.DISABLED and disabled.version == 4
        # Disabling again writes nothing.
        assert (await repo.disable(created.id)).version == 4

        await repo.delete(created.id, expected_version=4)
        with pytest.raises(NotFound):
            await repo.get(created.id)
        with pytest.raises(NotFound):
            await repo.delete(created.id)
        with pytest.raises(NotFound):
            await repo.get("not-a-uuid")

        assert await events(db) == [
            ("account_created", "a", "openai"),
            ("account_created", "b", "openai"),
            # The move from {a, b} to {b, c} dirties old and new buckets.
            ("account_updated", "a", "openai"),
            ("account_updated", "b", "openai"),
            ("account_updated", "c", "openai"),
            ("account_updated", "b", "openai"),
            ("account_updated", "c", "openai"),
            ("account_disabled", "b", "openai"),
            ("account_disabled", "c", "openai"),
            ("account_deleted", "b", "openai"),
            ("account_deleted", "c", "openai"),
        ]


async def test_stale_version_conflicts_and_changes_nothing(repo: AccountRepository) -> None:
    with trio.fail_after(20):
        acct = await repo.create(new())
        await repo.update(acct.id, AccountPatch(priority=1), expected_version=1)
        with pytest.raises(Conflict) as info:
            await repo.update(acct.id, AccountPatch(priority=9), expected_version=1)
        assert info.value.current_version == 2
        with pytest.raises(Conflict):
            await repo.delete(acct.id, expected_version=1)
        # An empty patch is a no-op: the version is checked, not bumped.
        same = await repo.update(acct.id, AccountPatch(), expected_version=2)
        assert (same.version, same.priority) == (2, 1)
        with pytest.raises(Conflict):
            await repo.update(acct.id, AccountPatch(), expected_version=1)
        assert (await repo.get(acct.id)).priority == 1


async def test_concurrent_updates_exactly_one_wins(repo: AccountRepository) -> None:
    """Eight trio tasks write the same version at once, each on its own pool connection."""
    with trio.fail_after(30):
        acct = await repo.create(new())
        for round_ in range(5):
            version = (await repo.get(acct.id)).version
            outcomes: list[Any] = []

            async def write(i: int, version: int = version, outcomes: list[Any] = outcomes) -> None:
                try:
                    done = await repo.update(
                        acct.id, AccountPatch(priority=i), expected_version=version
                    )
                    outcomes.append(done)
                except Conflict as exc:
                    outcomes.append(exc)

            async with trio.open_nursery() as nursery:
                for i in range(8):
                    nursery.start_soon(write, i)
            winners = [o for o in outcomes if not isinstance(o, Conflict)]
            losers = [o for o in outcomes if isinstance(o, Conflict)]
            assert len(winners) == 1 and len(losers) == 7, round_
            assert all(c.current_version == version + 1 for c in losers)
            stored = await repo.get(acct.id)
            assert stored.version == version + 1 and stored.priority == winners[0].priority


async def test_pagination_has_no_duplicates_or_gaps(repo: AccountRepository) -> None:
    with trio.fail_after(30):
        ids = await repo.create_many(
            [new(name=f"n{i}", groups=["g1" if i % 3 else "g2"]) for i in range(257)]
        )
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            page = await repo.list_accounts(cursor=cursor, limit=50)
            seen += [a.id for a in page.items]
            pages += 1
            cursor = page.next_cursor
            if cursor is None:
                break
        assert pages == 6 and len(seen) == len(set(seen)) == 257
        assert sorted(seen) == sorted(ids) == seen

        g2 = await repo.list_accounts(group="g2", limit=1000)
        assert len(g2.items) == 86 and g2.next_cursor is None
        assert not (await repo.list_accounts(platform=Platform.GEMINI)).items
        exact = await repo.list_accounts(limit=257)
        assert len(exact.items) == 257 and exact.next_cursor is None
        with pytest.raises(ValidationFailed) as info:
            await repo.list_accounts(cursor="garbage")
        assert info.value.errors[0].field == "cursor"


async def test_rolled_back_write_leaves_no_event(repo: AccountRepository, db: Database) -> None:
    class Boom(Exception):
        pass

    with trio.fail_after(20):
        with pytest.raises(Boom):
            async with db.transaction() as conn:
                await repo.create(new(), conn=conn)
                assert len(await conn.fetch("SELECT 1 FROM schedule_events")) == 1
                raise Boom
        assert await events(db) == []
        assert (await repo.list_accounts()).items == []

        # A bulk import the database refuses halfway (a negative load factor) writes nothing.
        bad = msgspec.structs.replace(new(name="bad"), load_factor=float("-1"))
        with pytest.raises(ValidationFailed):
            await repo.create_many([new(name="ok"), bad])
        assert await events(db) == []
        assert (await repo.list_accounts()).items == []


async def test_mark_error_and_bucket_reads(repo: AccountRepository, db: Database) -> None:
    with trio.fail_after(20):
        a = await repo.create(new(name="a", priority=2, groups=["g"]))
        b = await repo.create(new(name="b", priority=1, groups=["g", "h"]))
        c = await repo.create(new(name="c", priority=1, groups=["g"], schedulable=False))
        await repo.create(new(name="d", platform="anthropic", groups=["g"]))
        assert [x.name for x in await repo.bucket_accounts("g", Platform.OPENAI)] == ["b", "a"]
        assert c.id not in {x.id for x in await repo.bucket_accounts("g", Platform.OPENAI)}
        assert await repo.buckets() == [
            ("g", Platform.ANTHROPIC),
            ("g", Platform.OPENAI),
            ("h", Platform.OPENAI),
        ]
        await db.execute("DELETE FROM schedule_events")

        assert await repo.mark_error(b.id, "upstream 401: invalid api key") is True
        # Repeated reports from a burst of failing requests write nothing more.
        assert await repo.mark_error(b.id, "upstream 401 again") is False
        stored = await repo.get(b.id)
        assert (
            stored.status is Status.ERROR and stored.error_reason == "upstream 401: invalid api key"
        )
        assert stored.version == 2
        assert await events(db) == [
            ("account_error", "g", "openai"),
            ("account_error", "h", "openai"),
        ]
        assert [x.name for x in await repo.bucket_accounts("g", Platform.OPENAI)] == ["a"]

        # An admin re-enabling the account clears the reason.
        back = await repo.update(b.id, AccountPatch(status="active"), expected_version=2)
        assert back.status is Status.ACTIVE and back.error_reason is None
        assert a.version == 1


async def test_credentials_key_check_and_reencrypt(repo: AccountRepository, db: Database) -> None:
    with trio.fail_after(30):
        await check_credentials_key(db, Cipher(CryptoConfig()))  # no rows: fine without a key
        await repo.create_many([new(name=f"k{i}") for i in range(7)])
        with pytest.raises(ConfigError) as info:
            await check_credentials_key(db, Cipher(CryptoConfig()))
        assert info.value.key == "crypto.keys"
        with pytest.raises(ConfigError):
            await check_credentials_key(db, Cipher(CryptoConfig(keys=[generate_key()])))
        await check_credentials_key(db, repo.cipher)

        newest = generate_key()
        rotated = AccountRepository(db, Cipher(CryptoConfig(keys=[newest, CRYPTO_KEY])))
        await db.execute("DELETE FROM schedule_events")
        assert await rotated.reencrypt() == 7
        only_new = Cipher(CryptoConfig(keys=[newest]))
        await check_credentials_key(db, only_new)
        for acct in (await repo.list_accounts()).items:
            assert acct.version == 2 and acct.credentials_enc
            assert only_new.decrypt(acct.credentials_enc) == {"api_key": SECRET}
        assert await events(db) == [("credentials_reencrypted", None, None)]


def test_input_validation_names_each_field() -> None:
    """Bad inputs tried: concurrency 0/-1, thresholds 0 and 1.5, unknown platform, bad model
    pattern, empty and repeated groups, non-http base_url and one with a password, naive
    expires_at, unknown field, missing credentials, null name in a patch."""
    cases = {
        "concurrency": [{"concurrency": 0}, {"concurrency": -1}],
        "auto_pause_5h_threshold": [{"auto_pause_5h_threshold": 0}],
        "auto_pause_7d_threshold": [{"auto_pause_7d_threshold": 1.5}],
        "platform": [{"platform": "myspace"}],
        "models[0]": [{"models": ["gpt 4o"]}],
        "groups": [{"groups": []}, {"groups": ["a", "a"]}],
        "groups[0]": [{"groups": ["bad/name"]}],
        "base_url": [{"base_url": "ftp://x.example"}, {"base_url": "https://u:p@x.example"}],
        "expires_at": [{"expires_at": "2030-01-01T00:00:00"}],
        "nickname": [{"nickname": "x"}],
    }
    for field, bodies in cases.items():
        for body in bodies:
            doc = {"name": "a", "platform": "openai", "groups": ["g"], "credentials": {"k": "v"}}
            doc.update(body)
            with pytest.raises(ValidationFailed) as info:
                convert(doc, AccountCreate)
            assert info.value.errors[0].field == field, (body, info.value.errors)
    with pytest.raises(ValidationFailed) as info:
        convert({"name": "a", "platform": "openai", "groups": ["g"]}, AccountCreate)
    assert info.value.errors[0] == ("credentials", "required")
    with pytest.raises(ValidationFailed) as info:
        convert({"name": None}, AccountPatch)
    assert info.value.errors[0].field == "name"
    ok = convert({"expires_at": "2030-01-01T00:00:00Z"}, AccountPatch)
    assert ok.changes() == {"expires_at": datetime(2030, 1, 1, tzinfo=UTC)}
