"""Shared benchmark helpers: the setup line, percentiles, a daemon subprocess, a load generator.

Benchmarks print figures; they never pass or fail. Every script prints the
machine (cores, CPU model, load, Python, library versions) next to its numbers,
because a figure without its setup cannot be compared with anything.

The load generator (:func:`closed_loop`, :func:`open_loop`) speaks bare
HTTP/1.1 keep-alive over trio sockets: a full client such as httpx costs more
CPU per request than the daemon's own handling of a health probe, and on a
2-core machine that would measure the client. It runs in the benchmark's
process; the daemon always runs in a separate one (:func:`daemon_process`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import secrets
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import trio

ROOT = Path(__file__).resolve().parent.parent
# Enough to read any health/select answer in one or two recv calls.
_RECV_BYTES = 65536
# A daemon that is not ready in this long is broken, not slow.
DAEMON_START_TIMEOUT_S = 120.0


# --- setup --------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def versions(packages: Sequence[str]) -> str:
    found = []
    for name in packages:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def print_setup(
    title: str,
    packages: Sequence[str] = ("trio", "hypercorn", "httpx", "starlette"),
    extra: Mapping[str, str] | None = None,
) -> None:
    """Print the benchmark's title and the machine it ran on."""
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"== {title}")
    print(f"machine:  {cores} cores ({usable} usable), {cpu_model()}, load avg {load}")
    print(f"system:   {platform.system()} {platform.release()}")
    print(
        f"python:   {platform.python_implementation()} {platform.python_version()}; "
        f"{versions(packages)}"
    )
    for key, value in (extra or {}).items():
        print(f"{key + ':':<9} {value}")


# --- statistics ---------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, linearly interpolated."""
    if not sorted_values:
        return math.nan
    rank = (len(sorted_values) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


@dataclass
class Result:
    """Latencies and outcomes of one measured run."""

    label: str
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int | str] = field(default_factory=Counter)
    elapsed_s: float = 0.0

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200)

    def row(self) -> str:
        lat = sorted(self.latencies_s)
        rate = len(lat) / self.elapsed_s if self.elapsed_s else math.nan

        def ms(q: float) -> str:
            return f"{percentile(lat, q) * 1000:8.2f}"

        return (
            f"{self.label:<34} {len(lat):>7} {self.errors:>6} {rate:>8.0f} "
            f"{ms(50)} {ms(90)} {ms(99)} {max(lat, default=math.nan) * 1000:8.2f}"
        )


HEADER = (
    f"{'run':<34} {'requests':>7} {'errors':>6} {'req/s':>8} "
    f"{'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}"
)


# --- load generator -------------------------------------------------------------


