"""deploy/systemd/mtproxy.service: systemd accepts it, and its stop and privilege settings
agree with the proxy's own (drain grace, the supervisor's kill deadline, port 443)."""

from __future__ import annotations

import configparser
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from system_tools import require_binary

from mtproxy.cli import build_parser
from mtproxy.config.settings import Settings, load_settings
from mtproxy.ops.workers import KILL_AFTER_GRACE

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "mtproxy.service"
INSTALLED = "/opt/mtproxy/bin/mtproxy"


def service() -> dict[str, list[str]]:
    """The [Service] section; repeated keys keep every value."""
    values: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def local_copy(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with ExecStart pointing at this checkout's command (verify wants it to exist)."""
    here = Path(sys.executable).with_name("mtproxy")
    if not here.exists():
        pytest.fail(f"{here} does not exist: install the project (pip install -e .)")
    copy = tmp_path / "mtproxy.service"
    copy.write_text((text or UNIT.read_text()).replace(INSTALLED, str(here)))
    return copy


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    tool = require_binary("systemd-analyze", "systemd")
    return subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    result = verify(local_copy(tmp_path))
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """systemd only warns about a bad value and exits 0: the check above reads stderr too."""
    broken = UNIT.read_text().replace("KillMode=mixed", "KillMode=mixd")
    result = verify(local_copy(tmp_path, broken))
    assert "mixd" in result.stderr


def test_exposure_score_stays_low(tmp_path: Path) -> None:
    tool = require_binary("systemd-analyze", "systemd")
    result = subprocess.run(
        [tool, "security", "--offline=yes", str(local_copy(tmp_path))],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def exec_start_settings() -> Settings:
    words = shlex.split(service()["ExecStart"][0])
    assert words[0] == INSTALLED and words[1] == "run"
    args = build_parser().parse_args(words[1:])
    cli = {k: v for k, v in vars(args).items() if k not in ("config", "handler")}
    return load_settings(cli)


def test_stop_timeout_outlasts_the_drain() -> None:
    """systemd's SIGKILL must come after the drain and after the supervisor's own kill."""
    unit = service()
    assert unit["KillMode"] == ["mixed"]  # SIGTERM to the supervisor; it orders the workers
    assert unit.get("KillSignal", ["SIGTERM"]) == ["SIGTERM"]
    grace = exec_start_settings().shutdown_grace
    assert grace == 20
    timeout = float(unit["TimeoutStopSec"][0])
    assert timeout > grace + KILL_AFTER_GRACE


def test_no_root_but_port_443() -> None:
    unit = service()
    assert unit.get("User", ["x"]) != ["root"]
    assert unit["DynamicUser"] == ["yes"]
    assert "CAP_NET_BIND_SERVICE" in unit["AmbientCapabilities"][0].split()
    assert unit["CapabilityBoundingSet"][0].split() == ["CAP_NET_BIND_SERVICE"]
    assert unit["NoNewPrivileges"] == ["yes"]
    assert exec_start_settings().listen == Settings().listen  # the default: 0.0.0.0:443, [::]:443


def test_unit_is_plain_ini() -> None:
    """No duplicate sections or stray syntax that a careless edit could add."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    assert parser.sections() == ["Unit", "Service", "Install"]
