"""The simulator's own contract: bad knobs are clear errors, the CLI serves, control works."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from accounts.errors import ConfigError
from scheduler.upstream.simulator import build_knobs
from scheduler.upstream.simulator import cli as simulator_cli

from .simsupport import SimControl, SimError, start_simulator

BAD_KNOBS = [
    ({"no_such_knob": 1}, "no_such_knob", "unknown knob"),
    ({"rate_429": 1.5}, "rate_429", "<= 1.0"),
    ({"rate_429": "lots"}, "rate_429", "Expected `float`"),
    ({"rate_429": 0.6, "hang_rate": 0.6}, "rate_429", "at most 1"),
    ({"duration_min_s": 10, "duration_max_s": 1}, "duration_min_s", "must not exceed"),
    ({"faults_on": ["fetch", "teleport"]}, "faults_on[1]", "Invalid enum value"),
    ({"latency_s": -1}, "latency_s", ">= 0"),
    ({"qps_limit": 0}, "qps_limit", "> 0"),
]


@pytest.mark.parametrize(("knobs", "field", "reason"), BAD_KNOBS)
def test_bad_knobs_name_the_knob(knobs: dict[str, object], field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_knobs(knobs)
    assert info.value.key == field and reason in info.value.reason


def test_control_refuses_bad_knobs_and_changes_nothing(sim: tuple[str, SimControl]) -> None:
    _url, control = sim
    before = control.knobs()
    for knobs, field, reason in BAD_KNOBS:
        with pytest.raises(SimError) as info:
            control.set(**knobs)
        assert info.value.status == 422 and info.value.field == field
        assert reason in (info.value.reason or "")
    assert control.knobs() == before
    response = httpx.patch(f"{_url}/_sim/knobs", content=b"[1, 2]", trust_env=False)
    assert response.status_code == 400
    with pytest.raises(SimError):
        control.advance(-5)
    with pytest.raises(SimError):
        control.inject(200)


def _simulate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scheduler.upstream.simulator", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "bogus=1"], "invalid knob: bogus: unknown knob"),
        (["--set", "failure_rate=2"], "invalid knob: failure_rate: Expected `float` <= 1.0"),
        (["--set", "failure_rate"], "expected name=value"),
        (["--knobs", "/nonexistent.toml"], "cannot read"),
        (["--port", "70000"], "--port: must be between 0 and 65535"),
    ],
)
def test_simulate_cli_bad_input_exits_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert simulator_cli.main(["--port", "0", *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_simulate_process_with_knobs_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "k.toml").write_text("[knobs]\nfailure_rate = 0.25\nfaults_on = ['fetch']\n")
    (tmp_path / "bad.toml").write_text("failure_rate = 'x'\n")
    bad = _simulate("--knobs", str(tmp_path / "bad.toml"))
    assert bad.returncode == 2 and "failure_rate: Expected `float`" in bad.stderr
    assert "Traceback" not in bad.stderr
    with start_simulator(process=True) as (url, control):
        assert control.process is not None
        assert control.knobs()["failure_rate"] == 0.0
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "scheduler.upstream.simulator", "--port", "0"),
            *("--knobs", str(tmp_path / "k.toml"), "--set", "rate_429=0.1"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().rsplit(" ", 1)[1].strip()
        knobs = httpx.get(f"{url}/_sim/knobs", trust_env=False).json()
        assert knobs["failure_rate"] == 0.25 and knobs["rate_429"] == 0.1
        assert knobs["faults_on"] == ["fetch"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        assert proc.stdout is not None
        proc.stdout.close()


def test_unknown_path_and_missing_credentials(sim: tuple[str, SimControl]) -> None:
    url, _control = sim
    assert httpx.get(f"{url}/nope", trust_env=False).status_code == 404
    answer = httpx.get(f"{url}/api/v1/tasks/x", trust_env=False)
    assert answer.status_code == 401 and answer.json()["code"] == "InvalidApiKey"