class HttpConnection:
    """One keep-alive HTTP/1.1 connection doing one request at a time."""

    def __init__(self, stream: trio.SocketStream, host: str) -> None:
        self._stream = stream
        self._host = host
        self._buffer = b""

    @classmethod
    async def open(cls, host: str, port: int) -> HttpConnection:
        return cls(await trio.open_tcp_stream(host, port), f"{host}:{port}")

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> tuple[int, bytes]:
        """Send one request; the status and the body (Content-Length framing only)."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self._host}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body or method in {"POST", "PUT", "PATCH"}:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        await self._stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        while b"\r\n\r\n" not in self._buffer:
            await self._fill()
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        length = next(
            (
                int(h.split(":", 1)[1])
                for h in header_lines
                if h.lower().startswith("content-length")
            ),
            None,
        )
        if length is None:
            raise RuntimeError(f"response without Content-Length: {status_line}")
        while len(self._buffer) < length:
            await self._fill()
        payload, self._buffer = self._buffer[:length], self._buffer[length:]
        return int(status_line.split()[1]), payload

    async def _fill(self) -> None:
        chunk = await self._stream.receive_some(_RECV_BYTES)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self._buffer += chunk


# One measured exchange on a connection: do the request(s), append the latency
# (from ``start``) and the status to the Result. The default is a GET of the path.
Exchange = Callable[[HttpConnection, Result, float], Awaitable[None]]


async def _timed_get(conn: HttpConnection, path: str, result: Result, start: float) -> None:
    status, _ = await conn.request("GET", path)
    result.latencies_s.append(trio.current_time() - start)
    result.statuses[status] += 1


def _get_exchange(path: str) -> Exchange:
    async def exchange(conn: HttpConnection, result: Result, start: float) -> None:
        await _timed_get(conn, path, result, start)

    return exchange


async def closed_loop(
    url: str,
    path: str,
    *,
    concurrency: int,
    count: int,
    max_duration_s: float,
    exchange: Exchange | None = None,
) -> Result:
    """``concurrency`` connections each sending the next request as soon as one answers.

    Stops after ``count`` requests or ``max_duration_s``, whichever comes first.
    ``exchange`` replaces the GET of ``path`` (then only a label) by any request
    sequence, e.g. a POST and its follow-up.
    """
    host, port = _host_port(url)
    result = Result(f"{path} closed loop, {concurrency} conns")
    run = exchange or _get_exchange(path)
    remaining = count
    begin = trio.current_time()

    async def worker() -> None:
        nonlocal remaining
        conn = await HttpConnection.open(host, port)
        try:
            while remaining > 0:
                remaining -= 1
                await run(conn, result, trio.current_time())
        finally:
            await conn.aclose()

    with trio.move_on_after(max_duration_s):
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
    result.elapsed_s = trio.current_time() - begin
    return result


async def open_loop(
    url: str,
    path: str,
    *,
    rate: float,
    count: int,
    max_duration_s: float,
    connections: int = 16,
    exchange: Exchange | None = None,
) -> Result:
    """Requests at a fixed ``rate`` whatever the answers do (no coordinated omission).

    Request i is due at ``start + i / rate`` and goes out on connection
    ``i % connections``; its latency is measured from when it was *due*, so a
    slow answer that delays the next requests shows up in their latency too.
    ``exchange`` as in :func:`closed_loop`.
    """
    host, port = _host_port(url)
    result = Result(f"{path} open loop, {rate:.0f} req/s")
    run = exchange or _get_exchange(path)
    count = min(count, int(rate * max_duration_s))
    begin = trio.current_time() + 0.05

    async def worker(index: int) -> None:
        conn = await HttpConnection.open(host, port)
        try:
            while index < count:
                due = begin + index / rate
                await trio.sleep_until(due)
                await run(conn, result, due)
                index += connections
        finally:
            await conn.aclose()

    # A little past the schedule's end, so late answers are still counted.
    with trio.move_on_after(max_duration_s + 5):
        async with trio.open_nursery() as nursery:
            for first in range(connections):
                nursery.start_soon(worker, first)
    result.elapsed_s = trio.current_time() - begin
    return result


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


# --- the daemon under test --------------------------------------------------------


def with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path="/" + name))


@contextlib.contextmanager
def bench_database(server_dsn: str) -> Iterator[str]:
    """A fresh database on ``server_dsn``'s server for this run; dropped afterwards."""
    from accounts.db import admin_execute
    from accounts.db import open_loop as open_aio_loop

    name = f"smbench_{os.getpid()}_{secrets.token_hex(3)}"

    async def run(sql: str) -> None:
        async with open_aio_loop():
            await admin_execute(server_dsn, sql)

    trio.run(run, f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server_dsn, name)
    finally:
        trio.run(run, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_PROFILED = """
import cProfile, runpy, sys, time
sys.argv[0] = "scheduler"
profile = cProfile.Profile(time.process_time)
try:
    profile.runcall(runpy.run_module, "scheduler", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
finally:
    profile.dump_stats({out!r})
"""


class DaemonProcess:
    """``python -m scheduler <args>`` as a child; ``url`` once its 'ready' line appears."""

    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str],
        tree: Path = ROOT,
        *,
        python: str = sys.executable,
    ) -> None:
        """``tree``: the checkout to run (``-m`` imports from the working directory);
        ``python``: the interpreter (another venv, e.g. one without the test extras)."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith("STATIONMASTER_")}
        # BENCH_PROFILE=FILE: the daemon runs under cProfile timing CPU (not wall: the
        # machine is shared), stats written to FILE when it exits.
        profile = os.environ.get("BENCH_PROFILE")
        runner = ["-c", _PROFILED.format(out=profile)] if profile else ["-m", "scheduler"]
        self.proc = subprocess.Popen(
            [python, *runner, *args],
            env={**clean, **env, "STATIONMASTER_LOG_FORMAT": "json"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=tree,
        )
        # The control plane's URL, and the data plane's (the same URL for a checkout
        # from before the data plane, where one server had every route).
        self.url: str | None = None
        self.data_url: str | None = None
        self.tail: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        # BENCH_DAEMON_LOG=FILE: every line the daemon writes is kept there too.
        path = os.environ.get("BENCH_DAEMON_LOG")
        with open(path, "w") if path else contextlib.nullcontext() as log:
            self._read_lines(log)

    def _read_lines(self, log: Any) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if log is not None:
                print(line, file=log, flush=True)
            self.tail = [*self.tail[-20:], line]
            with contextlib.suppress(ValueError, AttributeError, KeyError, IndexError):
                record: Any = json.loads(line)
                if record.get("event") == "ready" and self.url is None:
                    self.url = record["urls"][0]
                    self.data_url = record.get("data_urls", record["urls"])[0]
                    self._ready.set()
        self._ready.set()

    def wait_ready(self) -> str:
        self._ready.wait(DAEMON_START_TIMEOUT_S)
        if self.url is None:
            raise RuntimeError("daemon did not become ready:\n" + "\n".join(self.tail))
        return self.url

    def stop(self) -> int:
        """SIGTERM, wait for the graceful exit; the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


