"""``stationmaster dev``: the daemon on a private PostgreSQL and Redis, no servers needed.

The state directory (``--state-dir``, else ``$STATIONMASTER_STATE_DIR``, else
``$XDG_STATE_HOME/stationmaster``, else ``~/.local/state/stationmaster``) holds::

    dev.lock           held while a dev process runs (one per state dir)
    dev-secrets.json   admin token, gateway token, Fernet key (mode 0600), reused
    dev-profile.toml   the config the CLI in another shell uses (mode 0600; see
                       :mod:`scheduler.cli.profile`), written once the daemon serves
    postgres/          data directory, server log
    redis/             server log (Redis keeps no data: it is rebuilt from PostgreSQL)

The development config is the loaded config (file and ``STATIONMASTER_*``
variables, so log level and tuning still apply) with the stores, the tokens, the
crypto key and the listen addresses replaced: always ``127.0.0.1``; the data
plane (the gateway's routes, the probes) on ``--port`` (default 8080, 0 picks a
free one), the control plane (admin, metrics, OpenAPI; what the CLI uses) on the
next port (a free one with ``--port 0``).

Lifetimes, outermost first: state-dir lock → PostgreSQL → Redis → upstream
simulator → daemon; once the daemon serves, the demo accounts (every platform,
pointing at the simulator, see :mod:`.demo`) are seeded unless ``--no-demo``. Each
server is stopped when its block ends, whatever ends it (SIGTERM, Ctrl-C, the
daemon failing to start); if this process is killed outright the kernel stops
them (see :mod:`scheduler.cli.embedded`).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import secrets
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import httpx
import msgspec
import trio

from accounts.crypto import FernetKey, generate_key
from accounts.errors import ConfigError, StationmasterError

from ..core.config import Config, parse_config
from ..core.logs import get_logger
from ..upstream.simulator import open_simulator
from .demo import OWNER as DEMO_OWNER
from .demo import seed_demo_accounts, seed_demo_credit
from .embedded import open_postgres, open_redis_server
from .profile import PROFILE_FILE, default_state_dir, write_profile

log = get_logger("dev")

# The port the README and the quick start promise.
DEFAULT_PORT = 8080
# The upstream simulator's port in dev (`stationmaster simulate` uses the same default).
DEFAULT_SIMULATOR_PORT = 8090
SECRETS_FILE = "dev-secrets.json"
LOCK_FILE = "dev.lock"
_EXIT_OK, _EXIT_FAILURE = 0, 1
Token = Annotated[str, msgspec.Meta(min_length=16)]


class DevSecrets(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a dev state dir keeps so tokens and stored credentials survive restarts."""

    admin_token: Token
    gateway_token: Token
    crypto_key: FernetKey

    @classmethod
    def generate(cls) -> DevSecrets:
        return cls(
            admin_token="dev-admin-" + secrets.token_urlsafe(24),
            gateway_token="dev-gateway-" + secrets.token_urlsafe(24),
            crypto_key=generate_key(),
        )


