"""The censor's lab (lab.py), run inside a private network namespace: once per test
session for the quick probes, once more for the timers (``--timers``).

nginx, ``unshare``, ``ip`` and ``tcpdump`` are system programs (``.ci/run`` installs them;
locally a missing one skips these tests with the command that installs it). TDLib comes
from the ``tdjson`` package on PyPI (a test dependency).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from system_tools import require_binary

HERE = Path(__file__).resolve().parent


def run_lab(workdir: Path, *args: str) -> dict[str, Any]:
    unshare = require_binary("unshare", "util-linux")
    require_binary("ip", "iproute2")
    require_binary("nginx", "nginx")
    proc = subprocess.run(
        [unshare, "-n", sys.executable, str(HERE / "lab.py"), str(workdir), *args],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"the lab failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    results: dict[str, Any] = json.loads(proc.stdout)
    return results


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_lab(tmp_path_factory.mktemp("lab"))


@pytest.fixture(scope="session")
def timers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    require_binary("tcpdump", "tcpdump")
    return run_lab(tmp_path_factory.mktemp("timers"), "--timers")
