"""Every benchmark script still runs, at its smallest sizes (no figure is checked).

The benchmarks are not part of the suite, so nothing else would notice when a change
breaks one; `mtproxy run` turning to fake TLS only by default left three of them
waiting for ever on classic clients the proxy no longer took. Each run here is
bounded in time and must print its table.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from system_tools import network_namespace, require_root

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"


def bench(script: str, *args: str, timeout: float = 180) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("MTPROXY_BENCH_C", None)
    env.pop("MTPROXY_BENCH_ALX", None)
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@pytest.mark.timeout_s(240)
def test_the_performance_table() -> None:
    out = bench("run.py", "--quick", "--event-loop", "asyncio")
    for row in ("download, re-encrypting, fake TLS", "upload, classic",
                "CPU per handshake, fake TLS", "MiB per proxy CPU-s, upload"):  # fmt: skip
        assert row in out, out


@pytest.mark.timeout_s(240)
def test_workers_and_user_cost() -> None:
    assert "2 vs 1: throughput" in bench("workers.py", "--quick")
    out = bench("user_cost.py", "--bytes", str(8 << 20), "--echoes", "200", "--rounds", "1")
    assert "user, rate limits not hit" in out, out


@pytest.mark.timeout_s(240)
def test_stalled_sessions() -> None:
    out = bench("stalled.py", "--count", "10", "--event-loop", "asyncio")
    assert "download: RSS per stalled session at 10" in out, out
    assert "upload: RSS after they closed" in out, out


@pytest.mark.timeout_s(240)
def test_ops_rows() -> None:
    out = bench("ops_rows.py", "--event-loop", "asyncio", "--rows", "2", "--sessions", "30")
    assert "30 served" in out, out


@pytest.mark.timeout_s(300)
def test_middle_and_direct_against_peers_run_with_ours_alone() -> None:
    """The peers (the official C server, alexbers' proxy) are local builds that are
    never part of the repository; without them the scripts measure ours alone."""
    out = bench("middle_vs_c.py", "--quick", "--mode", "middle", "--loops", "asyncio")
    assert "upload, 50 clients, MB per proxy CPU-s" in out, out
    # Direct mode runs in a private namespace with Telegram's DC addresses on loopback.
    network_namespace()
    require_root("the direct-mode comparison runs `unshare -n` itself")
    out = bench("middle_vs_c.py", "--quick", "--mode", "direct", "--loops", "asyncio")
    assert "upload, MB per proxy CPU-s" in out, out
