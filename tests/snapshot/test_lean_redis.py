"""The lean Redis client: script reload, timeouts, outages, reply matching, URLs.

Tests that flush scripts, need a password or a Unix socket run against a private
redis-server (``private_redis``), never the shared one. Outages go through
``tests/proxy.py``; a stall in the middle of a reply through ``_StallingProxy``.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from urllib.parse import quote

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from accounts.errors import StoreUnavailable
from snapshot._resp import CALLER, IDLE, TASK
from snapshot.lean_redis import (
    Endpoint,
    LeanScript,
    RedisReplyError,
    open_lean_redis,
)
from snapshot.redis import RedisConfig

from ..proxy import open_proxy
from ..support import _wait_port, free_port, proxy_target, redis_server_binary, via_proxy

ECHO = LeanScript.from_text(
    "redis.call('SET', KEYS[1], ARGV[1]) return {KEYS[1], ARGV[1], redis.call('GET', KEYS[1])}"
)
PASSWORD = "pw-" + secrets.token_hex(8)


# --- a private server --------------------------------------------------------------


class PrivateRedis:
    """A redis-server process of our own (password, Unix socket) that a test may kill and
    start again on the same port."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="smlean-"))
        self.port = free_port()
        self.socket_path = str(self.directory / "redis.sock")
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0, password: str = PASSWORD) -> str:
        return f"redis://:{password}@127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                redis_server_binary(),
                *("--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "no", "--dir", str(self.directory)),
                *("--requirepass", PASSWORD, "--unixsocket", self.socket_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port, self.proc)

    def kill(self) -> None:
        """kill -9: no goodbye to the clients, scripts and data gone."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="module")
def private_redis() -> Iterator[PrivateRedis]:
    """A server free to SCRIPT FLUSH, with a password and a Unix socket."""
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _config(url: str, **kw: float) -> RedisConfig:
    return RedisConfig(url=url, key_prefix="smlean:", **kw)  # type: ignore[arg-type]


# --- a proxy that stops forwarding in the middle of a reply ------------------------------


class _StallingProxy:
    """Forwards to Redis; once armed, passes ``limit`` more reply bytes, then holds the rest."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.limit: int | None = None
        self.stalled = trio.Event()  # the partial reply went out
        self.client_closed = trio.Event()  # a stalled connection's client hung up

    async def serve(self, nursery: trio.Nursery) -> None:
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        self.port = listener.socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, self._handle, [listener])

    async def _handle(self, client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream(*self.target)
        async with client, server, trio.open_nursery() as pipes:
            pipes.start_soon(self._upstream, client, server, pipes.cancel_scope)
            pipes.start_soon(self._downstream, server, client)

    async def _upstream(self, client: trio.SocketStream, server: trio.SocketStream, scope) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await client.receive_some(65536):
                await server.send_all(data)
        if self.stalled.is_set():
            self.client_closed.set()
        scope.cancel()

    async def _downstream(self, server: trio.SocketStream, client: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await server.receive_some(65536):
                if self.limit is not None:
                    data, self.limit = data[: self.limit], max(0, self.limit - len(data))
                    await client.send_all(data)
                    if self.limit == 0:
                        self.stalled.set()
                        await trio.sleep_forever()
                    continue
                await client.send_all(data)


# --- tests ---------------------------------------------------------------------------


async def test_noscript_after_script_flush_is_reloaded_in_one_call(private_redis):
    async with open_lean_redis(_config(private_redis.url())) as lean:
        assert await lean.evalsha(ECHO, ["smlean:a"], ["one"]) == ["smlean:a", "one", "one"]
        await lean.execute("SCRIPT", "FLUSH")
        assert await lean.execute("SCRIPT", "EXISTS", ECHO.sha) == [0]
        assert await lean.evalsha(ECHO, ["smlean:a"], ["two"]) == ["smlean:a", "two", "two"]
        assert await lean.execute("SCRIPT", "EXISTS", ECHO.sha) == [1]


async def test_a_timeout_mid_reply_closes_that_connection_and_the_next_call_succeeds(redis_url):
    big = "x" * 200_000
    proxy = _StallingProxy(proxy_target(redis_url, 6379))
    async with trio.open_nursery() as nursery:
        await proxy.serve(nursery)
        url = via_proxy(redis_url, proxy.port)
        async with open_lean_redis(_config(url), connections=1) as lean:
            key = f"smlean:{secrets.token_hex(4)}:big"
            with trio.fail_after(20):
                await lean.execute("SET", key, big, "EX", 60)
                proxy.limit = 1000  # the next reply stops after 1000 of its ~200 kB
                with pytest.raises(StoreUnavailable, match="no answer within"):
                    await lean.execute("GET", key, timeout_s=0.5)
                assert proxy.stalled.is_set()
                await proxy.client_closed.wait()  # the timed-out connection was closed
                proxy.limit = None
                assert await lean.execute("GET", key) == big
                assert (lean.connects, lean.timeouts) == (2, 1)
                await lean.execute("DEL", key)
        nursery.cancel_scope.cancel()


class _Load:
    """Workers calling the echo script in a loop; each records failing during a cut (three
    times, so calls after the drop meet the refused or held reconnects too) and
    succeeding after it. Any error other than StoreUnavailable ends the test."""

    def __init__(self, lean, workers: int) -> None:
        self.lean = lean
        self.workers = workers
        self.prefix = f"smlean:{secrets.token_hex(4)}:"
        self.failed = [trio.Event() for _ in range(workers)]
        self.failures = [0] * workers
        self.recovered = [trio.Event() for _ in range(workers)]
        self.started = trio.Event()
        self.cut = False
        self.ok_total = 0

    async def worker(self, i: int) -> None:
        n = 0
        while not self.recovered[i].is_set():
            n += 1
            arg = f"{i}-{n}"
            try:
                reply = await self.lean.evalsha(ECHO, [f"{self.prefix}{i}"], [arg])
            except StoreUnavailable:
                if self.cut:
                    self.failures[i] += 1
                    if self.failures[i] >= 3:
                        self.failed[i].set()
                await trio.sleep(0.005)  # pacing while Redis is away, not a sync
                continue
            assert reply == [f"{self.prefix}{i}", arg, arg]
            self.ok_total += 1
            if self.ok_total >= 200:
                self.started.set()
            if self.failed[i].is_set() and not self.cut:
                self.recovered[i].set()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["refuse", "hold"])
async def test_redis_cut_under_load_is_store_unavailable_then_recovers(redis_url, mode):
    """16 workers keep calling through a proxy; the line is cut and restored under them."""
    async with open_proxy(*proxy_target(redis_url, 6379)) as proxy:
        config = _config(via_proxy(redis_url, proxy.port), command_timeout_s=0.3)
        async with open_lean_redis(config, connections=3) as lean:
            load = _Load(lean, 16)
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    for i in range(load.workers):
                        nursery.start_soon(load.worker, i)
                    await load.started.wait()
                    load.cut = True
                    await proxy.block(mode)
                    for event in load.failed:
                        await event.wait()
                    load.cut = False
                    await proxy.unblock()
                    for event in load.recovered:
                        await event.wait()
            await lean.execute("DEL", *(f"{load.prefix}{i}" for i in range(load.workers)))


@pytest.mark.slow
async def test_redis_killed_and_restarted_under_load_recovers_with_its_scripts_reloaded():
    """kill -9 of the server under load, then a fresh one on the same port (empty script
    cache): StoreUnavailable meanwhile, then every worker succeeds again (NOSCRIPT reload)."""
    server = PrivateRedis()
    server.start()
    try:
        config = _config(server.url(), command_timeout_s=0.5)
        async with open_lean_redis(config, connections=3) as lean:
            load = _Load(lean, 8)
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    for i in range(load.workers):
                        nursery.start_soon(load.worker, i)
                    await load.started.wait()
                    load.cut = True
                    server.kill()
                    for event in load.failed:
                        await event.wait()
                    load.cut = False
                    await trio.to_thread.run_sync(server.start)
                    for event in load.recovered:
                        await event.wait()
            assert await lean.execute("SCRIPT", "EXISTS", ECHO.sha) == [1]
    finally:
        server.stop()


async def test_many_concurrent_callers_each_get_their_own_answer(redis_url):
    """Pipelined calls of many tasks on few connections, some cancelled while waiting."""
    prefix = f"smlean:{secrets.token_hex(4)}:"
    rng = random.Random(16)
    answered = cancelled = 0
    # What is checked is that every answer reaches its own caller, not how fast: 2,000
    # pipelined calls (up to 70 kB each) on 3 connections queue for seconds on a loaded
    # machine, past the default 2 s command timeout (seen with both cores busy).
    config = _config(redis_url, command_timeout_s=30.0)
    async with open_lean_redis(config, connections=3) as lean:

        async def caller(i: int) -> None:
            nonlocal answered, cancelled
            for n in range(5):
                # Replies of different sizes, so they split across reads differently.
                arg = f"{i}:{n}:" + "y" * rng.choice((0, 10, 3000, 70_000))
                with trio.CancelScope() as scope:
                    if rng.random() < 0.1:
                        scope.cancel()  # cancelled before or while waiting: reply dropped
                    reply = await lean.evalsha(ECHO, [f"{prefix}{i % 50}:{n}"], [arg])
                    assert reply[1] == arg and reply[2] == arg, (i, n)
                    answered += 1
                cancelled += scope.cancelled_caught
                if rng.random() < 0.05:
                    await trio.sleep(0)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(400):
                    nursery.start_soon(caller, i)
        assert answered + cancelled == 2000 and answered > 1500 and cancelled > 0
        assert 1 <= lean.connects <= 3 and lean.timeouts == 0
        # The connections are still in step: one more call per connection answers right.
        for n in range(6):
            assert await lean.evalsha(ECHO, [f"{prefix}last"], [str(n)]) == [
                f"{prefix}last",
                str(n),
                str(n),
            ]
        await lean.execute("DEL", *(f"{prefix}{i}:{n}" for i in range(50) for n in range(5)))
        await lean.execute("DEL", f"{prefix}last")


async def test_auth_select_and_unix_socket_urls(private_redis):
    unix_url = f"unix://:{PASSWORD}@{private_redis.socket_path}?db=5"
    for url, db in ((private_redis.url(db=3), 3), (unix_url, 5)):
        async with open_lean_redis(_config(url)) as lean:
            info = await lean.execute("CLIENT", "INFO")
            assert f" db={db} " in info
    async with open_lean_redis(_config(private_redis.url(password="wrong-secret"))) as lean:
        with pytest.raises(StoreUnavailable) as caught:
            await lean.execute("PING")
    assert "AUTH refused" in caught.value.message and "wrong-secret" not in caught.value.message


async def test_a_refused_connect_backs_off_and_fails_fast():
    async with open_lean_redis(_config(f"redis://127.0.0.1:{free_port()}/0")) as lean:
        with pytest.raises(StoreUnavailable, match="cannot connect"):
            await lean.execute("PING")
        with pytest.raises(StoreUnavailable, match="reconnecting in"):
            await lean.execute("PING")
        assert lean.connects == 0


async def test_error_replies(redis_url):
    """A script error is the caller's; a cluster redirect or LOADING is the store's."""
    broken = LeanScript.from_text("return redis.call('NOPE')")
    moved = LeanScript.from_text("return redis.error_reply('MOVED 1234 10.0.0.1:7000')")
    loading = LeanScript.from_text("return redis.error_reply('LOADING Redis is loading')")
    async with open_lean_redis(_config(redis_url)) as lean:
        with pytest.raises(RedisReplyError):
            await lean.evalsha(broken, [], [])
        with pytest.raises(StoreUnavailable, match="Cluster is not supported"):
            await lean.evalsha(moved, [], [])
        with pytest.raises(StoreUnavailable, match="LOADING"):
            await lean.evalsha(loading, [], [])
        assert await lean.execute("PING") == "PONG"
        assert lean.connects == 1


def test_urls_parse_like_redis_config():
    assert Endpoint.from_url("redis://127.0.0.1:6390/2") == Endpoint(port=6390, db=2)
    ep = Endpoint.from_url("rediss://user:p%40ss@redis.example:6380/1")
    assert (ep.host, ep.port, ep.tls, ep.username, ep.password, ep.db) == (
        "redis.example",
        6380,
        True,
        "user",
        "p@ss",
        1,
    )
    assert ep.handshake() == [("AUTH", "user", "p@ss"), ("SELECT", 1)]
    ep = Endpoint.from_url("unix:///run/redis.sock?db=4")
    assert (ep.unix_path, ep.db, ep.handshake()) == ("/run/redis.sock", 4, [("SELECT", 4)])
    assert Endpoint.from_url("redis://localhost").handshake() == []
    with pytest.raises(ValueError, match="database"):
        Endpoint.from_url("redis://localhost/x")


# --- TLS (rediss://) through a TLS-terminating proxy --------------------------------------


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for "localhost" and its key, as PEM files."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_rediss_speaks_tls_and_verifies_the_server(redis_url, tmp_path):
    cert, key = _self_signed(tmp_path)
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    target = proxy_target(redis_url, 6379)

    async def terminate(client: trio.SocketStream) -> None:
        tls = trio.SSLStream(client, server_side, server_side=True)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            server = await trio.open_tcp_stream(*target)
            async with tls, server, trio.open_nursery() as pipes:
                for a, b in ((tls, server), (server, tls)):
                    pipes.start_soon(_copy, a, b, pipes.cancel_scope)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, terminate, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        config = _config(f"rediss://localhost:{port}/0")
        trusted = ssl.create_default_context(cafile=str(cert))
        async with open_lean_redis(config, ssl_context=trusted) as lean:
            assert await lean.evalsha(ECHO, ["smlean:tls"], ["t"]) == ["smlean:tls", "t", "t"]
            await lean.execute("DEL", "smlean:tls")
        # Without our CA the server's certificate is refused: never a silent downgrade.
        async with open_lean_redis(config) as lean:
            with pytest.raises(StoreUnavailable, match="SSL"):
                await lean.execute("PING")
        nursery.cancel_scope.cancel()


async def _copy(source: trio.abc.Stream, sink: trio.abc.Stream, scope: trio.CancelScope) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while data := await source.receive_some(65536):
            await sink.send_all(data)
    scope.cancel()


async def test_a_caller_cancelled_before_the_call_sends_nothing(redis_url):
    key = f"smlean:{secrets.token_hex(4)}:never"
    async with open_lean_redis(_config(redis_url)) as lean:
        await lean.execute("PING")  # an open connection: no await before the write
        with trio.CancelScope() as scope:
            scope.cancel()
            await lean.execute("SET", key, "1")
        assert scope.cancelled_caught
        assert await lean.execute("EXISTS", key) == 0


_name = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20)


