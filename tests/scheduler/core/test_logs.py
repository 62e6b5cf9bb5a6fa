"""Logs: secrets never printed; request id and actor name bound; JSON or console.

Secrets tried: a registered secret inside an event field, a nested dict, a list,
an exception message (logged as ``exc_info`` with its traceback, and as a field),
a msgspec struct and a dataclass field; secret-named keys (``password``,
``Authorization``, ``api_key``) at any depth; ``Bearer …`` and ``sk-…`` shapes in
free text. Each time the output is checked for the raw value.
"""

from __future__ import annotations

import dataclasses
import io
import json
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
import structlog
import trio

from accounts.db import Database
from scheduler.core.logs import REDACTED, configure_logging, get_logger, register_secret
from scheduler.http.endpoints import Call, Endpoint, Plane

from ...support import make_config, open_daemon


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """JSON logs into a buffer for this test; the previous structlog setup is restored."""
    saved = structlog.get_config()
    stream = io.StringIO()
    configure_logging(level="info", fmt="auto", stream=stream)
    try:
        yield stream
    finally:
        structlog.configure(**saved)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


class Upstream(msgspec.Struct):
    name: str
    credentials: str
    note: str


@dataclasses.dataclass
class Login:
    user: str
    password: str


def test_secrets_are_redacted_everywhere(captured: io.StringIO) -> None:
    secret = "s3cr3t-" + secrets.token_hex(12)
    register_secret(secret)
    bearer = "Bearer " + secrets.token_urlsafe(24)
    provider_key = "sk-" + secrets.token_hex(16)
    log = get_logger("test")

    log.info("plain field", detail=f"the value is {secret}")
    log.info(
        "nested",
        upstream={"headers": {"Authorization": bearer}, "notes": [f"uses {secret}"]},
        items=[{"api_key": "abc" * 10}],
        password="hunter2-hunter2",
    )
    log.info(f"free text with {bearer} and {provider_key}")
    log.info("struct", account=Upstream("acct", "raw-credential-value", f"x {secret}"))
    log.info("dataclass", login=Login("bob", "correct-horse-battery"))
    try:
        raise ValueError(f"upstream refused credential {secret}")
    except ValueError as exc:
        log.exception("failed with traceback")
        log.error("failed as a field", error=exc)

    out = captured.getvalue()
    for raw in (
        secret,
        bearer,
        bearer.split()[1],
        provider_key,
        "hunter2-hunter2",
        "abc" * 10,
        "raw-credential-value",
        "correct-horse-battery",
    ):
        assert raw not in out, raw
    records = {r["event"]: r for r in _lines(captured)}
    assert records["nested"]["upstream"]["headers"]["Authorization"] == REDACTED
    assert records["nested"]["password"] == REDACTED
    assert records["struct"]["account"]["name"] == "acct"
    assert records["struct"]["account"]["credentials"] == REDACTED
    assert records["dataclass"]["login"]["user"] == "bob"
    tb = records["failed with traceback"]["exception"]
    assert "Traceback" in tb and "ValueError" in tb and REDACTED in tb
    assert records["failed as a field"]["error"].startswith("ValueError: upstream refused")


def test_console_renderer_on_a_tty_json_otherwise() -> None:
    saved = structlog.get_config()
    try:
        tty = TTY()
        configure_logging(fmt="auto", stream=tty)
        get_logger("test").info("to a terminal", token="tty-secret-token-value", n=1)
        text = tty.getvalue()
        assert "to a terminal" in text and "n=1" in text
        assert "tty-secret-token-value" not in text
        with pytest.raises(json.JSONDecodeError):
            json.loads(text.splitlines()[0])

        pipe = io.StringIO()
        configure_logging(fmt="auto", stream=pipe)
        get_logger("test").info("to a pipe", n=1)
        record = json.loads(pipe.getvalue().splitlines()[0])
        assert record["event"] == "to a pipe" and record["level"] == "info"

        forced = TTY()
        configure_logging(fmt="json", stream=forced)
        get_logger("test").info("forced json")
        assert json.loads(forced.getvalue())["event"] == "forced json"
    finally:
        structlog.configure(**saved)


