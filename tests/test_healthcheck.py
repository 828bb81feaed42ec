"""``mtproxy healthcheck`` against a real proxy on loopback, and where it looks.

It reads the main process's command line with its own small reader (the full option
table is too slow to import every few seconds), so the cases below hold that reader to
what the entrypoint really starts: the ``--stats``/``--listen`` of its "Runs as" line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fakes import TAG_INTERMEDIATE, FakeDC, echo_handler, open_obfs2

from mtproxy.cli.healthcheck import DEFAULT_LISTEN, DEFAULT_STATS, addresses_of, check
from mtproxy.config.settings import Settings, load_settings

KEY = "0123456789abcdef0123456789abcdef"
BASE_ENV = {"SECRET": KEY, "EXTERNAL_IP": "203.0.113.7", "INTERNAL_IP": "10.1.2.3"}
ENTRYPOINT = ["/usr/bin/python3", "-m", "mtproxy", "entrypoint"]


def clean_env(**extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items()
            if k not in ("PORT", "STATS_PORT", "STATS_HOST", "SECRET", "TAG")
            and not k.startswith("MTPROXY_") and not k.lower().endswith("_proxy")}
    return {**keep, **BASE_ENV, **extra}


def started_with(args: list[str], env: dict[str, str], data: Path) -> tuple[Any, Any]:
    """(stats, first listen) of what the entrypoint would start, from its Runs as line."""
    extra = ["--data-dir", str(data), "--dry-run"]
    result = subprocess.run([sys.executable, "-m", "mtproxy", "entrypoint", *args, *extra],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = [ln for ln in result.stdout.splitlines() if "Runs as: mtproxy run " in ln]
    words = line.split("Runs as: mtproxy run ", 1)[1].split()

    def values(flag: str) -> list[str]:
        return [words[i + 1] for i, w in enumerate(words[:-1]) if w == flag]

    config = values("--config")
    stats = values("--stats")
    cli = {"stats": stats[-1] if stats else None, "listen": values("--listen") or None}
    settings = load_settings(cli, config[0] if config else None)
    return settings.stats, settings.listen[0]


CASES = [
    ([ "-p", "2398", "-H", "443"], {}),
    (["-p", "2398", "-H", "8443,9443"], {"STATS_PORT": "7000", "STATS_HOST": "127.0.0.1"}),
    (["-H", "443"], {"PORT": "5443"}),
    (["--address", "127.0.0.2", "-H", "6443", "-p", "3000"], {}),
    (["run", "--stats", "127.0.0.1:9100", "--listen", "0.0.0.0:1443"], {"STATS_PORT": "7000"}),
    (["run", "--listen", "[::]:2443"], {"STATS_PORT": "7001"}),
    (["run"], {}),
    (["run", "--stats", "off"], {}),
]


@pytest.mark.parametrize(("args", "extra"), CASES, ids=[" ".join(c[0]) or "none" for c in CASES])
def test_reads_the_command_line_as_the_entrypoint_does(
    tmp_path: Path, args: list[str], extra: dict[str, str]
) -> None:
    env = clean_env(**extra)
    assert addresses_of(ENTRYPOINT + args, env) == started_with(args, env, tmp_path)


def test_reads_a_config_file_and_plain_run(tmp_path: Path) -> None:
    config = tmp_path / "mtproxy.toml"
    config.write_text('stats = "127.0.0.1:9200"\nlisten = ["127.0.0.1:3443"]\n')
    args = ["run", "--config", str(config)]
    env = clean_env(STATS_PORT="7000")
    assert addresses_of(ENTRYPOINT + args, env) == started_with(args, env, tmp_path)
    assert addresses_of(ENTRYPOINT + args, env) == (("127.0.0.1", 9200), ("127.0.0.1", 3443))
    plain = ["/usr/bin/python3", "/usr/local/bin/mtproxy", "run", "--stats", "127.0.0.1:9300"]
    assert addresses_of(plain, {"STATS_PORT": "1"}) == (("127.0.0.1", 9300), DEFAULT_LISTEN)
    assert addresses_of(["/sbin/init"], {}) == (DEFAULT_STATS, DEFAULT_LISTEN)
    assert (Settings().stats, Settings().listen[0]) == (DEFAULT_STATS, DEFAULT_LISTEN)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def healthcheck(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mtproxy", "healthcheck", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@pytest.mark.timeout_s(90)
@pytest.mark.parametrize("workers", ["1", "2"])
async def test_healthy_while_serving_unhealthy_when_draining(tmp_path: Path, workers: str) -> None:
    port, stats = free_port(), free_port()
    async with FakeDC(echo_handler) as dc:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mtproxy", "entrypoint", "--data-dir", str(tmp_path),
            "--address", "127.0.0.1", "-H", str(port), "-p", str(stats), "-M", workers,
            "--dc", f"2=127.0.0.1:{dc.port}",
            # MASK=off: the default mask host (www.google.com:443) would be looked up.
            env=clean_env(SHUTDOWN_GRACE="20", STATS_HOST="127.0.0.1", MASK="off"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(30):
                while not (await proc.stdout.readline()).startswith(b"[+] Proxy started"):
                    pass
            code, out = await healthcheck("--stats", f"127.0.0.1:{stats}")
            assert code == 0, out
            expected = "one process" if workers == "1" else "2 of 2 workers up"
            assert out.startswith("healthy: stats port 127.0.0.1:") and expected in out, out
            stream = await open_obfs2("127.0.0.1", port, bytes.fromhex(KEY), TAG_INTERMEDIATE, 2)
            stream.write(b"z" * 16)
            await stream.drain()
            assert await stream.readexactly(16) == b"z" * 16
            proc.send_signal(signal.SIGTERM)
            out = ""
            for _ in range(50):  # bounded: the drain lasts 20 s, this loop at most 10
                code, out = await healthcheck("--stats", f"127.0.0.1:{stats}")
                if "draining" in out:
                    break
                await asyncio.sleep(0.2)
            assert code == 1 and out.startswith("unhealthy:") and "draining" in out, out
            stream.close()
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.1)
                proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)
    code, out = await healthcheck("--stats", f"127.0.0.1:{stats}")
    assert code == 1 and "stats port" in out, out


async def test_without_stats_port_the_client_port_is_tried() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        ok, why = await asyncio.to_thread(check, None, ("0.0.0.0", port), 2)
        assert ok and f"127.0.0.1:{port} accepts" in why
    ok, why = await asyncio.to_thread(check, None, ("127.0.0.1", port), 2)
    assert not ok and "client port" in why


async def test_bad_address_is_one_line() -> None:
    code, out = await healthcheck("--stats", "[::1")
    assert code == 2 and out.startswith("mtproxy healthcheck: error:") and "HOST:PORT" in out
