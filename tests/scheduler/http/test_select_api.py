"""POST /v1/select, release, renew and GET /v1/admin/explain on a real daemon.

Bad input tried (each a 4xx, nothing changed): unknown platform, unknown group,
missing model, negative wait, unknown field, malformed / unknown / already
released lease id, renew with a negative ttl, malformed header names and values
in a release, an admin token on the gateway route.
"""

from __future__ import annotations

from datetime import datetime

import httpx
import trio

from accounts.crypto import Cipher, CryptoConfig, generate_key
from accounts.model import Platform
from snapshot.keys import Bucket
from tests.support import GATEWAY_TOKEN, admin_client, open_daemon

SECRET = "sk-test-" + "k" * 24


def gateway(url: str) -> httpx.AsyncClient:
    return admin_client(url, token=GATEWAY_TOKEN)


async def create_accounts(url: str, n: int = 2, **kw: object) -> list[dict]:
    out = []
    async with admin_client(url) as admin:
        for i in range(n):
            body = {
                "name": f"acc{i}",
                "platform": "openai",
                "groups": ["g1"],
                "concurrency": 1,
                "priority": i,
                "base_url": "https://api.example.com",
                "credentials": {"api_key": f"{SECRET}{i}"},
            }
            body.update(kw)
            r = await admin.post("/v1/admin/accounts", json=body)
            assert r.status_code in (200, 201), r.text
            out.append(r.json())
    return out


SELECT = {"group": "g1", "platform": "openai", "model": "gpt-4o"}


async def test_select_release_renew_and_503(config, db):
    with trio.fail_after(40):
        async with open_daemon(config) as (daemon, url):
            await create_accounts(url, 1)
            async with gateway(daemon.data_urls[0]) as gw:
                r = await gw.post("/v1/select", json=SELECT)
                assert r.status_code == 200, r.text
                got = r.json()
                assert got["account"]["credentials"] == {"api_key": SECRET + "0"}
                assert got["account"]["base_url"] == "https://api.example.com"
                assert got["attempts"] == 1 and got["sticky"] is False
                lease = got["lease_id"]
                r = await gw.post(f"/v1/leases/{lease}/renew", json={"ttl_s": 600})
                assert r.status_code == 200
                renewed = datetime.fromisoformat(r.json()["expires_at"])
                assert renewed > datetime.fromisoformat(got["lease_expires_at"])
                r = await gw.post("/v1/select", json=SELECT)
                assert r.status_code == 503
                assert r.json()["error"]["code"] == "no_available_accounts"
                assert r.json()["error"]["details"]["exclusions"] == {"full": 1}
                assert int(r.headers["retry-after"]) >= 1
                r = await gw.post(f"/v1/leases/{lease}/release", json={"status": 200})
                assert r.status_code == 200, r.text
                assert r.json()["lease"] == "released"
                # A second (late) report: accepted, and the answer says the lease was gone.
                r = await gw.post(f"/v1/leases/{lease}/release", json={"status": 200})
                assert r.status_code == 200 and r.json()["lease"] == "gone"
                r = await gw.post(f"/v1/leases/{lease}/renew", json={})
                assert r.status_code == 404
            async with admin_client(url) as admin:
                r = await admin.get("/v1/admin/explain", params=SELECT)
                assert r.status_code == 200, r.text
                assert r.json()["candidates"][0]["excluded"] is None
                metrics = (await admin.get("/metrics")).text
                line = 'stationmaster_selections_total{outcome="immediate",path="pool"} 1.0'
                assert line in metrics