class Ticker:
    """An actor that logs once started: its lines must carry ``actor``."""

    name = "ticker"
    essential = False

    def __init__(self) -> None:
        self.logged = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        get_logger("test").info("tick")
        self.logged.set()
        await trio.sleep_forever()


@pytest.mark.parametrize("plane", [Plane.CONTROL, Plane.DATA])
async def test_request_id_bound_per_request_and_actor_per_actor(
    captured: io.StringIO,
    pg_dsn: str,
    redis_url: str,
    redis_prefix: str,
    db: Database,
    plane: Plane,
) -> None:
    async def noisy(call: Call) -> dict[str, str]:
        # Two tasks' worth of context: the handler's and a child it starts.
        get_logger("test").info("in handler", tag=call.headers["x-tag"])
        return {"ok": "yes"}

    ticker = Ticker()
    config = make_config(pg_dsn, redis_url, redis_prefix)
    with trio.fail_after(30):
        async with (
            open_daemon(
                config,
                extra_actors=[ticker],
                extra_endpoints=[
                    Endpoint("GET", "/test/noisy", noisy, "test only", planes=(plane,))
                ],
            ) as (daemon, url),
            httpx.AsyncClient(
                base_url=url if plane is Plane.CONTROL else daemon.data_urls[0], timeout=5
            ) as client,
        ):
            await ticker.logged.wait()
            given = await client.get(
                "/test/noisy", headers={"x-request-id": "req-given-1", "x-tag": "a"}
            )
            assert given.headers["x-request-id"] == "req-given-1"
            minted = await client.get("/test/noisy", headers={"x-tag": "b"})
            minted_id = minted.headers["x-request-id"]
            # An id that is not a plausible token is replaced, never echoed.
            odd = await client.get("/test/noisy", headers={"x-request-id": "a b<c>", "x-tag": "c"})
            assert odd.headers["x-request-id"] != "a b<c>"

    records = _lines(captured)
    handler = {r["tag"]: r for r in records if r["event"] == "in handler"}
    assert handler["a"]["request_id"] == "req-given-1"
    assert handler["b"]["request_id"] == minted_id != "req-given-1"
    assert handler["c"]["request_id"] == odd.headers["x-request-id"]
    assert handler["a"]["actor"] == ("http" if plane is Plane.CONTROL else "http-data")
    tick = next(r for r in records if r["event"] == "tick")
    assert tick["actor"] == "ticker"
    assert "request_id" not in tick
    # Context does not leak out of a request into the actor lines logged later.
    assert all("request_id" not in r for r in records if r.get("event") == "stopped")


def test_thousands_of_registered_secrets_are_all_redacted(captured: io.StringIO) -> None:
    """10,000 accounts' credentials registered (as selection does when it decrypts them):
    any one of them is redacted; of two secrets where one starts the other, the longer is
    replaced whole; two ending alike are both found; text around them is kept."""
    keys = [f"sk-many-{i:06d}-{secrets.token_hex(10)}" for i in range(10_000)]
    for key in keys:
        register_secret(key, '{"api_key":"' + key + '"}')
    short = "pfx-" + secrets.token_hex(6)
    register_secret(short, short + "-longer-tail")
    tail = secrets.token_hex(6)  # two secrets ending alike
    register_secret("one-" + tail, "other-" + tail)
    log = get_logger("test")
    log.info(
        "many",
        detail=f"a {keys[7321]} b {keys[0]}c",
        other=f"x {short}-longer-tail y {short}!",
        alike=f"other-{tail} one-{tail}.",
    )
    record = _lines(captured)[-1]
    assert record["detail"] == f"a {REDACTED} b {REDACTED}c"
    assert record["other"] == f"x {REDACTED} y {REDACTED}!"
    assert record["alike"] == f"{REDACTED} {REDACTED}."
