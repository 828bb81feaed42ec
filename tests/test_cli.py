"""The ``mtproxy`` command as users run it: zero-config start, config precedence, errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from system_tools import network_namespace, require_binary

from mtproxy.cli import main
from mtproxy.protocol.secret import Mode, parse_secret

PYTHON = [sys.executable, "-m", "mtproxy"]


def env_for(data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["MTPROXY_DATA_DIR"] = str(data_dir)
    env.pop("XDG_DATA_HOME", None)
    return env


def run_cli(
    args: list[str], data_dir: Path, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        PYTHON + args, env=env_for(data_dir), capture_output=True, text=True, timeout=timeout
    )


class Running:
    """A ``mtproxy run`` process whose stdout is read until its links are printed."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []

    def read_links(self, timeout: float = 20, last: str = "tls") -> list[str]:
        """Lines up to the https link of mode ``last`` (links come tls, secure, classic)."""
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line.rstrip("\n"))
            if (
                line.strip().startswith("https://t.me/")
                and "secret=" in line
                and any(f" {last} " in f" {x} " for x in self.lines[-2:])
            ):
                return self.lines
        raise AssertionError(f"no links printed: {self.lines} {self.stop()}")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


def secrets_in(lines: list[str]) -> set[str]:
    return {line.split("secret=")[1] for line in lines if "secret=" in line}


def test_zero_config_start_in_a_fresh_network_namespace(tmp_path: Path) -> None:
    """No options at all: port 443 on all addresses, a generated secret, links printed."""
    netns = network_namespace()
    require_binary("ip", "iproute2")
    cmd = [*netns, "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *PYTHON, "run"]
    first = Running(cmd, env_for(tmp_path))
    lines = first.read_links()
    err = first.stop()
    assert first.proc.returncode == 0, err
    assert "listening on 0.0.0.0:443, [::]:443" in err
    assert "generated a new secret" in err
    stored = (tmp_path / "secret").read_text().strip()
    assert len(stored) == 32
    shown = secrets_in(lines)
    modes = {parse_secret(s).mode for s in shown}
    assert modes == {Mode.TLS}  # fake TLS alone by default (README, Hard to probe)
    assert {parse_secret(s).key.hex() for s in shown} == {stored}
    assert all(
        line.split()[-1].startswith(("tg://", "https://t.me/"))
        for line in lines
        if "secret=" in line
    )
    # A restart keeps the secret: links users already have stay valid.
    second = Running(cmd, env_for(tmp_path))
    again = second.read_links()
    second.stop()
    assert secrets_in(again) == shown


def test_config_file_and_flags(tmp_path: Path) -> None:
    config = tmp_path / "mtproxy.toml"
    file_secret = "11" * 16
    flag_secret = "22" * 16
    config.write_text(
        f'listen = ["127.0.0.1:0"]\nsecrets = ["{file_secret}"]\nmodes = ["tls"]\n'
        'tls_domains = ["cdn.example.net"]\npublic_host = "203.0.113.7"\n'
    )
    proc = Running(
        [
            *PYTHON,
            "run",
            "--config",
            str(config),
            "--secret",
            flag_secret,
            "--modes",
            "classic,tls",
            # The proxy checks its mask host at start-up: keep that off the network.
            "--mask",
            "off",
        ],
        env_for(tmp_path),
    )
    try:
        lines = proc.read_links(last="classic")
    finally:
        proc.stop()
    shown = secrets_in(lines)
    assert {parse_secret(s).key.hex() for s in shown} == {flag_secret}
    assert {parse_secret(s).mode for s in shown} == {Mode.CLASSIC, Mode.TLS}
    assert any("server=203.0.113.7" in line for line in lines)
    assert any(parse_secret(s).domain == "cdn.example.net" for s in shown)
    assert not (tmp_path / "secret").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--listen", "1.2.3.4"], "--listen: '1.2.3.4': missing port"),
        (["--listen", "[::1:80"], "missing ']'"),
        (["--secret", "abc"], "--secret: 'abc' is not a proxy secret"),
        (["--modes", "classic,fast"], "unknown mode 'fast'"),
        (["--tls-domain", "not a domain"], "is not a domain name"),
        (["--mask", "example.com:99999"], "port must be 1-65535"),
        (["--dc", "2:149.154.167.51"], "expected ID=HOST:PORT"),
        (["--dc", "x=1.2.3.4:443"], "is not an integer"),
        (["--handshake-timeout", "0"], "out of range"),
        (["--replay-cache-size", "lots"], "is not an integer"),
        (["--config", "/nonexistent/mtproxy.toml"], "config file not found"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path: Path, args: list[str], needle: str) -> None:
    result = run_cli(["run", *args], tmp_path)
    assert result.returncode == 2
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('listen = "127.0.0.1:443"\nlisen = 1\n', "unknown setting; did you mean 'listen'?"),
        ("listen = [\n", "not valid TOML"),
        ('secrets = ["zz"]\n', "secrets: 'zz' is not a proxy secret"),
        ("idle_timeout = -1\n", "idle_timeout: -1 is out of range"),
    ],
)
def test_bad_config_file_is_one_clear_line(tmp_path: Path, content: str, needle: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(content)
    result = run_cli(["run", "--config", str(config)], tmp_path)
    assert result.returncode == 2
    assert needle in result.stderr
    assert str(config) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_corrupt_secret_file(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("not-a-secret\n")
    result = run_cli(["run", "--listen", "127.0.0.1:0"], tmp_path)
    assert result.returncode == 1
    assert "is corrupt" in result.stderr and "delete it" in result.stderr
    assert "Traceback" not in result.stderr


def test_busy_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(["run", "--listen", f"127.0.0.1:{port}", "--secret", "33" * 16], tmp_path)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_module_and_command_agree(tmp_path: Path) -> None:
    via_module = run_cli(["--version"], tmp_path)
    script = Path(sys.executable).parent / "mtproxy"
    via_script = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert via_module.returncode == via_script.returncode == 0
    assert via_module.stdout == via_script.stdout
    assert via_module.stdout.startswith("mtproxy ")


def test_generate_secret(tmp_path: Path) -> None:
    plain = run_cli(["generate-secret"], tmp_path).stdout.strip()
    assert parse_secret(plain).mode is Mode.CLASSIC
    tls = run_cli(["generate-secret", "--tls", "www.example.com"], tmp_path).stdout.strip()
    parsed = parse_secret(tls)
    assert parsed.mode is Mode.TLS and parsed.domain == "www.example.com"
    bad = run_cli(["generate-secret", "--tls", "bad domain"], tmp_path)
    assert bad.returncode == 2 and "is not a domain name" in bad.stderr
    dd = run_cli(["generate-secret", "--dd"], tmp_path).stdout.strip()
    assert parse_secret(dd).mode is Mode.SECURE and dd.startswith("dd")


def test_no_command_prints_the_help(tmp_path: Path) -> None:
    result = run_cli([], tmp_path)
    assert result.returncode == 2
    assert result.stdout.startswith("usage: mtproxy") and "generate-secret" in result.stdout


def test_ctrl_c_in_a_command_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted() -> bytes:
        raise KeyboardInterrupt

    monkeypatch.setattr("mtproxy.cli.secrets.generate_secret", interrupted)
    assert main(["generate-secret"]) == 130
