"""Config: every kind of bad value names its key; env overrides win over the file.

Bad inputs tried: out-of-range int, wrong type, unknown key (file and env), unknown
section, a table given as a scalar, an enum-like string outside its set, a too-short
token, pool_min > pool_max, unparsable TOML, a missing explicit file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from accounts.errors import ConfigError
from scheduler.cli.entry import main
from scheduler.core.config import load_config, parse_config


@pytest.mark.parametrize(
    ("data", "key", "reason_part"),
    [
        ({"http": {"port": 70000}}, "http.port", "<= 65535"),
        ({"http": {"port": "eighty"}}, "http.port", "Expected `int`"),
        ({"http": {"portt": 1}}, "http.portt", "unknown key"),
        ({"nonsense": {}}, "nonsense", "unknown key"),
        ({"http": 3}, "http", "Expected `object`"),
        ({"log": {"level": "loud"}}, "log.level", "must be one of"),
        ({"auth": {"admin_tokens": ["short"]}}, "auth.admin_tokens[0]", "length >= 16"),
        ({"database": {"pool_min": 20, "pool_max": 5}}, "database.pool_min", "must not exceed"),
        ({"supervisor": {"max_restarts": 0}}, "supervisor.max_restarts", ">= 1"),
        ({"http": {"drain_timeout_s": -1}}, "http.drain_timeout_s", "> 0"),
        ({"crypto": {"keys": ["not-a-key"]}}, "crypto.keys[0]", "length >= 44"),
        ({"http": {"data_port": 70000}}, "http.data_port", "<= 65535"),
        ({"http": {"data_port": 8081}}, "http.data_port", "must differ from port"),
        ({"http": {"port": 9000, "data_port": 9000}}, "http.data_port", "must differ from port"),
        ({"http": {"max_header_bytes": 100}}, "http.max_header_bytes", ">= 1024"),
        ({"http": {"max_headers": 0}}, "http.max_headers", ">= 8"),
        ({"http": {"read_timeout_s": 0}}, "http.read_timeout_s", "> 0"),
    ],
)
def test_bad_values_name_their_key(data: dict, key: str, reason_part: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.key == key
    assert reason_part in info.value.reason


def test_env_overrides_win_over_file(tmp_path: Path) -> None:
    file = tmp_path / "sm.toml"
    file.write_text(
        '[http]\nport = 9000\nhost = "127.0.0.1"\n'
        '[auth]\nadmin_tokens = ["from-the-file-xxxxxxxx"]\n'
    )
    env = {
        "STATIONMASTER_HTTP_PORT": "9100",
        "STATIONMASTER_AUTH_ADMIN_TOKENS": '["from-the-env-xxxxxxxxx"]',
        "STATIONMASTER_REDIS_KEY_PREFIX": "12345",  # a string key keeps digits as text
        "STATIONMASTER_STATE_DIR": "/not/a/config/key",  # allow-listed: not a config key
        "STATIONMASTER_TEST_PG_DSN": "postgresql://x@127.0.0.1/y",  # reserved for the tests
    }
    config = load_config(file, env)
    assert config.http.port == 9100
    assert config.http.host == "127.0.0.1"
    assert config.auth.admin_tokens == ["from-the-env-xxxxxxxxx"]
    assert config.redis.key_prefix == "12345"


def test_env_unknown_key_and_bad_value() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"STATIONMASTER_HTTP_PROT": "1"})
    assert info.value.key == "STATIONMASTER_HTTP_PROT"
    assert "http.prot" in info.value.reason
    with pytest.raises(ConfigError) as info:
        load_config(None, {"STATIONMASTER_HTTP_PORT": "-4"})
    assert info.value.key == "http.port"


@pytest.mark.parametrize("name", ["STATIONMASTER_POSTGRES_DSN", "STATIONMASTER_NOSUCH_KEY"])
def test_env_unknown_variables_are_refused_by_name(name: str) -> None:
    """A mistyped variable is an error naming it, like an unknown key in the file."""
    with pytest.raises(ConfigError) as info:
        load_config(None, {name: "postgresql://127.0.0.1/x"})
    assert info.value.key == name
    assert "unknown variable" in info.value.reason


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),  # bare text
        ('"redis://127.0.0.1:6379/0"', "redis://127.0.0.1:6379/0"),  # a TOML string
        ("'redis://127.0.0.1:6379/0'", "redis://127.0.0.1:6379/0"),  # a TOML literal string
    ],
)
def test_env_string_keys_take_bare_and_toml_strings(raw: str, expected: str) -> None:
    config = load_config(None, {"STATIONMASTER_REDIS_URL": raw})
    assert config.redis.url == expected
    # Not a string key: the value is TOML (a quoted number is not a port).
    with pytest.raises(ConfigError) as info:
        load_config(None, {"STATIONMASTER_HTTP_PORT": '"9000"'})
    assert info.value.key == "http.port"


def test_cli_refuses_an_unknown_variable_with_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATIONMASTER_POSTGRES_DSN", "postgresql://127.0.0.1/x")
    assert main(["check"]) == 2
    assert "STATIONMASTER_POSTGRES_DSN" in capsys.readouterr().err


def test_config_file_lookup(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.toml", {})
    assert "no such file" in info.value.reason
    broken = tmp_path / "broken.toml"
    broken.write_text("[http\nport=1")
    with pytest.raises(ConfigError) as info:
        load_config(broken, {})
    assert "not valid TOML" in info.value.reason
    good = tmp_path / "good.toml"
    good.write_text("[http]\nport = 1234\n")
    assert load_config(None, {"STATIONMASTER_CONFIG": str(good)}).http.port == 1234


def test_cli_exits_2_on_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "sm.toml"
    file.write_text("[http]\nport = 99999\n")
    monkeypatch.delenv("STATIONMASTER_CONFIG", raising=False)
    assert main(["--config", str(file), "run"]) == 2
    err = capsys.readouterr().err
    assert "http.port" in err


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"database": {"dsn": "http://127.0.0.1:5432/x"}}, "database.dsn"),
        ({"redis": {"url": "nonsense://127.0.0.1"}}, "redis.url"),
    ],
)
def test_store_urls_are_checked_at_start(data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.key == key
    assert "must start with" in info.value.reason
