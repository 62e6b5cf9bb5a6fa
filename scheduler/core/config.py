"""Configuration: one TOML file decoded into frozen structs, overridable by env.

Lookup order for the file: ``--config PATH``, then ``$STATIONMASTER_CONFIG``, then
``./stationmaster.toml``, then ``/etc/stationmaster/stationmaster.toml``; with none
of them present every key takes its default.

Every key ``[section] key`` can be overridden by ``STATIONMASTER_SECTION_KEY``.
One rule for the values: a value is read as a TOML value (``8080``, ``true``,
``["a", "b"]``, ``1.5``, ``"text"``); for a string key, a value that is not a
TOML string is taken as the bare text, so ``redis://h:6379/0`` and
``"redis://h:6379/0"`` mean the same. Any other ``STATIONMASTER_*`` variable is an
error naming the variable (exit 2), like an unknown key in the file, except the
few that are not config keys (:data:`NON_CONFIG_VARIABLES`: the config file and
``dev``'s state directory) and the ``STATIONMASTER_TEST_`` names the test suite
reserves (:data:`TEST_PREFIX`).

Errors are :class:`~accounts.errors.ConfigError` with the dotted key path and the
reason; the CLI prints them and exits 2 before anything starts.
"""

from __future__ import annotations

import base64
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

import msgspec

from accounts.crypto import CryptoConfig
from accounts.db import DatabaseConfig
from accounts.errors import ConfigError
from accounts.validation import field_error
from snapshot.redis import RedisConfig

ENV_PREFIX = "STATIONMASTER_"
# STATIONMASTER_* variables that are not config keys: the file to read and where
# `stationmaster dev` keeps its servers (and the profile the CLI finds).
NON_CONFIG_VARIABLES = frozenset({ENV_PREFIX + "CONFIG", ENV_PREFIX + "STATE_DIR"})
# Reserved for the test suite (which servers to test against); never read by the daemon.
TEST_PREFIX = ENV_PREFIX + "TEST_"
DEFAULT_PATHS = (Path("stationmaster.toml"), Path("/etc/stationmaster/stationmaster.toml"))

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


class HttpConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    # 0 picks a free port (tests, `stationmaster dev`); the bound URL is logged.
    port: Port = 8080
    # Admin bodies (an import of many accounts) are the largest legitimate ones.
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    # Time SIGTERM gives in-flight requests before they are cancelled.
    drain_timeout_s: PositiveFloat = 10.0
    # After SIGTERM, /readyz answers 503 but new connections are still accepted
    # for this long, so a load balancer notices before connections are refused.
    drain_delay_s: Annotated[float, msgspec.Meta(ge=0, le=300)] = 0.0
    # Longer than the gateway's own idle pool (httpx 5 s, Go 90 s): a server that
    # closes first races the client's next request on that connection, which then
    # fails with "connection reset" (a POST is not retried).
    keep_alive_timeout_s: PositiveFloat = 120.0


class AuthConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Bearer tokens. Empty lists disable the corresponding routes (every call 401)."""

    admin_tokens: list[Annotated[str, msgspec.Meta(min_length=16)]] = msgspec.field(
        default_factory=list
    )
    gateway_tokens: list[Annotated[str, msgspec.Meta(min_length=16)]] = msgspec.field(
        default_factory=list
    )


class SupervisorConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Restart delay starts here and doubles per consecutive crash, capped below.
    backoff_initial_s: PositiveFloat = 0.1
    backoff_max_s: PositiveFloat = 30.0
    # An essential actor crashing more than max_restarts times inside window_s
    # ends the daemon (exit 1) so systemd restarts the whole process.
    max_restarts: PositiveInt = 5
    window_s: PositiveFloat = 60.0


class HealthConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    probe_interval_s: PositiveFloat = 1.0
    probe_timeout_s: PositiveFloat = 1.0
    # Loop lag above this makes /livez fail and stops systemd watchdog pings.
    max_loop_lag_s: PositiveFloat = 2.0


class LogConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    level: str = "info"
    # "auto": console renderer on a TTY, JSON lines otherwise.
    format: str = "auto"

    def __post_init__(self) -> None:
        if self.level.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("level: must be one of debug, info, warning, error")
        if self.format not in {"auto", "json", "console"}:
            raise ValueError("format: must be one of auto, json, console")


def _default_backoff() -> list[float]:
    # 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: a receiver down for a day still gets
    # its events (about 28 h of tries), and a blip costs only the first 5 s.
    return [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]


def _is_base64(text: str) -> bool:
    try:
        return len(base64.b64decode(text + "==", validate=True)) > 0
    except ValueError:
        return False


class OutboxConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Webhook delivery and the outbox's upkeep (scheduler/outbox)."""

    # Standard Webhooks secret, "whsec_" + base64. Empty: this instance delivers
    # no webhooks (events wait, pending, for an instance that has it).
    webhook_secret: str = ""
    # False: this instance never dispatches (it still serves the pull path).
    dispatch: bool = True
    # Deliveries in flight at once; a slow receiver holds only its own slots.
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 64
    # In flight at once to one origin (scheme://host:port).
    per_destination: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 8
    # Rows claimed per round trip at most.
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    # One delivery attempt: connect + send + answer.
    timeout_s: PositiveFloat = 10.0
    # How long a claim stays ours; past it another instance re-claims the row.
    # Must cover a whole attempt plus recording it.
    lease_s: PositiveFloat = 60.0
    # Safety-net poll; NOTIFY wakes the dispatcher sooner.
    poll_interval_s: PositiveFloat = 1.0
    # Retry delay after the n-th failed attempt (the last entry repeats).
    backoff_s: list[Annotated[float, msgspec.Meta(ge=0)]] = msgspec.field(
        default_factory=_default_backoff
    )
    # Each delay is spread by +/- this fraction.
    jitter: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.2
    # Consumed events are kept this long (a pull consumer must read within it).
    retention_s: Annotated[float, msgspec.Meta(ge=0)] = 7 * 24 * 3600.0
    purge_interval_s: PositiveFloat = 60.0
    # Rows deleted per statement: short locks, bounded work per pass.
    purge_batch: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000
    purge_max_batches: Annotated[int, msgspec.Meta(ge=1)] = 50
    # Backlog gauges refresh.
    stats_interval_s: PositiveFloat = 5.0

    def __post_init__(self) -> None:
        if self.webhook_secret and not self.webhook_secret.startswith("whsec_"):
            # The value itself is never echoed.
            raise ValueError("webhook_secret: must start with whsec_")
        if self.webhook_secret and not _is_base64(self.webhook_secret.removeprefix("whsec_")):
            raise ValueError("webhook_secret: must be whsec_ followed by base64")
        if not self.backoff_s:
            raise ValueError("backoff_s: must have at least one delay")
        if self.lease_s <= self.timeout_s:
            raise ValueError("lease_s: must exceed timeout_s (a claim must outlive an attempt)")
        if self.per_destination > self.concurrency:
            raise ValueError("per_destination: must not exceed concurrency")


class UpstreamPlatformConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Per-platform overrides of :class:`UpstreamConfig` (``[upstream.platforms.kling]``)."""

    timeout_s: PositiveFloat | None = None
    submit_timeout_s: PositiveFloat | None = None
    max_connections: PositiveInt | None = None
    # Billing units per produced unit (video second, image), by model; "*" for the rest.
    prices: dict[str, Annotated[int, msgspec.Meta(ge=0)]] = msgspec.field(default_factory=dict)


class UpstreamConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The adapters' one shared HTTP client (see :mod:`scheduler.upstream`)."""

    connect_timeout_s: PositiveFloat = 5.0
    # Read timeout of fetch, cancel and lookup: a hung upstream costs at most this.
    timeout_s: PositiveFloat = 15.0
    # A submit may legitimately take longer (uploads, slow queues); past it: Ambiguous.
    submit_timeout_s: PositiveFloat = 60.0
    # The shared pool; each platform gets at most max_connections_per_platform of it
    # so one slow platform cannot starve the others.
    max_connections: PositiveInt = 512
    max_connections_per_platform: PositiveInt = 256
    keepalive_expiry_s: PositiveFloat = 30.0
    platforms: dict[str, UpstreamPlatformConfig] = msgspec.field(default_factory=dict)


class TasksConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Async tasks (``scheduler/tasks``): limits, leases, polling, sweeping."""

    # Pollers, claimer and sweeper run on this instance (the API works either way).
    pollers: bool = True
    # Tasks one owner may have in flight (submitting, pending, running): 429 past it.
    max_in_flight_per_owner: PositiveInt = 1000
    # A task still live this long after it was recorded ends TIMED_OUT.
    deadline_s: PositiveFloat = 6 * 3600.0
    # Parameters larger than this (JSON bytes) are refused before anything is recorded.
    max_params_bytes: Annotated[int, msgspec.Meta(ge=256, le=1024 * 1024)] = 64 * 1024
    # A Transient submit retries on another account this many times.
    submit_retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 2
    # How long a submit may wait for a free account slot.
    submit_wait_ms: Annotated[int, msgspec.Meta(ge=0, le=60_000)] = 2000
    # A SUBMITTING row older than this is resolved by the sweeper (looked up, or
    # FAILED submit_outcome_unknown). Must exceed upstream.submit_timeout_s.
    submitting_stale_s: PositiveFloat = 300.0
    # A poller's lease on its tasks; renewed every renew_every_s (one row per instance).
    lease_s: PositiveFloat = 30.0
    renew_every_s: PositiveFloat = 10.0
    # Claim up to claim_batch due tasks per round, a round every claim_interval_s
    # (at once again when a round came back full), holding at most max_held.
    claim_batch: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500
    claim_interval_s: PositiveFloat = 0.5
    max_held: PositiveInt = 20_000
    # Polls in flight on this instance, and per upstream account.
    poll_concurrency: PositiveInt = 256
    per_account_concurrency: PositiveInt = 32
    # Backoff by age: base interval (or the platform's, when larger) up to the max.
    poll_base_interval_s: PositiveFloat = 2.0
    poll_max_interval_s: PositiveFloat = 60.0
    poll_timeout_s: PositiveFloat = 30.0
    # Poll no more often than the platform recommends (its poll interval, or the
    # delay a status answer names). Off only for tests and benchmarks.
    honour_platform_interval: bool = True
    sweep_interval_s: PositiveFloat = 5.0
    # GET /v1/tasks/{id}?refresh=true reads the upstream when the row is older than this.
    refresh_after_s: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    # Price ratio per group, in permille (1000 = list price); groups not named pay 1000.
    group_ratios: dict[str, Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]] = msgspec.field(
        default_factory=dict
    )

    def __post_init__(self) -> None:
        if self.renew_every_s >= self.lease_s:
            raise ValueError("renew_every_s: must be shorter than lease_s")


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The whole configuration, built once at start and passed down."""

    database: DatabaseConfig = msgspec.field(default_factory=DatabaseConfig)
    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    crypto: CryptoConfig = msgspec.field(default_factory=CryptoConfig)
    supervisor: SupervisorConfig = msgspec.field(default_factory=SupervisorConfig)
    health: HealthConfig = msgspec.field(default_factory=HealthConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    outbox: OutboxConfig = msgspec.field(default_factory=OutboxConfig)
    upstream: UpstreamConfig = msgspec.field(default_factory=UpstreamConfig)
    tasks: TasksConfig = msgspec.field(default_factory=TasksConfig)


_SECTIONS: dict[str, type[msgspec.Struct]] = {
    f.name: f.type
    for f in msgspec.structs.fields(Config)  # type: ignore[misc]
}


def find_config_file(
    explicit: str | os.PathLike[str] | None, env: Mapping[str, str]
) -> Path | None:
    """The file to read, or None for all defaults; an explicit path must exist."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError("--config", f"no such file: {path}")
        return path
    if env.get(ENV_PREFIX + "CONFIG"):
        path = Path(env[ENV_PREFIX + "CONFIG"])
        if not path.is_file():
            raise ConfigError(ENV_PREFIX + "CONFIG", f"no such file: {path}")
        return path
    return next((p for p in DEFAULT_PATHS if p.is_file()), None)


def _is_text(field_type: Any) -> bool:
    """Whether a config field holds text (``str``, ``Annotated[str, ...]``, ``str | None``)."""
    if get_origin(field_type) is Annotated:
        field_type = get_args(field_type)[0]
    if field_type is str:
        return True
    args = get_args(field_type)
    return bool(args) and str in args and all(a in (str, type(None)) for a in args)


def _env_value(raw: str, field_type: Any) -> Any:
    """One rule: a TOML value; for text keys, anything that is not a TOML string is bare text."""
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
    if _is_text(field_type) and not isinstance(value, str):
        return raw  # `12345` for a key prefix is the text "12345"
    return value


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    # Longest section names first so that a section whose name prefixes another
    # (none today) would still match correctly.
    sections = sorted(_SECTIONS, key=len, reverse=True)
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        if name in NON_CONFIG_VARIABLES or name.startswith(TEST_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section = next((s for s in sections if rest.startswith(s + "_")), None)
        if section is None:
            raise ConfigError(
                name,
                "unknown variable: not a config key (STATIONMASTER_<SECTION>_<KEY>, sections "
                + ", ".join(sorted(_SECTIONS))
                + ") nor one of "
                + ", ".join(sorted(NON_CONFIG_VARIABLES)),
            )
        key = rest[len(section) + 1 :]
        fields = {f.name: f.type for f in msgspec.structs.fields(_SECTIONS[section])}
        if key not in fields:
            raise ConfigError(name, f"unknown key {section}.{key}")
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(section, "must be a table")
        data[section][key] = _env_value(raw, fields[key])


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Read, merge and validate; raises ConfigError naming the key and the reason."""
    env = os.environ if env is None else env
    file = find_config_file(path, env)
    data: dict[str, Any] = {}
    if file is not None:
        try:
            data = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(file), f"not valid TOML: {exc}") from exc
        except OSError as exc:
            raise ConfigError(str(file), f"cannot read: {exc.strerror}") from exc
    _apply_env(data, env)
    return parse_config(data)


def parse_config(data: Mapping[str, Any]) -> Config:
    """Validate an already-merged mapping into a Config."""
    try:
        return msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        key, reason = field_error(exc)
        if reason == "unknown field":
            reason = "unknown key"
        raise ConfigError(key, reason) from None
