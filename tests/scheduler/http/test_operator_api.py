"""The API says exactly what it does (issue 15): on a real daemon.

Covers: a model no account serves is a 404 listing what is served (503 only
when some account could serve it); renew never shortens a lease and reports its
cap, including the lifetime cap (a setting); OpenAI x-ratelimit-* headers on a
429; explain's real reasons; RFC 3339 times with ttl_ms; 405 with Allow; no
307 on a trailing slash; /openapi.json without a token; what the published
schema states (required explain parameters, integer limit, enums, patterns,
If-Match, uniqueItems, the settings patch, renew bounds, rebuild without body).

Bad input tried: a renew TTL over the published bound (1e9), a wrong method on
three routes, a trailing slash.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import httpx
import trio

from scheduler.selection.store import LEASE_ID_PATTERN
from tests.support import admin_client, open_daemon

from .test_select_api import SELECT, create_accounts, gateway


def ts(value: str) -> float:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value  # RFC 3339 carries its offset
    return parsed.timestamp()


async def test_unknown_model_is_404_listing_served_models_and_503_only_when_busy(config, db):
    with trio.fail_after(40):
        async with open_daemon(config) as (daemon, url):
            await create_accounts(url, 1, models=["gpt-4o*"])
            async with admin_client(url) as admin:
                r = await admin.post(
                    "/v1/admin/accounts",
                    json={
                        "name": "o3-only",
                        "platform": "openai",
                        "groups": ["g1"],
                        "models": ["o3"],
                        "credentials": {"api_key": "sk-o3-only-xxxxxxxxxxxx"},
                    },
                )
                assert r.status_code == 201, r.text
                # Until this instance's snapshot holds both accounts (the rebuild is async).
                while True:
                    answer = (await admin.get("/v1/admin/explain", params=SELECT)).json()
                    if len(answer["candidates"]) == 2:
                        break
                    await trio.sleep(0.05)
            async with gateway(daemon.data_urls[0]) as gw:
                # A long wait allowed: a model nobody serves must not wait at all.
                r = await gw.post(
                    "/v1/select", json={**SELECT, "model": "claude-3", "wait_ms": 60_000}
                )
                assert r.status_code == 404, r.text
                error = r.json()["error"]
                assert error["code"] == "model_not_served"
                assert error["details"]["served_models"] == ["gpt-4o*", "o3"]
                assert "retry-after" not in r.headers
                first = await gw.post("/v1/select", json=SELECT)
                assert first.status_code == 200
                r = await gw.post("/v1/select", json=SELECT)  # gpt-4o: served, but full now
                assert r.status_code == 503 and r.json()["error"]["code"] == "no_available_accounts"


async def test_renew_never_shortens_reports_the_cap_and_the_lifetime_cap(config, db):
    with trio.fail_after(40):
        async with open_daemon(config) as (daemon, url):
            await create_accounts(url, 2, concurrency=2)
            async with gateway(daemon.data_urls[0]) as gw:
                got = (await gw.post("/v1/select", json=SELECT)).json()
                assert got["ttl_ms"] == 300_000  # leases.ttl_s, from the grant (Redis clock)
                granted = ts(got["lease_expires_at"]) - got["ttl_ms"] / 1000
                renew = f"/v1/leases/{got['lease_id']}/renew"
                r = (await gw.post(renew, json={"ttl_s": 3000})).json()
                assert r["clamped_by"] is None and r["requested_ttl_ms"] == 3_000_000
                long_expiry = ts(r["expires_at"])
                # {} asks for leases.ttl_s (300 s): the lease keeps its later expiry.
                r = (await gw.post(renew, json={})).json()
                assert ts(r["expires_at"]) == long_expiry, r
                assert r["ttl_ms"] > 300_000 and r["clamped_by"] is None
                # A huge TTL is clamped and the answer says by what, and to what.
                r = (await gw.post(renew, json={"ttl_s": 5e5})).json()
                assert r["clamped_by"] == "max_ttl_s" and r["max_ttl_s"] == 3600
                assert r["ttl_ms"] <= 3_600_000 and r["requested_ttl_ms"] == 500_000_000
                longest = ts(r["expires_at"])
                assert ts(r["lifetime_ends_at"]) - granted == r["max_lifetime_s"] == 6 * 3600
                # Over the published bound: refused with the field, nothing changed.
                bad = await gw.post(renew, json={"ttl_s": 1e9})
                assert bad.status_code == 422
                assert bad.json()["error"]["details"]["errors"][0]["field"] == "ttl_s"
            async with admin_client(url) as admin:
                version = (await admin.get("/v1/admin/settings")).json()["version"]
                r = await admin.put(
                    "/v1/admin/settings",
                    json={"leases": {"max_lifetime_s": 1000}},
                    headers={"if-match": str(version)},
                )
                assert r.status_code == 200, r.text
            async with gateway(daemon.data_urls[0]) as gw:
                fresh = (await gw.post("/v1/select", json=SELECT)).json()
                start = ts(fresh["lease_expires_at"]) - fresh["ttl_ms"] / 1000
                r = (
                    await gw.post(f"/v1/leases/{fresh['lease_id']}/renew", json={"ttl_s": 3000})
                ).json()
                assert r["clamped_by"] == "max_lifetime_s", r
                assert abs(ts(r["expires_at"]) - (start + 1000)) < 0.002, r
                assert (
                    r["lifetime_ends_at"] == r["expires_at"]
                    or abs(ts(r["lifetime_ends_at"]) - ts(r["expires_at"])) < 0.002
                )
                # The older lease ran past the new cap already: never shortened.
                r = (await gw.post(renew, json={"ttl_s": 10})).json()
                assert ts(r["expires_at"]) == longest


async def test_openai_ratelimit_headers_and_explain_why(config, db):
    """A 429 with x-ratelimit-* headers: rate-limited until the reset of the family at 0
    (6m0s), not the default cool-down; explain says so, with the time."""
    with trio.fail_after(40):
        async with open_daemon(config) as (daemon, url):
            [acc] = await create_accounts(url, 1)
            async with gateway(daemon.data_urls[0]) as gw:
                got = (await gw.post("/v1/select", json=SELECT)).json()
                headers = {
                    "x-ratelimit-limit-requests": "500",
                    "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": "6m0s",
                    "x-ratelimit-limit-tokens": "30000",
                    "x-ratelimit-remaining-tokens": "29000",
                    "x-ratelimit-reset-tokens": "20ms",
                }
                r = await gw.post(
                    f"/v1/leases/{got['lease_id']}/release",
                    json={"status": 429, "headers": headers},
                )
                assert r.status_code == 200, r.text
                assert set(r.json()["effects"]) >= {"rate_limited", "rate_limit_headroom"}
            async with admin_client(url) as admin:
                answer = (await admin.get("/v1/admin/explain", params=SELECT)).json()
            [c] = answer["candidates"]
            assert c["excluded"] == "rate_limited"
            until = ts(c["state"]["rate_limited_until"])
            # The default cool-down is 60 s; the header said 6 minutes.
            assert 300 < until - ts(c["state"]["last_used_at"]) <= 361, c["state"]
            assert c["why"].startswith("rate-limited until "), c["why"]
            assert c["state"]["rate_limited_until"][:19] in c["why"]
            assert "threshold" not in c["why"]  # the quota text lives in `quota` now
            assert c["state"]["ratelimit_room"] == 0.0
            assert acc["id"] == c["id"]


async def test_protocol_details_405_allow_trailing_slash_and_public_openapi(config, db):
    with trio.fail_after(40):
        async with open_daemon(config) as (daemon, url):
            [acc] = await create_accounts(url, 1)
            for base in (url, daemon.data_urls[0]):  # both planes
                async with httpx.AsyncClient(base_url=base, timeout=10) as anon:
                    r = await anon.get("/openapi.json")
                    assert r.status_code == 200 and r.json()["openapi"].startswith("3.1")
                    assert (await anon.get("/livez/")).status_code == 404  # not a 307
            for base, method, path, allow in (
                (daemon.data_urls[0], "PUT", "/v1/select", "POST"),
                (daemon.data_urls[0], "GET", "/v1/leases/x/release", "POST"),
                (url, "POST", f"/v1/admin/accounts/{acc['id']}", "DELETE, GET, PATCH"),
                (url, "DELETE", "/v1/admin/settings", "GET, PUT"),
            ):
                async with admin_client(base) as admin:
                    r = await admin.request(method, path)
                    assert r.status_code == 405, (method, path)
                    assert r.headers["allow"] == allow
                    assert r.json()["error"]["code"] == "method_not_allowed"
            async with admin_client(url) as admin:
                r = await admin.post("/v1/admin/buckets/rebuild")  # no body at all
                assert r.status_code == 200, r.text
                # Found by schemathesis: a value of the wrong type followed by garbage was
                # a 500 (the whole-float retry decoded it again unguarded); now a 400.
                r = await admin.post(
                    "/v1/admin/buckets/rebuild",
                    content=b"1\xff\xfe",
                    headers={"content-type": "application/json"},
                )
                assert r.status_code == 400, r.text


async def test_published_schema_states_what_the_server_enforces(config, db):
    with trio.fail_after(40):
        async with open_daemon(config) as (daemon, url):
            docs = []
            for base in (url, daemon.data_urls[0]):  # each plane documents its own routes
                async with httpx.AsyncClient(base_url=base, timeout=10) as anon:
                    docs.append((await anon.get("/openapi.json")).json())
    paths = {**docs[0]["paths"], **docs[1]["paths"]}
    comps = {**docs[0]["components"]["schemas"], **docs[1]["components"]["schemas"]}

    def params(path: str, method: str) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in paths[path][method].get("parameters", [])}

    def resolve(schema: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in schema:
            return resolve(comps[schema["$ref"].rsplit("/", 1)[1]])
        return schema

    explain = params("/v1/admin/explain", "get")
    assert {n for n, p in explain.items() if p["required"]} == {"group", "platform", "model"}
    assert "pattern" in explain["group"]["schema"]
    listing = params("/v1/admin/accounts", "get")
    assert listing["limit"]["schema"]["type"] == "integer"
    assert listing["limit"]["schema"]["maximum"] == 500
    assert set(resolve(listing["status"]["schema"]["anyOf"][0])["enum"]) == {
        "active", "disabled", "error"
    }  # fmt: skip
    assert "openai" in resolve(listing["platform"]["schema"]["anyOf"][0])["enum"]
    patch = params("/v1/admin/accounts/{id}", "patch")
    assert patch["If-Match"]["in"] == "header" and patch["If-Match"]["required"] is False
    put = params("/v1/admin/settings", "put")
    assert put["If-Match"]["required"] is True
    settings_body = resolve(paths["/v1/admin/settings"]["put"]["requestBody"]["content"][
        "application/json"]["schema"])  # fmt: skip
    assert (
        settings_body["additionalProperties"] is False and "leases" in settings_body["properties"]
    )
    create = resolve(paths["/v1/admin/accounts"]["post"]["requestBody"]["content"][
        "application/json"]["schema"])  # fmt: skip
    assert create["properties"]["groups"]["uniqueItems"] is True
    assert create["properties"]["name"]["pattern"] == "^[^\\x00]*$"
    for route in ("/v1/leases/{lease_id}/release", "/v1/leases/{lease_id}/renew"):
        assert params(route, "post")["lease_id"]["schema"]["pattern"] == LEASE_ID_PATTERN
    renew_body = resolve(paths["/v1/leases/{lease_id}/renew"]["post"]["requestBody"]["content"][
        "application/json"]["schema"])  # fmt: skip
    ttl = renew_body["properties"]["ttl_s"]["anyOf"][0]
    assert ttl["exclusiveMinimum"] == 0 and ttl["maximum"] == 7 * 86400
    rebuild = paths["/v1/admin/buckets/rebuild"]["post"]
    assert rebuild["requestBody"]["required"] is False
    bucket = resolve(rebuild["requestBody"]["content"]["application/json"]["schema"])
    assert re.fullmatch(bucket["properties"]["bucket"]["anyOf"][0]["pattern"], "g1/openai")
    assert paths["/openapi.json"]["get"]["security"] == []
    select = paths["/v1/select"]["post"]["responses"]
    assert {"404", "415", "422", "503"} <= set(select)
    answer = resolve(select["200"]["content"]["application/json"]["schema"])
    assert answer["properties"]["lease_expires_at"]["format"] == "date-time"
    assert answer["properties"]["ttl_ms"]["type"] == "integer"
    release_doc = paths["/v1/leases/{lease_id}/release"]["post"]["description"]
    for header in (
        "retry-after-ms", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
        "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens", "x-ratelimit-limit-requests",
        "x-codex-primary-", "anthropic-ratelimit-unified-5h-",
    ):  # fmt: skip
        assert header in release_doc, header