@given(
    user=st.one_of(st.none(), _name.filter(bool)),
    password=st.one_of(st.none(), _name),
    host=st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z0-9-]{1,10}){0,2}", fullmatch=True),
    port=st.integers(1, 65535),
    db=st.integers(0, 15),
    tls=st.booleans(),
)
def test_any_redis_url_round_trips(user, password, host, port, db, tls):
    """Credentials are percent-decoded whatever they contain; AUTH and SELECT follow."""
    auth = ""
    if user is not None or password is not None:
        auth = quote(user or "", safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        auth += "@"
    url = f"{'rediss' if tls else 'redis'}://{auth}{host}:{port}/{db}"
    ep = Endpoint.from_url(url)
    assert (ep.host, ep.port, ep.db, ep.tls) == (host, port, db, tls)
    assert (ep.username, ep.password) == ((user or None) if auth else None, password)
    expected_auth = [] if password is None else [("AUTH", *([user] if user else []), password)]
    assert ep.handshake() == expected_auth + ([("SELECT", db)] if db else [])


# --- inline reads: a caller on an idle connection reads its own reply ----------------------


async def test_an_inline_reader_cancelled_with_calls_behind_it_hands_reading_on(redis_url):
    """A reads inline (blocked in BLPOP), B is pipelined behind it, A is cancelled: the
    reader task takes over, drops A's late reply and hands B its own; same connection."""
    prefix = f"smlean:{secrets.token_hex(4)}:"
    async with (
        open_lean_redis(_config(redis_url), connections=1) as lean,
        open_lean_redis(_config(redis_url), connections=1) as other,
    ):
        await lean.execute("PING")
        conn = lean._live[0]
        b_reply: list[str] = []

        async def a(scope: trio.CancelScope) -> None:
            with scope:
                await lean.execute("BLPOP", f"{prefix}list", 10, timeout_s=20)
                raise AssertionError("A was cancelled before its reply came")

        async def b() -> None:
            b_reply.append(await lean.evalsha(ECHO, [f"{prefix}b"], ["b-arg"]))

        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                a_scope = trio.CancelScope()
                nursery.start_soon(a, a_scope)
                await trio.testing.wait_all_tasks_blocked()
                assert conn.reading == CALLER  # A reads its own reply
                nursery.start_soon(b)
                await trio.testing.wait_all_tasks_blocked()
                assert len(conn.pending) == 2
                a_scope.cancel()
                await trio.testing.wait_all_tasks_blocked()
                assert conn.reading == TASK  # handed on: B's reply is still to come
                await other.execute("RPUSH", f"{prefix}list", "for-a")  # unblocks A's BLPOP
        assert b_reply == [[f"{prefix}b", "b-arg", "b-arg"]]
        assert a_scope.cancelled_caught
        # A's reply was read and dropped: the connection is in step and idle again.
        assert await lean.execute("GET", f"{prefix}b") == "b-arg"
        assert conn.reading == IDLE and lean.connects == 1 and lean.timeouts == 0
        await lean.execute("DEL", f"{prefix}b", f"{prefix}list")


async def test_an_idle_connection_the_server_closed_is_replaced_before_a_call(redis_url):
    """Nobody watches an idle connection; the next call sees the hang-up and does not fail."""
    async with (
        open_lean_redis(_config(redis_url), connections=1) as lean,
        open_lean_redis(_config(redis_url), connections=1) as other,
    ):
        client_id = await lean.execute("CLIENT", "ID")
        conn = lean._live[0]
        assert await other.execute("CLIENT", "KILL", "ID", client_id) == 1
        with trio.fail_after(10):
            await trio.lowlevel.wait_readable(conn.fd)  # the hang-up has arrived
        assert await lean.execute("PING") == "PONG"
        assert conn.closed and lean.connects == 2


@pytest.mark.parametrize("inline_reads", [True, False])
async def test_callers_cancelled_at_random_points_never_get_another_callers_answer(
    redis_url, inline_reads
):
    """Callers cancelled at random checkpoints (while reading inline, waiting behind
    others, or sending): every call that answers gets its own reply; the connections stay
    in step. Both read paths: inline (idle connection) and the reader task's."""
    prefix = f"smlean:{secrets.token_hex(4)}:"
    rng = random.Random(1616)
    scopes: set[trio.CancelScope] = set()
    answered = cancelled = 0
    finished = trio.Event()
    config = _config(redis_url)
    async with open_lean_redis(config, connections=2, inline_reads=inline_reads) as lean:

        async def caller(i: int) -> None:
            nonlocal answered, cancelled
            for n in range(10):
                arg = f"{i}:{n}:" + "z" * rng.choice((0, 50, 5000, 90_000))
                with trio.CancelScope() as scope:
                    scopes.add(scope)
                    reply = await lean.evalsha(ECHO, [f"{prefix}{i}"], [arg])
                    assert reply == [f"{prefix}{i}", arg, arg], (i, n)
                    answered += 1
                scopes.discard(scope)
                cancelled += scope.cancelled_caught
                if rng.random() < 0.3:
                    await trio.sleep(0)

        async def canceller() -> None:
            while not finished.is_set():
                if scopes and rng.random() < 0.02:
                    rng.choice(sorted(scopes, key=id)).cancel()
                await trio.sleep(0)

        with trio.fail_after(60):
            async with trio.open_nursery() as outer:
                outer.start_soon(canceller)
                async with trio.open_nursery() as nursery:
                    for i in range(40):
                        nursery.start_soon(caller, i)
                finished.set()
        assert answered + cancelled == 400 and answered >= 40 and cancelled >= 5
        assert lean.timeouts == 0
        for n in range(4):
            assert await lean.evalsha(ECHO, [f"{prefix}last"], [str(n)]) == [
                f"{prefix}last",
                str(n),
                str(n),
            ]
        await lean.execute("DEL", *(f"{prefix}{i}" for i in range(40)), f"{prefix}last")
