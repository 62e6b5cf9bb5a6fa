"""The data plane on a live daemon: which routes each port serves, and SIGTERM under load.

The wire's framing rules (pipelining, chunked, 100-continue, CL+TE, duplicate CL,
431, slow loris, idle timeout, a client closing mid-body, drain step by step)
are raw-socket tests of the server alone in ``test_wire.py``; here the whole
daemon runs, the Endpoint table is split over two ports, and SIGTERM arrives
while many keep-alive clients hammer the data port.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import trio

from accounts.db import Database
from scheduler.cli.running import run_until_signal
from scheduler.core.health import Phase
from scheduler.daemon import Daemon
from scheduler.http.endpoints import Call, Endpoint, Plane, Scope
from scheduler.http.planes import all_endpoints
from snapshot.redis import RedisStore

from ...support import GATEWAY_TOKEN, admin_client, make_config, open_daemon
from .test_wire import Raw, post

SELECT = {"group": "g1", "platform": "openai", "model": "gpt-4o"}


def test_every_gateway_route_is_on_the_data_plane_and_admin_routes_are_not() -> None:
    for e in all_endpoints():
        if e.scope is Scope.GATEWAY:
            assert e.planes == (Plane.DATA,), e.path
        elif e.scope is Scope.ADMIN or e.path == "/metrics":
            assert e.planes == (Plane.CONTROL,), e.path
        else:  # the probes and the document: on both ports
            assert set(e.planes) == {Plane.DATA, Plane.CONTROL}, e.path


async def test_each_port_serves_its_own_routes(config, db: Database) -> None:
    """A gateway route on the control port and an admin route on the data port are 404
    (not 403: the route is not there); the probes answer on both."""
    with trio.fail_after(40):
        async with open_daemon(config) as (daemon, url):
            data = daemon.data_urls[0]
            async with admin_client(url) as admin, admin_client(data, GATEWAY_TOKEN) as gw:
                r = await admin.post("/v1/select", json=SELECT)
                assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
                r = await gw.get("/v1/admin/accounts")
                assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
                assert (await gw.get("/metrics")).status_code == 404
                for base in (admin, gw):
                    assert (await base.get("/livez")).status_code == 200
                    ready = await base.get("/readyz")
                    assert ready.status_code == 200 and ready.json()["phase"] == "running"
                r = await gw.post("/v1/select", json=SELECT)
                # The handler's own 404 (no account in the bucket), not the router's.
                assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_bucket"
                # The wire's own refusals are the project's error body too.
                r = await gw.post("/v1/select", content=b"{" * 2_000_000)
                assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


class _Load:
    """Keep-alive clients in a closed loop against the data port while SIGTERM arrives.

    Two kinds: ``/test/work`` clients, whose requests the handler records by id (and
    parks once ``hold`` is set, so some are in flight when the drain starts), and
    gateway clients doing real ``/v1/select`` + release, whose leases tell whether a
    select the server handled ever went unanswered.
    """

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.port = 0
        self.handled: set[str] = set()
        self.answered: set[str] = set()
        self.closing: set[str] = set()  # answered with "connection: close"
        self.unanswered: list[str] = []  # sent; the connection closed without a byte
        self.truncated: list[str] = []
        self.during_drain = 0  # answers read while the daemon was draining
        self.hold = False
        self.parked: set[str] = set()
        self.enough_parked = trio.Event()
        self.gate = trio.Event()
        self.warm = trio.Event()
        self.cycles = 0  # select + release round trips completed
        self.held_leases: set[str] = set()  # selected; the release went unanswered

    def endpoint(self) -> Endpoint:
        async def work(call: Call) -> dict[str, str]:
            rid = call.headers["x-id"]
            if self.hold:
                self.parked.add(rid)
                if len(self.parked) >= 4:
                    self.enough_parked.set()
                await self.gate.wait()
            self.handled.add(rid)
            return {"id": rid}

        return Endpoint("POST", "/test/work", work, "test only", planes=(Plane.DATA,))

    def _answered(self, headers: dict[str, str]) -> None:
        if self.daemon.health.phase is Phase.DRAINING:
            self.during_drain += 1

    async def _exchange(self, raw: Raw, request: bytes) -> tuple[int, dict[str, str], bytes]:
        await raw.send(request)
        return await raw.response()

    async def work_client(self, c: int) -> None:
        n = 0
        while True:
            try:
                raw = await Raw.connect(self.port)
            except OSError:
                return  # refused: the listener is closed
            try:
                while True:
                    n += 1
                    rid = f"{c}-{n}"
                    try:
                        status, headers, body = await self._exchange(
                            raw, post("/test/work", b"{}", f"X-Id: {rid}")
                        )
                    except EOFError as exc:
                        (self.truncated if "mid-body" in str(exc) else self.unanswered).append(rid)
                        break
                    assert status == 200 and json.loads(body)["id"] == rid
                    self.answered.add(rid)
                    self._answered(headers)
                    if headers.get("connection") == "close":
                        self.closing.add(rid)
                        break
                    if len(self.answered) >= 200 and self.cycles >= 50:
                        self.warm.set()
            except trio.BrokenResourceError:
                self.unanswered.append(rid)
            finally:
                await raw.aclose()

    async def gateway_client(self) -> None:
        auth = f"Authorization: Bearer {GATEWAY_TOKEN}"
        select = post("/v1/select", json.dumps(SELECT).encode(), auth)
        while True:
            try:
                raw = await Raw.connect(self.port)
            except OSError:
                return
            try:
                while True:
                    status, headers, body = await self._exchange(raw, select)
                    assert status == 200, body
                    self._answered(headers)
                    lease = json.loads(body)["lease_id"]
                    if headers.get("connection") == "close":
                        self.held_leases.add(lease)  # never released: still held
                        break
                    self.held_leases.add(lease)
                    release = post(f"/v1/leases/{lease}/release", b'{"status": 200}', auth)
                    status, headers, body = await self._exchange(raw, release)
                    assert status == 200 and json.loads(body)["lease"] == "released", body
                    self.held_leases.discard(lease)
                    self._answered(headers)
                    self.cycles += 1
                    if headers.get("connection") == "close":
                        break
            except (EOFError, trio.BrokenResourceError):
                pass  # closed with no answer: the request was never read (checked below)
            finally:
                await raw.aclose()


async def _wait_refused(port: int) -> None:
    while True:
        try:
            raw = await Raw.connect(port)
        except OSError:
            return
        await raw.aclose()
        await trio.sleep(0.01)


@pytest.mark.slow
async def test_sigterm_under_load_loses_no_request(
    pg_dsn: str, redis_url: str, redis_prefix: str, db: Database, redis: RedisStore
) -> None:
    """SIGTERM while 16 work clients and 8 gateway clients hammer the data port over
    keep-alive connections: requests in flight finish (told ``Connection: close``),
    every request the server read is answered in full, every request left unanswered
    was never read, and no select the server handled leaves a lease nobody knows of."""
    config = make_config(
        pg_dsn,
        redis_url,
        redis_prefix,
        http={"drain_delay_s": 0.3, "drain_timeout_s": 20, "keep_alive_timeout_s": 60},
    )
    daemon = Daemon(config, env={})
    load = _Load(daemon)
    daemon.extra_endpoints.append(load.endpoint())
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def run() -> None:
                await run_until_signal(daemon)
                done.set()

            nursery.start_soon(run)
            while daemon.health.phase is not Phase.RUNNING:
                await trio.sleep(0.01)
            load.port = int(daemon.data_urls[0].rsplit(":", 1)[1])
            account = await _one_account(daemon.urls[0], daemon.data_urls[0])
            leases_key = daemon.services.selector.runtime.keys.leases("openai", account)
            async with trio.open_nursery() as clients:
                for c in range(16):
                    clients.start_soon(load.work_client, c)
                for _ in range(8):
                    clients.start_soon(load.gateway_client)
                await load.warm.wait()
                load.hold = True
                await load.enough_parked.wait()
                os.kill(os.getpid(), signal.SIGTERM)
                await _wait_refused(load.port)
                assert not done.is_set()
                load.gate.set()
            await done.wait()
    assert len(load.parked) >= 4 and load.parked <= load.answered  # in flight: finished
    assert load.parked <= load.closing  # ... and told the connection ends
    assert load.handled == load.answered  # read by the server <=> answered in full
    assert not load.truncated
    assert not (set(load.unanswered) & load.handled)  # unanswered = never read
    assert load.during_drain > 0  # the load really ran into the drain
    assert daemon.health.phase is Phase.STOPPED
    # Every select the server handled reached its client, every release it handled
    # was answered: the leases still held are exactly those whose release the
    # clients never got to send (or never got read) before their connection closed.
    assert await redis.client.zcard(leases_key) == len(load.held_leases)


async def _one_account(url: str, data_url: str) -> str:
    """An account of bucket g1/openai with room for every client; once selectable."""
    async with admin_client(url) as admin:
        r = await admin.post(
            "/v1/admin/accounts",
            json={
                "name": "load",
                "platform": "openai",
                "groups": ["g1"],
                "concurrency": 1000,
                "credentials": {"api_key": "sk-load-" + "x" * 24},
            },
        )
        assert r.status_code == 201, r.text
        account: str = r.json()["id"]
    async with admin_client(data_url, GATEWAY_TOKEN) as gw:
        while (r := await gw.post("/v1/select", json=SELECT)).status_code != 200:
            await trio.sleep(0.05)
        r = await gw.post(f"/v1/leases/{r.json()['lease_id']}/release", json={"status": 200})
        assert r.status_code == 200, r.text
    return account
