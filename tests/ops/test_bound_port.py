"""``mtproxy links`` uses the port ``mtproxy run`` actually bound, and says when it guesses."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from system_tools import require_binary, require_root, unavailable

from mtproxy.ops.bound import BOUND_FILE, read_bound
from ops.helpers import ROOT, SECRET, ProxyProc

PYTHON = [sys.executable, "-m", "mtproxy"]
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"))


def links(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [*PYTHON, "links", "--data-dir", str(data_dir), "--public-host", "127.0.0.1",
           "--secret", SECRET.hex(), "--modes", "classic", "--no-qr", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=ENV)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.timeout_s(60)
async def test_links_follow_the_port_run_bound(tmp_path: Path, workers: int) -> None:
    data = tmp_path / "data"
    proxy = await ProxyProc.start(tmp_path, "--workers", str(workers))  # --listen 127.0.0.1:0
    try:
        bound = read_bound(data)
        assert bound is not None and bound.pid == proxy.pid
        assert bound.listen == (("127.0.0.1", proxy.port),)
        result = await asyncio.to_thread(links, data)
        assert result.returncode == 0, result.stderr
        assert f"tg://proxy?server=127.0.0.1&port={proxy.port}&secret=" in result.stdout
        assert f"pid {proxy.pid}, running" in result.stderr
        # --listen HOST:0 names no port either: the record decides.
        result = await asyncio.to_thread(links, data, "--listen", "127.0.0.1:0")
        assert f"port={proxy.port}&" in result.stdout
        # An explicit port wins, with nothing to explain.
        result = await asyncio.to_thread(links, data, "--port", "993")
        assert "port=993&" in result.stdout and result.stderr == ""
    finally:
        assert await proxy.stop() == 0
    result = await asyncio.to_thread(links, data)
    assert f"port={proxy.port}&" in result.stdout
    assert "not running now" in result.stderr


def test_without_a_record_443_is_called_a_guess(tmp_path: Path) -> None:
    result = links(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "port=443&" in result.stdout
    assert "is a guess" in result.stderr and "--port" in result.stderr
    (tmp_path / BOUND_FILE).write_text("{not json")
    result = links(tmp_path)
    assert "port=443&" in result.stdout and "is a guess" in result.stderr


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A data directory an unprivileged user can write (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="mtproxy-bound-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_links_after_run_fell_back_to_8443_without_root(shared_dir: Path) -> None:
    """The issue's case: no root, 443 refused, run listens on 8443; links must say 8443."""
    unshare = require_binary("unshare", "util-linux")
    require_binary("ip", "iproute2")
    setpriv = require_binary("setpriv", "util-linux")
    require_root("to create a network namespace and drop to another user")
    drop = [setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    probe = subprocess.run([*drop, sys.executable, "-c", "import mtproxy"], env=ENV,
                           capture_output=True, timeout=30)  # fmt: skip
    if probe.returncode != 0:
        unavailable(f"an unprivileged user cannot run this checkout's Python here: "
                    f"{probe.stderr.decode(errors='replace').strip()[-200:]}")
    script = 'ip link set lo up && exec "$@"'
    cmd = [unshare, "-n", "sh", "-c", script, "sh", *drop, *PYTHON, "run",
           "--data-dir", str(shared_dir),
           "--public-host", "127.0.0.1", "--secret", SECRET.hex(), "--modes", "classic",
           "--stats", "off"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "secret 1:" in first, first + proc.stderr.read() if proc.stderr else ""
        shown = proc.stdout.readline()
        assert "port=8443&" in shown
        bound = read_bound(shared_dir)
        assert bound is not None and {port for _, port in bound.listen} == {8443}
        result = links(shared_dir)
        assert "port=8443&" in result.stdout
        assert "port 8443 is where mtproxy run" in result.stderr
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
