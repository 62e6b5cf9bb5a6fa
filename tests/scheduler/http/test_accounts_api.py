"""Admin accounts API over real HTTP against a daemon with real PostgreSQL and Redis."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio

from accounts.crypto import Cipher, CryptoConfig, generate_key
from accounts.db import Database
from accounts.errors import ConfigError, NameTaken
from accounts.inputs import AccountCreate
from accounts.repository import AccountRepository
from accounts.validation import convert
from scheduler.core.config import Config
from scheduler.daemon import Daemon

from ...support import (
    CRYPTO_KEY,
    GATEWAY_TOKEN,
    DaemonProcess,
    admin_client,
    config_dict,
    make_config,
    open_daemon,
)

BASE = "/v1/admin/accounts"
# Shaped unlike any known key format, so the log redactor's patterns cannot hide a leak.
SECRET = "rt_" + "s3cr3t" * 6 + "LAST"


def body(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "primary",
        "platform": "openai",
        "groups": ["default"],
        "models": ["gpt-4o*"],
        "concurrency": 3,
        "credentials": {"api_key": SECRET, "org": "org-1"},
    }
    doc.update(fields)
    return doc


def assert_masked(view: dict[str, Any]) -> None:
    assert view["credentials"] == {"api_key": "****LAST", "org": "****"}
    assert view["credentials_readable"] is True
    assert "credentials_enc" not in view


async def test_crud_versions_and_masking(config: Config, db: Database) -> None:
    with trio.fail_after(30):
        async with open_daemon(config) as (_daemon, url), admin_client(url) as http:
            r = await http.post(BASE, json=body())
            assert r.status_code == 201, r.text
            created = r.json()
            assert_masked(created)
            assert r.headers["etag"] == '"1"'
            assert r.headers["location"] == f"{BASE}/{created['id']}"
            one = f"{BASE}/{created['id']}"
            assert SECRET not in r.text

            r = await http.get(one)
            assert r.status_code == 200 and r.json() == created and SECRET not in r.text

            r = await http.patch(one, json={"priority": 5}, headers={"if-match": '"1"'})
            assert r.status_code == 200 and r.json()["version"] == 2 and r.headers["etag"] == '"2"'
            r = await http.patch(one, json={"priority": 6, "version": 2})
            assert r.status_code == 200 and r.json()["priority"] == 6

            # No version at all: 428; a stale one: 409 with the current version.
            r = await http.patch(one, json={"priority": 7})
            assert r.status_code == 428 and r.json()["error"]["code"] == "precondition_required"
            r = await http.patch(one, json={"priority": 7}, headers={"if-match": "1"})
            assert r.status_code == 409
            assert r.json()["error"]["details"]["current_version"] == 3
            # Both given: both must be the stored version (two preconditions), else 409.
            r = await http.patch(one, json={"priority": 7, "version": 2}, headers={"if-match": "3"})
            assert r.status_code == 409 and r.json()["error"]["details"]["current_version"] == 3
            for bad in (b"abc", b"0", b"\xb2", b"3x"):  # "²" passes str.isdigit, not int()
                r = await http.patch(one, json={"priority": 7}, headers={"if-match": bad})
                assert r.status_code == 422, bad
                assert r.json()["error"]["details"]["errors"][0]["field"] == "If-Match"
            assert (await http.get(one)).json()["priority"] == 6
            # An empty merge patch is a no-op (version checked, not bumped).
            r = await http.patch(one, json={}, headers={"if-match": '"3"'})
            assert r.status_code == 200 and r.json()["version"] == 3
            assert (await http.patch(one, json={}, headers={"if-match": "2"})).status_code == 409

            r = await http.post(one + "/disable")
            assert r.status_code == 200 and r.json()["status"] == "disabled"
            r = await http.get(BASE, params={"status": "disabled"})
            assert [a["id"] for a in r.json()["items"]] == [created["id"]]
            assert_masked(r.json()["items"][0])
            r = await http.get(BASE, params={"status": "active"})
            assert r.json() == {"items": [], "next_cursor": None}

            r = await http.delete(one, headers={"if-match": "1"})
            assert r.status_code == 409
            r = await http.delete(one)
            assert r.status_code == 204
            for method in ("GET", "DELETE", "PATCH"):
                r = await http.request(method, one, json={"priority": 1, "version": 1})
                assert r.status_code == 404, method
            assert (await http.get(f"{BASE}/not-a-uuid")).status_code == 404


async def test_list_pages_and_query_validation(config: Config, db: Database) -> None:
    with trio.fail_after(30):
        async with open_daemon(config) as (_daemon, url), admin_client(url) as http:
            for i in range(7):
                r = await http.post(BASE, json=body(name=f"a{i}", groups=[f"g{i % 2}"]))
                assert r.status_code == 201
            seen: list[str] = []
            params: dict[str, Any] = {"limit": 3}
            while True:
                page = (await http.get(BASE, params=params)).json()
                seen += [a["id"] for a in page["items"]]
                if page["next_cursor"] is None:
                    break
                params["cursor"] = page["next_cursor"]
            assert len(seen) == len(set(seen)) == 7
            r = await http.get(BASE, params={"group": "g1", "platform": "openai"})
            assert len(r.json()["items"]) == 3
            for bad, field in (
                ({"limit": "0"}, "limit"),
                ({"limit": "x"}, "limit"),
                ({"platform": "myspace"}, "platform"),
                ({"status": "sleeping"}, "status"),
                ({"cursor": "nope"}, "cursor"),
                ({"colour": "red"}, "colour"),
            ):
                r = await http.get(BASE, params=bad)
                assert r.status_code == 422, bad
                assert r.json()["error"]["details"]["errors"][0]["field"] == field


async def test_auth_scopes(config: Config, db: Database) -> None:
    """No token and a wrong token: 401; the gateway token on admin routes: 403."""
    with trio.fail_after(30):
        async with open_daemon(config) as (_daemon, url):
            routes = [
                ("GET", BASE),
                ("POST", BASE),
                ("GET", f"{BASE}/00000000-0000-0000-0000-000000000000"),
                ("PATCH", f"{BASE}/00000000-0000-0000-0000-000000000000"),
                ("POST", f"{BASE}/00000000-0000-0000-0000-000000000000/disable"),
                ("DELETE", f"{BASE}/00000000-0000-0000-0000-000000000000"),
            ]
            async with httpx.AsyncClient(base_url=url, timeout=10) as anon:
                for method, path in routes:
                    assert (await anon.request(method, path)).status_code == 401
                    wrong = {"authorization": "Bearer not-the-token-at-all-xx"}
                    assert (await anon.request(method, path, headers=wrong)).status_code == 401
            async with admin_client(url, GATEWAY_TOKEN) as gateway:
                for method, path in routes:
                    r = await gateway.request(method, path, json=body())
                    assert r.status_code == 403, (method, path)
            async with admin_client(url) as http:
                assert (await http.get(BASE)).json()["items"] == []


async def test_invalid_bodies_answer_422_and_change_nothing(
    pg_dsn: str, redis_url: str, redis_prefix: str, db: Database
) -> None:
    """Bad inputs tried: concurrency -1, thresholds 0 and 1.5, unknown platform, bad model
    pattern, bad group name, ftp base_url, naive expires_at, unknown field, missing
    credentials, a non-JSON body (400) and a body over the limit (413), on create and patch."""
    config = make_config(pg_dsn, redis_url, redis_prefix, http={"max_body_bytes": 8192})
    cases: list[tuple[dict[str, Any], str]] = [
        ({"concurrency": -1}, "concurrency"),
        ({"concurrency": 0}, "concurrency"),
        ({"auto_pause_5h_threshold": 0}, "auto_pause_5h_threshold"),
        ({"auto_pause_7d_threshold": 1.5}, "auto_pause_7d_threshold"),
        ({"platform": "myspace"}, "platform"),
        ({"models": ["gpt 4o"]}, "models[0]"),
        ({"groups": ["has space"]}, "groups[0]"),
        ({"base_url": "ftp://files.example"}, "base_url"),
        ({"expires_at": "2030-01-01T00:00:00"}, "expires_at"),
        ({"nickname": "x"}, "nickname"),
    ]
    with trio.fail_after(30):
        async with open_daemon(config) as (_daemon, url), admin_client(url) as http:
            ok = (await http.post(BASE, json=body())).json()
            one = f"{BASE}/{ok['id']}"
            for change, field in cases:
                r = await http.post(BASE, json=body(**change))
                assert r.status_code == 422, (change, r.text)
                errors = r.json()["error"]["details"]["errors"]
                assert errors[0]["field"] == field and errors[0]["reason"], errors
                r = await http.patch(one, json=change, headers={"if-match": "1"})
                assert r.status_code == 422, (change, r.text)
                assert r.json()["error"]["details"]["errors"][0]["field"] == field
            no_creds = body()
            del no_creds["credentials"]
            r = await http.post(BASE, json=no_creds)
            assert r.status_code == 422
            assert r.json()["error"]["details"]["errors"][0] == {
                "field": "credentials",
                "reason": "required",
            }
            r = await http.post(
                BASE, content=b"{not json", headers={"content-type": "application/json"}
            )
            assert r.status_code == 400
            big = body(credentials={"api_key": "x" * 10_000})
            assert (await http.post(BASE, json=big)).status_code == 413
            r = await http.patch(one, json={"name": "y" * 9000}, headers={"if-match": "1"})
            assert r.status_code == 413
            items = (await http.get(BASE)).json()["items"]
            assert [a["id"] for a in items] == [ok["id"]] and items[0]["version"] == 1


async def test_names_are_unique_nul_refused_content_type_and_whole_floats(
    config: Config, db: Database
) -> None:
    """Bad inputs tried: a second account named like the first (create and rename), an
    import naming one account twice, NUL in name and base_url (create and patch), a
    text/plain and a form body. 2.0 for an integer field is an integer (JSON Schema)."""
    with trio.fail_after(30):
        async with open_daemon(config) as (_daemon, url), admin_client(url) as http:
            first = (await http.post(BASE, json=body(name="main"))).json()
            r = await http.post(BASE, json=body(name="main"))
            assert r.status_code == 409 and r.json()["error"]["code"] == "name_taken"
            assert r.json()["error"]["details"]["field"] == "name"
            second = (await http.post(BASE, json=body(name="spare", concurrency=2.0))).json()
            assert second["concurrency"] == 2 and isinstance(second["concurrency"], int)
            r = await http.patch(
                f"{BASE}/{second['id']}", json={"name": "main"}, headers={"if-match": "1"}
            )
            assert r.status_code == 409 and r.json()["error"]["code"] == "name_taken"
            for field, value in (("name", "a\u0000b"), ("base_url", "https://x.example/\u0000")):
                r = await http.post(BASE, json=body(**{"name": "third", field: value}))
                assert r.status_code == 422, (field, r.text)
                assert r.json()["error"]["details"]["errors"][0]["field"] == field
                r = await http.patch(
                    f"{BASE}/{first['id']}", json={field: value}, headers={"if-match": "1"}
                )
                assert r.status_code == 422, (field, r.text)
                assert r.json()["error"]["details"]["errors"][0]["field"] == field
            for content_type in ("text/plain", "application/x-www-form-urlencoded"):
                r = await http.post(
                    BASE,
                    content=json.dumps(body(name="fourth")).encode(),
                    headers={"content-type": content_type},
                )
                assert r.status_code == 415, (content_type, r.text)
                assert r.json()["error"]["code"] == "unsupported_media_type"
            r = await http.post(
                BASE,
                content=json.dumps(body(name="fifth")).encode(),
                headers={"content-type": "application/json; charset=utf-8"},
            )
            assert r.status_code == 201
            names = sorted(a["name"] for a in (await http.get(BASE)).json()["items"])
            assert names == ["fifth", "main", "spare"]


async def test_duplicate_names_in_an_import(db: Database) -> None:
    repo = AccountRepository(db, Cipher(CryptoConfig(keys=[CRYPTO_KEY])))
    rows = [convert(body(name=n), AccountCreate) for n in ("x", "y", "x")]
    with pytest.raises(NameTaken) as info:
        await repo.create_many(rows)
    assert info.value.details["row"] == 3 and info.value.status == 409
    assert await db.fetchval("SELECT count(*) FROM accounts") == 0


async def test_openapi_documents_the_routes(config: Config) -> None:
    with trio.fail_after(30):
        async with open_daemon(config) as (_daemon, url), admin_client(url) as http:
            doc = (await http.get("/openapi.json")).json()
            assert set(doc["paths"][BASE]) == {"get", "post"}
            assert set(doc["paths"][BASE + "/{id}"]) == {"get", "patch", "delete"}
            assert set(doc["paths"][BASE + "/{id}/disable"]) == {"post"}


@pytest.mark.slow
async def test_credentials_never_logged(
    pg_dsn: str, redis_url: str, redis_prefix: str, db: Database
) -> None:
    """A subprocess daemon at debug level sees secrets in creates, patches and bad requests;
    its whole log output must not contain any of them."""
    second = "tok." + "Zz9" * 12 + "TAIL"
    data = config_dict(pg_dsn, redis_url, redis_prefix, log={"level": "debug", "format": "json"})
    proc = DaemonProcess(data)
    try:
        url = await proc.wait_ready()
        with trio.fail_after(30):
            async with admin_client(url) as http:
                r = await http.post(BASE, json=body())
                assert r.status_code == 201
                one = f"{BASE}/{r.json()['id']}"
                r = await http.patch(
                    one, json={"credentials": {"api_key": second}}, headers={"if-match": "1"}
                )
                assert r.status_code == 200 and second not in r.text
                r = await http.get(one)  # the patched credentials, read back masked
                assert r.status_code == 200 and r.json()["credentials"] == {"api_key": "****TAIL"}
                assert second not in r.text and SECRET not in r.text
                r = await http.get(BASE)
                assert r.status_code == 200, r.text
                [listed] = [a for a in r.json()["items"] if a["id"] == one.rsplit("/", 1)[1]]
                assert listed["credentials"] == {"api_key": "****TAIL"}
                assert second not in r.text and SECRET not in r.text
                r = await http.post(BASE, json=body(concurrency=-1))
                assert r.status_code == 422 and SECRET not in r.text
                r = await http.post(BASE, json={"credentials": {"api_key": second}, "x": 1})
                assert r.status_code == 422 and second not in r.text
                # A secret in a place msgspec would quote: the field name of an unknown key.
                r = await http.post(BASE, json={**body(), second: 1})
                assert r.status_code == 422
    finally:
        proc.terminate()
        code = await proc.wait()
        if proc.proc.stdout is not None:
            proc.proc.stdout.close()
    assert code == 0
    output = proc.output()
    assert '"event": "ready"' in output
    assert SECRET not in output and second not in output


def leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaves(sub)]
    return [exc]


async def test_daemon_refuses_to_start_without_a_key_for_stored_credentials(
    pg_dsn: str, redis_url: str, redis_prefix: str, db: Database
) -> None:
    """Keys tried: none at all, and one that is not the key the rows were written with."""
    repo = AccountRepository(db, Cipher(CryptoConfig(keys=[CRYPTO_KEY])))
    await repo.create(convert(body(), AccountCreate))
    for keys in ([], [generate_key()]):
        config = make_config(pg_dsn, redis_url, redis_prefix, crypto={"keys": keys})
        with trio.fail_after(30), pytest.raises(BaseExceptionGroup) as info:
            await Daemon(config, env={}).run()
        [error] = leaves(info.value)
        assert isinstance(error, ConfigError) and error.key == "crypto.keys", error
        assert SECRET not in str(error)
