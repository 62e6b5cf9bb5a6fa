"""deploy/: the example config documents every key truly; the unit file has what we rely on."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import msgspec
import pytest

from scheduler.cli.entry import build_parser
from scheduler.core.config import Config, load_config

from ..support import ROOT

EXAMPLE = ROOT / "deploy" / "stationmaster.toml.example"
UNIT = ROOT / "deploy" / "stationmaster.service"


def test_example_config_documents_every_key_with_its_default() -> None:
    """Every section and key of Config appears, commented, with the real default."""
    data = tomllib.loads(EXAMPLE.read_text())
    for section in msgspec.structs.fields(Config):
        assert section.name in data, f"[{section.name}] missing from the example"
        keys = {f.name for f in msgspec.structs.fields(section.type)}
        assert set(data[section.name]) == keys, section.name
    # The values shown are the defaults, so the file loads to the default Config.
    assert load_config(EXAMPLE, {}) == Config()
    lines = EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith(("#", "[")):
            assert lines[i - 1].startswith("#"), f"no comment above: {line}"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def _seconds(value: str) -> float:
    assert value.endswith("s"), value
    return float(value[:-1])


def test_unit_file_is_notify_hardened_and_outlasts_the_drain() -> None:
    service = _unit()["Service"]
    assert service["Type"] == "notify"
    assert _seconds(service["WatchdogSec"]) > 2 * Config().health.max_loop_lag_s
    assert service["Restart"] == "on-failure"
    assert service["EnvironmentFile"].startswith("/etc/stationmaster/")
    assert service.get("DynamicUser") == "yes" or service.get("User")
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
    }.items():
        assert service[key] == value, key
    http = Config().http
    assert _seconds(service["TimeoutStopSec"]) > http.drain_delay_s + http.drain_timeout_s + 5
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/stationmaster")
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run" and args.config == "/etc/stationmaster/stationmaster.toml"


def test_unit_file_passes_systemd_analyze(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    unit = tmp_path / "stationmaster.service"
    # verify insists the ExecStart binary exists; the real one is installed later.
    unit.write_text(UNIT.read_text().replace("/usr/bin/stationmaster", "/bin/true"))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "stationmaster.service" in line
    ]
    assert result.returncode == 0 and not problems, problems
