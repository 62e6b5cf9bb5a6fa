"""The ``dev`` profile: how the CLI in another shell finds a running ``stationmaster dev``.

``stationmaster dev`` writes ``dev-profile.toml`` (mode 0600) into its state
directory once the daemon is serving: the PostgreSQL and Redis socket URLs,
the key prefix, the bound address, the tokens and the crypto key, i.e. every
config key a CLI command needs to reach what ``dev`` runs. A CLI command given
no config at all (no ``--config``, no ``$STATIONMASTER_CONFIG``, no
``./stationmaster.toml``, no ``/etc/stationmaster/stationmaster.toml``) reads
that profile from the default state directory (``$STATIONMASTER_STATE_DIR``,
else the XDG state directory) and says so on stderr. ``STATIONMASTER_*``
variables still override it, like any config file.

The profile stays after ``dev`` stops (the next run rewrites it), so a command
run then fails naming the socket it tried; the note says ``dev`` is not running.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..core.config import Config

STATE_ENV = "STATIONMASTER_STATE_DIR"
PROFILE_FILE = "dev-profile.toml"


def default_state_dir(env: Mapping[str, str]) -> Path:
    """``$STATIONMASTER_STATE_DIR``, else the XDG per-user state directory."""
    if env.get(STATE_ENV):
        return Path(env[STATE_ENV]).expanduser()
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "stationmaster"


def _toml(value: Any) -> str:
    # JSON strings, integers and arrays of strings are valid TOML as written.
    return json.dumps(value)


def write_profile(state_dir: Path, config: Config, *, port: int, data_port: int) -> Path:
    """Write the profile for ``config`` (the dev config) served on ``port`` (control plane)
    and ``data_port`` (data plane); returns its path.

    Written to a temporary file first and renamed, so a CLI never reads half of it.
    """
    sections: dict[str, dict[str, Any]] = {
        "database": {"dsn": config.database.dsn},
        "redis": {"url": config.redis.url, "key_prefix": config.redis.key_prefix},
        "http": {
            "host": config.http.host,
            "port": port,
            "data_host": config.http.data_host,
            "data_port": data_port,
        },
        "auth": {
            "admin_tokens": list(config.auth.admin_tokens),
            "gateway_tokens": list(config.auth.gateway_tokens),
        },
        "crypto": {"keys": list(config.crypto.keys)},
    }
    lines = [
        "# Written by `stationmaster dev` for the CLI in other shells; rewritten on every start.",
        f"# dev pid = {os.getpid()}",
    ]
    for section, values in sections.items():
        lines.append(f"\n[{section}]")
        lines.extend(f"{key} = {_toml(value)}" for key, value in values.items())
    path = state_dir / PROFILE_FILE
    tmp = path.with_name(PROFILE_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def find_profile(env: Mapping[str, str]) -> Path | None:
    """The profile in the default state directory, if there is one."""
    path = default_state_dir(env) / PROFILE_FILE
    return path if path.is_file() else None


def dev_running(profile: Path) -> bool:
    """Whether the process that wrote ``profile`` is still alive (a hint, not a lock)."""
    try:
        for line in profile.read_text().splitlines()[:3]:
            if line.startswith("# dev pid = "):
                os.kill(int(line.removeprefix("# dev pid = ")), 0)
                return True
    except PermissionError:
        return True  # alive, owned by someone else
    except (OSError, ValueError):
        return False
    return False


def profile_note(profile: Path) -> str:
    """The line a command prints when it uses the profile."""
    note = f"using the `stationmaster dev` profile {profile}"
    if not dev_running(profile):
        note += " (its dev process is not running: start `stationmaster dev`)"
    return note