async def test_bad_input_is_4xx_and_changes_nothing(config, db):
    with trio.fail_after(40):
        async with open_daemon(config) as (daemon, url):
            await create_accounts(url, 1)
            async with gateway(daemon.data_urls[0]) as gw:
                cases = [
                    ({**SELECT, "platform": "nope"}, 422, "platform"),
                    ({"group": "g1", "platform": "openai"}, 422, "model"),
                    ({**SELECT, "wait_ms": -1}, 422, "wait_ms"),
                    ({**SELECT, "surprise": 1}, 422, "surprise"),
                ]
                for body, status, field in cases:
                    r = await gw.post("/v1/select", json=body)
                    assert r.status_code == status, (body, r.text)
                    assert r.json()["error"]["details"]["errors"][0]["field"] == field
                r = await gw.post("/v1/select", json={**SELECT, "group": "unknown"})
                assert r.status_code == 404
                r = await gw.post("/v1/select", json=SELECT)
                lease = r.json()["lease_id"]
                bad_headers = [{"bad name": "x"}, {"retry-after": "1\r\nx: y"}, {"a": 1}]
                for headers in bad_headers:
                    r = await gw.post(
                        f"/v1/leases/{lease}/release", json={"status": 429, "headers": headers}
                    )
                    assert r.status_code == 422, r.text
                r = await gw.post(f"/v1/leases/{lease}/renew", json={"ttl_s": -5})
                assert r.status_code == 422
                r = await gw.post("/v1/leases/not-a-lease/release", json={"status": 200})
                assert r.status_code == 422
                platform, group, _account, _ = lease.split("~")
                r = await gw.post(
                    f"/v1/leases/{platform}~{group}~nobody~00/release", json={"status": 429}
                )
                assert r.status_code == 404
                # Nothing changed: the lease is still held, so the account is still full.
                r = await gw.post("/v1/select", json=SELECT)
                assert r.status_code == 503
                r = await gw.post(f"/v1/leases/{lease}/release", json={"status": 200})
                assert r.status_code == 200
            async with admin_client(daemon.data_urls[0]) as admin:
                r = await admin.post("/v1/select", json=SELECT)
                assert r.status_code == 403
            async with admin_client(url) as admin:
                r = await admin.get("/v1/admin/explain", params={"group": "g1"})
                assert r.status_code == 422
                # Nothing the bad input tried changed anything: no rate limit from the
                # refused 429 reports or the made-up lease, no lease left held.
                r = await admin.get("/v1/admin/explain", params=SELECT)
                [candidate] = r.json()["candidates"]
                assert candidate["excluded"] is None
                assert candidate["state"]["leases"] == 0
                assert candidate["state"]["rate_limited_until"] is None


async def test_a_failed_answer_gives_the_lease_back(config, db):
    """Issue 10 item 7: the account's stored credential opens with no configured key (a
    rotation gone wrong). The select takes the lease, cannot build the answer, and must
    give the lease back before answering the error: the one slot is free at once."""
    with trio.fail_after(40):
        async with open_daemon(config) as (daemon, url):
            [account] = await create_accounts(url, 1)
            foreign = Cipher(CryptoConfig(keys=[generate_key()])).encrypt({"api_key": SECRET})
            await db.execute(
                "UPDATE accounts SET credentials_enc = $1 WHERE id = $2", foreign, account["id"]
            )
            async with admin_client(url) as admin:
                # "busy": the builder holds the bucket's lock (the account's creation may
                # still be building, from the row as it was): ask again until a version
                # built from the updated row is active.
                while True:
                    r = await admin.post("/v1/admin/buckets/rebuild", json={"bucket": "g1/openai"})
                    [result] = r.json()["results"]
                    if result["outcome"] == "activated":
                        break
                    assert result["outcome"] == "busy", r.text
                    await trio.sleep(0.05)
                version = result["version"]
            view = daemon.services.schedule.view
            # Not held yet, the first select loads the new version; held, wait for it.
            while (held := view.get(Bucket("g1", Platform.OPENAI))) and held.version < version:
                await trio.sleep(0.01)
            leases = daemon.services.selector.runtime.keys.leases("openai", account["id"])
            async with gateway(daemon.data_urls[0]) as gw:
                for _ in range(2):  # the second finds the slot free again, not "full"
                    r = await gw.post("/v1/select", json=SELECT)
                    assert r.status_code == 500, r.text
                    assert r.json()["error"]["code"] == "credentials_unreadable"
                    assert SECRET not in r.text
                    assert await daemon.services.redis.client.zcard(leases) == 0
