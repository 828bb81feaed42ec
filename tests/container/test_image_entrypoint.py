"""The entrypoint inside the real image (its ENTRYPOINT and CMD, no shell in it).

tests/container/test_entrypoint.py covers the contract in depth on the host; these runs
show the same contract holds in the trimmed FROM-scratch image: the official lines and
exit codes, /data in a volume, `links` with its QR code, and a client relayed through
the running container. They run when the other container tests do (conftest.py).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
import uuid

import pytest
from fakes import TAG_INTERMEDIATE, FakeDC, echo_handler, open_obfs2
from test_links import decode_terminal, qr_blocks

from .conftest import Docker

KEY = "0123456789abcdef0123456789abcdef"
EXTERNAL = "203.0.113.7"
CONTRACT = ("-e", f"EXTERNAL_IP={EXTERNAL}", "-e", "INTERNAL_IP=10.1.2.3")


def image_entrypoint(docker: Docker, *args: str, network: str = "none",
                     check: bool = False) -> tuple[int, str]:
    """``docker run`` with the image's own ENTRYPOINT and, after ``--``, the arguments that
    replace its CMD (nothing after ``--``: the CMD itself)."""
    result = docker.run(*args, entrypoint=None, network=network, check=check)
    return result.returncode, result.stdout


def test_default_command_prints_the_official_lines(docker: Docker) -> None:
    code, out = image_entrypoint(
        docker, "-e", f"SECRET={KEY.upper()}", *CONTRACT, "--", "-p", "2398", "-H", "443",
        "--dry-run",
    )
    assert code == 0, out
    assert f"[+] Using the secrets passed in SECRET: '{KEY}'." in out
    assert "[*] Final configuration:" in out
    assert f"[*]   Secret 1: {KEY}" in out
    assert (f"[*]   tg:// link for secret 1 auto configuration: "
            f"tg://proxy?server={EXTERNAL}&port=443&secret={KEY}") in out
    assert f"[*]   t.me link for secret 1: https://t.me/proxy?server={EXTERNAL}&port=443" in out
    assert " --listen 0.0.0.0:443 " in out and " --data-dir /data " in out
    # All modes, as the official image: the dd and fake-TLS links come with the classic one.
    assert " --modes classic,secure,tls " in out and " --shutdown-grace 8 " in out
    assert f"secret=dd{KEY}\n" in out and f"secret=ee{KEY}" in out


def test_bad_secret_exits_1_in_the_image(docker: Docker) -> None:
    code, out = image_entrypoint(docker, "-e", "SECRET=nothex", *CONTRACT, "--")
    assert code == 1
    assert out.rstrip().splitlines()[-1].startswith("[F] Bad SECRET")


def test_no_network_means_no_internal_ip(docker: Docker) -> None:
    """--network none leaves only loopback: no route out, the official exit 4."""
    code, out = image_entrypoint(docker, "-e", f"SECRET={KEY}", "-e", f"EXTERNAL_IP={EXTERNAL}",
                                 "--")
    assert code == 4
    assert "[F] Cannot determine the internal IP address" in out


def test_generated_secret_lives_in_the_volume(docker: Docker) -> None:
    volume = docker.volume()
    code, first = image_entrypoint(docker, "-v", f"{volume}:/data", "-e", "SECRET_COUNT=2",
                                   *CONTRACT, "--", "--dry-run")
    assert code == 0, first
    keys = re.findall(r"\[\*\]   Secret \d: ([0-9a-f]{32})", first)
    assert len(keys) == 2
    code, again = image_entrypoint(docker, "-v", f"{volume}:/data", *CONTRACT, "--", "--dry-run")
    assert code == 0, again
    assert f"[+] Using the secrets stored in /data/secret: '{','.join(keys)}'." in again
    code, links = image_entrypoint(docker, "-v", f"{volume}:/data", "-e",
                                   f"EXTERNAL_IP={EXTERNAL}", "--", "links", "--modes", "classic")
    assert code == 0, links
    blocks = qr_blocks(links)
    assert [https for https, _ in blocks] == [
        f"https://t.me/proxy?server={EXTERNAL}&port=443&secret={key}" for key in keys
    ]
    for https, lines in blocks:
        assert decode_terminal(lines) == [https]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.timeout_s(90)
async def test_container_relays_a_client(docker: Docker) -> None:
    port = _free_port()
    name = f"mtproxy-test-{uuid.uuid4().hex[:12]}"
    async with FakeDC(echo_handler) as dc:
        await asyncio.to_thread(
            docker, "run", "-d", "--name", name, "--network", "host", "-e", "MASK=off",
            "-e", f"SECRET={KEY}",
            *CONTRACT, docker.image, "--address", "127.0.0.1", "-H", str(port),
            "--dc", f"2=127.0.0.1:{dc.port}",
        )
        try:
            deadline = time.monotonic() + 30
            logs = ""
            while "[+] Proxy started" not in logs and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                logs = (await asyncio.to_thread(docker, "logs", name, check=False)).stdout
            assert "[+] Proxy started" in logs, logs
            stream = await open_obfs2("127.0.0.1", port, bytes.fromhex(KEY), TAG_INTERMEDIATE, 2)
            payload = os.urandom(20_000)
            stream.write(payload)
            await stream.drain()
            assert await stream.readexactly(len(payload)) == payload
            stream.close()
            await stream.wait_closed()
            await asyncio.to_thread(docker, "stop", "-t", "10", name)
            state = await asyncio.to_thread(
                docker, "inspect", "-f", "{{.State.ExitCode}}", name
            )
            assert state.stdout.strip() == "0"
        finally:
            await asyncio.to_thread(docker, "rm", "-f", name, check=False)
