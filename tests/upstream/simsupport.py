"""Start the upstream simulator for a test and drive it: real HTTP on 127.0.0.1.

    from tests.upstream.simsupport import start_simulator

    with start_simulator(duration_min_s=0.2, duration_max_s=0.5) as (base_url, sim):
        account = Account(..., base_url=base_url)   # adapters talk to the simulator
        ...
        sim.set(rate_429=0.3)                       # knobs at run time (422 -> SimError)
        sim.counters()["accounts"]["sk-demo"]["fetches"]
        sim.assert_each_client_submitted_once()     # by X-Client-Request-Id / external_task_id
        sim.assert_no_fetch_after_terminal()
        sim.advance(3600)                           # the simulator's clock moves on

The simulator runs in a thread of this process with its own trio loop
(``process=False``, the default: cheap, and a hung request in the simulator
never blocks the test's loop), or as a separate ``python -m
scheduler.upstream.simulator`` process (``process=True``: its own CPU, can be
``kill -9``-ed through ``sim.process``). Either way the test talks to it only over
HTTP. Knobs are validated before anything starts: an unknown knob or a bad value
raises ``accounts.errors.ConfigError`` naming the knob.

The control client's methods are synchronous (plain ``httpx.Client``); calling
them from a trio test blocks that loop for one loopback round trip, which is
fine because the simulator runs elsewhere.
"""

from __future__ import annotations

import contextlib
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import trio

from scheduler.upstream.simulator import Knobs, build_knobs, open_simulator

__all__ = ["SimControl", "SimError", "start_simulator"]

# Long enough for a loaded CI machine to start a Python process.
START_TIMEOUT_S = 30.0


class SimError(Exception):
    """The control endpoint refused: ``status``, ``field`` and ``reason`` from its answer."""

    def __init__(self, status: int, body: Any) -> None:
        details = (body or {}).get("error", {}).get("details", {}) if isinstance(body, dict) else {}
        self.status = status
        self.field = details.get("field")
        self.reason = details.get("reason")
        super().__init__(f"HTTP {status}: {body}")


class SimControl:
    """Synchronous client of ``/_sim/*`` (see ``scheduler/upstream/simulator/_control.py``)."""

    def __init__(self, base_url: str, process: subprocess.Popen[str] | None = None) -> None:
        self.base_url = base_url
        self.process = process
        self._http = httpx.Client(base_url=base_url, timeout=10.0, trust_env=False)

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = self._http.request(method, f"/_sim/{path}", json=body)
        data = response.json() if response.content else None
        if response.status_code >= 400:
            raise SimError(response.status_code, data)
        return data

    def knobs(self) -> dict[str, Any]:
        return self._call("GET", "knobs")

    def set(self, **knobs: Any) -> dict[str, Any]:
        """Change knobs at run time; SimError(422, field, reason) when refused."""
        return self._call("PATCH", "knobs", knobs)

    def counters(self) -> dict[str, Any]:
        return self._call("GET", "counters")

    def account(self, key: str) -> dict[str, int]:
        """One account's counters (by API key / access key); zeros if never seen."""
        return self.counters()["accounts"].get(key, {})

    def task(self, upstream_id: str) -> dict[str, Any]:
        return self._call("GET", f"tasks/{upstream_id}")

    def reset(self) -> None:
        self._call("POST", "reset")

    def advance(self, seconds: float) -> None:
        """Move the simulator's clock: tasks finish, windows reset, retention expires."""
        self._call("POST", "clock/advance", {"seconds": seconds})

    def inject(
        self,
        status: int,
        code: str | int | None = None,
        message: str = "injected by the simulator",
        *,
        platform: str | None = None,
        op: str | None = None,
        count: int = 1,
        body: Any = None,
    ) -> None:
        """The next ``count`` matching requests answer this error in the platform's shape,
        or exactly ``body`` (any JSON, any status: a recorded answer replayed)."""
        doc = {"status": status, "code": code, "message": message, "platform": platform}
        self._call("POST", "inject", {**doc, "op": op, "count": count, "body": body})

    def assert_each_client_submitted_once(self) -> None:
        """Every client key (our task id) created exactly one upstream task."""
        twice = {k: v for k, v in self.counters()["clients"].items() if v["submits"] != 1}
        assert not twice, f"submitted more than once: {twice}"

    def assert_no_fetch_after_terminal(self) -> None:
        tasks = self.counters()["tasks"]
        late = {
            t: c["fetches_after_terminal"] for t, c in tasks.items() if c["fetches_after_terminal"]
        }
        assert not late, f"fetched after a terminal answer: {late}"

    def qps_peak(self, key: str) -> int:
        """Most requests the account made within one second of the simulator's clock."""
        return int(self.account(key).get("qps_peak", 0))


@contextlib.contextmanager
def start_simulator(*, process: bool = False, **knobs: Any) -> Iterator[tuple[str, SimControl]]:
    """A running simulator with ``knobs``; yields ``(base_url, control)``; stopped on exit."""
    validated = build_knobs(knobs)
    starter = _start_process if process else _start_thread
    with starter(validated) as (base_url, proc):
        control = SimControl(base_url, proc)
        try:
            yield base_url, control
        finally:
            control.close()


@contextlib.contextmanager
def _start_thread(knobs: Knobs) -> Iterator[tuple[str, None]]:
    ready: queue.Queue[tuple[str, trio.lowlevel.TrioToken, trio.CancelScope] | BaseException] = (
        queue.Queue()
    )

    async def serve() -> None:
        with trio.CancelScope() as scope:
            async with open_simulator(knobs) as (_sim, url):
                ready.put((url, trio.lowlevel.current_trio_token(), scope))
                await trio.sleep_forever()

    def main() -> None:
        try:
            trio.run(serve)
        except BaseException as exc:  # handed to the starting thread, which re-raises
            ready.put(exc)

    thread = threading.Thread(target=main, name="upstream-simulator", daemon=True)
    thread.start()
    got = ready.get(timeout=START_TIMEOUT_S)
    if isinstance(got, BaseException):
        raise got
    url, token, scope = got
    try:
        yield url, None
    finally:
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(scope.cancel, trio_token=token)
        thread.join(timeout=10)


@contextlib.contextmanager
def _start_process(knobs: Knobs) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "scheduler.upstream.simulator", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "serving on " not in line:
            raise RuntimeError(f"simulator did not start: {line!r} (exit {proc.poll()})")
        url = line.rsplit("serving on ", 1)[1].strip()
        with httpx.Client(trust_env=False) as client:
            client.patch(f"{url}/_sim/knobs", content=msgspec.json.encode(knobs)).raise_for_status()
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