def load_or_create_secrets(path: Path) -> DevSecrets:
    """Read the secrets file, or create it (mode 0600, never replaced once written).

    Raises ConfigError when it exists but cannot be read: regenerating would make
    credentials stored with the old key unreadable, so the operator decides.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_secrets(path)
    except OSError as exc:
        raise ConfigError("--state-dir", f"cannot write {path}: {exc.strerror}") from None
    fresh = DevSecrets.generate()
    with os.fdopen(fd, "wb") as out:
        out.write(msgspec.json.format(msgspec.json.encode(fresh)) + b"\n")
    log.info("generated development tokens and key", file=str(path))
    return fresh


def _read_secrets(path: Path) -> DevSecrets:
    if path.stat().st_mode & 0o077:
        log.warning("secrets file was readable by others; fixing its mode", file=str(path))
        path.chmod(0o600)
    try:
        return msgspec.json.decode(path.read_bytes(), type=DevSecrets)
    except (OSError, msgspec.DecodeError) as exc:
        # The reason names the field, never a value.
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ConfigError(
            str(path), f"unreadable ({reason}); delete it to generate new tokens and a new key"
        ) from None


def dev_config(
    config: Config, *, dsn: str, redis_url: str, port: int, dev_secrets: DevSecrets
) -> Config:
    """``config`` with stores, tokens, key and listen address replaced; validated again."""
    data: dict[str, Any] = msgspec.to_builtins(config)
    data["database"]["dsn"] = dsn
    data["redis"]["url"] = redis_url
    control = port + 1 if port else 0
    data["http"].update(host="127.0.0.1", port=control, data_host="127.0.0.1", data_port=port)
    data["auth"] = {
        "admin_tokens": [dev_secrets.admin_token],
        "gateway_tokens": [dev_secrets.gateway_token],
    }
    data["crypto"] = {"keys": [dev_secrets.crypto_key]}
    return parse_config(data)


@contextlib.contextmanager
def _lock_state_dir(state_dir: Path) -> Iterator[None]:
    """One dev process per state dir; the kernel drops the lock if we die."""
    with open(state_dir / LOCK_FILE, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StationmasterError(f"another `stationmaster dev` is using {state_dir}") from None
        yield


class _EarlySignal:
    """SIGTERM handler until trio's own receiver takes over.

    While the servers start (plain blocking code) it raises KeyboardInterrupt so
    the ``with`` blocks stop what was started; once ``trio.run`` begins, raising
    at an arbitrary point inside trio is unsafe, so it only records the request,
    and :class:`_Announcer` honours it as soon as the daemon is up.
    """

    def __init__(self) -> None:
        self.requested = False
        self.raising = True

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if self.raising:
            self.raising = False  # a second signal must not interrupt the clean-up
            raise KeyboardInterrupt


class _Announcer:
    """The daemon as ``run_until_signal`` sees it, printing the URL and tokens once ready.

    The upstream simulator starts first (the demo accounts point at it) and stops
    after the daemon; the CLI profile is written and the demo accounts are seeded
    once the daemon serves.
    """

    def __init__(
        self,
        daemon: Any,
        banner: str,
        early: _EarlySignal,
        *,
        sim_port: int,
        demo: bool,
        state_dir: Path | None = None,
    ) -> None:
        self._daemon = daemon
        self._banner = banner
        self._early = early
        self._sim_port = sim_port
        self._demo = demo
        self._state_dir = state_dir

    def shutdown(self) -> None:
        self._daemon.shutdown()

    async def run(self) -> None:
        async with (
            open_simulator(port=self._sim_port) as (_sim, sim_url),
            trio.open_nursery() as nursery,
        ):
            urls: list[str] = await nursery.start(self._daemon.run)
            if self._state_dir is not None:
                # Before the banner: once a user reads it, the CLI must find the profile.
                port = int(urls[0].rsplit(":", 1)[1])
                data_port = int(self._daemon.data_urls[0].rsplit(":", 1)[1])
                write_profile(self._state_dir, self._daemon.config, port=port, data_port=data_port)
            data_url = self._daemon.data_urls[0]
            print(self._banner.format(url=urls[0], data=data_url, sim=sim_url), flush=True)
            if self._early.requested:
                self._daemon.shutdown()
                return
            demo = await self._seed(urls[0], sim_url) if self._demo else "skipped (--no-demo)"
            print(f"  demo:          {demo}", flush=True)

    async def _seed(self, url: str, sim_url: str) -> str:
        admin = self._daemon.config.auth.admin_tokens[0]
        try:
            names = await seed_demo_accounts(url, admin, sim_url)
            balance = await seed_demo_credit(url, admin)
        except httpx.HTTPError as exc:
            # The daemon still serves; say why the demo is missing instead of stopping.
            log.error("could not seed the demo accounts", reason=type(exc).__name__)
            return "not seeded (see the log)"
        return (
            f"{len(names)} accounts in group `demo` ({', '.join(names)});"
            f" owner `{DEMO_OWNER}` has {balance:,} credits"
        )


def _profile_hint(state_dir: Path) -> str:
    if default_state_dir(os.environ).absolute() == state_dir:
        return "the CLI in another shell finds it with no flags"
    return f"the CLI finds it with STATIONMASTER_STATE_DIR={state_dir}"


def _banner(state_dir: Path, dev_secrets: DevSecrets) -> str:
    admin = dev_secrets.admin_token
    return "\n".join(
        [
            "stationmaster dev: serving on {data}",
            "  admin API:     {url}  (admin routes, /metrics; the CLI uses it)",
            f"  admin token:   {admin}",
            f"  gateway token: {dev_secrets.gateway_token}",
            f"  state dir:     {state_dir}  (tokens kept in {SECRETS_FILE}, mode 0600)",
            f"  CLI profile:   {state_dir / PROFILE_FILE}  ({_profile_hint(state_dir)})",
            "  simulator:     {sim}  (upstream APIs; knobs: {sim}/_sim/knobs)",
            "  try:           curl {data}/readyz   (probes and /openapi.json need no token)",
            "                 stationmaster accounts list",
            "                 stationmaster explain --group demo --platform openai --model gpt-4o",
            "Ctrl-C (or SIGTERM) stops the daemon, the simulator and both servers.",
        ]
    )


def _serve(
    config: Config,
    banner: str,
    early: _EarlySignal,
    *,
    sim_port: int,
    demo: bool,
    state_dir: Path | None = None,
) -> int:
    from ..daemon import Daemon
    from .running import run_until_signal

    early.raising = False
    try:
        announcer = _Announcer(
            Daemon(config), banner, early, sim_port=sim_port, demo=demo, state_dir=state_dir
        )
        trio.run(run_until_signal, announcer)
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if all(isinstance(e, KeyboardInterrupt) for e in leaves):
            # A second Ctrl-C: the user wants out now, drain or not.
            log.warning("interrupted again: stopped without finishing the drain")
            return _EXIT_OK
        domain = next((e for e in leaves if isinstance(e, StationmasterError)), None)
        if domain is None:
            log.error("daemon failed", exc_info=group)
        else:
            log.error("cannot run", reason=domain.message)
        return _EXIT_FAILURE
    except StationmasterError as exc:
        log.error("cannot run", reason=exc.message)
        return _EXIT_FAILURE
    return _EXIT_OK


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def run_dev(args: argparse.Namespace, config: Config) -> int:
    """The ``dev`` subcommand: servers up, daemon until a signal, servers down; exit code."""
    state_dir = Path(args.state_dir).expanduser() if args.state_dir else None
    state_dir = (state_dir or default_state_dir(os.environ)).absolute()
    port = DEFAULT_PORT if args.port is None else args.port
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("--state-dir", f"cannot create {state_dir}: {exc.strerror}") from None
    dev_secrets = load_or_create_secrets(state_dir / SECRETS_FILE)
    early = _EarlySignal()
    previous = signal.signal(signal.SIGTERM, early)
    try:
        with (
            _lock_state_dir(state_dir),
            open_postgres(state_dir / "postgres") as dsn,
            open_redis_server(state_dir / "redis") as redis_url,
        ):
            config = dev_config(
                config, dsn=dsn, redis_url=redis_url, port=port, dev_secrets=dev_secrets
            )
            banner = _banner(state_dir, dev_secrets)
            sim_port = (
                DEFAULT_SIMULATOR_PORT if args.simulator_port is None else args.simulator_port
            )
            return _serve(
                config,
                banner,
                early,
                sim_port=sim_port,
                demo=not args.no_demo,
                state_dir=state_dir,
            )
    except KeyboardInterrupt:
        print("stationmaster dev: interrupted; servers stopped", file=sys.stderr)
        return _EXIT_OK
    finally:
        signal.signal(signal.SIGTERM, previous)