@contextlib.contextmanager
def daemon_process(
    pg_dsn: str | None,
    redis_url: str | None,
    env: Mapping[str, str] | None = None,
    tree: Path = ROOT,
    data_plane: bool = True,
) -> Iterator[tuple[DaemonProcess, str]]:
    """Run the daemon as a subprocess; yields (process, control-plane base URL).

    With both stores given: ``stationmaster run`` on a fresh database of that
    server (dropped afterwards) and a per-run Redis key prefix. Without: the
    embedded ``stationmaster dev`` in a temporary state dir. ``process.data_url``
    is the data plane's base URL. ``tree`` runs another checkout; pass
    ``data_plane=False`` for one from before ``http.data_port`` existed.
    """
    import tempfile

    ports = {"STATIONMASTER_HTTP_PORT": "0"}
    if data_plane:
        ports["STATIONMASTER_HTTP_DATA_PORT"] = "0"
    port_env = {**ports, **(env or {})}
    if pg_dsn and redis_url:
        with bench_database(pg_dsn) as dsn:
            store_env = {
                "STATIONMASTER_DATABASE_DSN": dsn,
                "STATIONMASTER_REDIS_URL": redis_url,
                "STATIONMASTER_REDIS_KEY_PREFIX": f"smbench:{os.getpid()}:{secrets.token_hex(3)}:",
            }
            daemon = DaemonProcess(["run"], {**store_env, **port_env}, tree)
            try:
                yield daemon, daemon.wait_ready()
            finally:
                daemon.stop()
        return
    with tempfile.TemporaryDirectory(prefix="smbench-") as state:
        daemon = DaemonProcess(["dev", "--state-dir", state, "--port", "0"], port_env, tree)
        try:
            yield daemon, daemon.wait_ready()
        finally:
            daemon.stop()


def run_child(tree: Path, script: str, argv: list[str]) -> dict[str, Any]:
    """``tree``'s ``bench/<script> --child argv`` in a subprocess: its last stdout line as JSON
    (for A/B runs of another checkout, each in a fresh interpreter)."""
    done = subprocess.run(
        [sys.executable, str(tree / "bench" / script), "--child", *argv],
        capture_output=True,
        text=True,
        check=True,
        cwd=tree,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
