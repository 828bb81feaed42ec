"""One run of the censor's lab (lab.py) per test session, inside a private network namespace.

nginx, ``unshare`` and ``ip`` are system programs (``.ci/run`` installs them; locally a
missing one skips these tests with the command that installs it). TDLib comes from the
``tdjson`` package on PyPI (a test dependency).
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


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    unshare = require_binary("unshare", "util-linux")
    require_binary("ip", "iproute2")
    require_binary("nginx", "nginx")
    workdir = tmp_path_factory.mktemp("lab")
    proc = subprocess.run(
        [unshare, "-n", sys.executable, str(HERE / "lab.py"), str(workdir)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"the lab failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    results: dict[str, Any] = json.loads(proc.stdout)
    return results
