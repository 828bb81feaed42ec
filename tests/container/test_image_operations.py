"""The image run the ways operators run it (conftest.py says when these run).

Each case is a row of what used to go wrong: a /data that Docker created root-owned, a
volume of the official image, another --user, --read-only, `docker stop` with a client
connected, --cap-drop ALL, no-new-privileges, the health check. Secrets must survive
restarts, or the start must stop with one [F] line and exit 6; the proxy must relay a
real client (to a fake DC on the host, --network host) under every hardening option.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from fakes import TAG_INTERMEDIATE, FakeDC, echo_handler, open_obfs2

from .conftest import Docker

KEY = "0123456789abcdef0123456789abcdef"
KEY2 = "00112233445566778899aabbccddeeff"
EXTERNAL = "203.0.113.7"
CONTRACT = ("-e", f"EXTERNAL_IP={EXTERNAL}", "-e", "INTERNAL_IP=10.1.2.3")
IMAGE_UID = 10001
CAP_NET_BIND_SERVICE = 1 << 10
EXIT_DATA_DIR = 6
SECRET_LINE = re.compile(r"\[\*\]   Secret 1: ([0-9a-f]{32})")


def dry_run(docker: Docker, *options: str) -> tuple[int, str]:
    """The image's own ENTRYPOINT and CMD with --dry-run: every start-up step, no server."""
    result = docker.run(*CONTRACT, *options, "--", "-p", "2398", "-H", "443", "--dry-run",
                        entrypoint=None, check=False)
    return result.returncode, result.stdout


def secret_of(out: str) -> str:
    match = SECRET_LINE.search(out)
    assert match, out
    return match.group(1)


def fatal(out: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.startswith("[F] ")]
    assert len(lines) == 1 and out.rstrip().splitlines()[-1] == lines[0], out
    return lines[0]


def stat_of(docker: Docker, mount: str, path: str) -> tuple[int, int]:
    out = docker.python(f"import os; s = os.stat({path!r}); print(s.st_uid, s.st_mode & 0o7777)",
                        "-v", mount).stdout.split()
    return int(out[0]), int(out[1])


# --- /data: one secret across restarts, whatever is mounted ----------------------------------


def test_a_bind_mount_docker_creates_keeps_its_secret(docker: Docker, tmp_path: Path) -> None:
    """-v $PWD/proxy-data:/data with no such directory: Docker makes it root's, 755."""
    host_dir = tmp_path / "proxy-data"
    mount = f"{host_dir}:/data"
    code, first = dry_run(docker, "-v", mount)
    assert code == 0, first
    assert "[*] Gave /data to mtproxy (uid 10001)" in first
    assert "[+] Running as mtproxy (uid 10001, gid 10001)" in first
    assert "generating 1 random one" in first
    code, again = dry_run(docker, "-v", mount)
    assert code == 0, again
    assert secret_of(again) == secret_of(first)
    assert "[+] Using the secrets stored in /data/secret" in again
    assert (host_dir.stat().st_uid, (host_dir / "secret").stat().st_uid) == (IMAGE_UID, IMAGE_UID)
    assert (host_dir / "secret").stat().st_mode & 0o777 == 0o600


def test_a_volume_of_the_official_image_keeps_its_secret(docker: Docker) -> None:
    """Its /data is root's (755) and so is its secret (644): read, then taken over."""
    volume = docker.volume()
    mount = f"{volume}:/data"
    docker.python(
        "import os; os.chown('/data', 0, 0); os.chmod('/data', 0o755)\n"
        f"open('/data/secret', 'w').write('{KEY}\\n'); os.chmod('/data/secret', 0o644)",
        "-v", mount,
    )
    code, out = dry_run(docker, "-v", mount)
    assert code == 0, out
    assert f"[+] Using the secrets stored in /data/secret: '{KEY}'." in out
    assert "Gave /data, secret to mtproxy" in out
    # Taken over, the proxy user can now replace it: SECRET given once is kept.
    code, out = dry_run(docker, "-v", mount, "-e", f"SECRET={KEY2}")
    assert code == 0 and "[!]" not in out, out
    code, out = dry_run(docker, "-v", mount)
    assert code == 0 and secret_of(out) == KEY2, out
    assert stat_of(docker, mount, "/data/secret") == (IMAGE_UID, 0o600)


def test_any_user_keeps_its_secret_in_a_new_volume(docker: Docker) -> None:
    mount = f"{docker.volume()}:/data"
    code, first = dry_run(docker, "-v", mount, "--user", "65534:65534")
    assert code == 0, first
    assert "Running as" not in first  # not root: nothing to hand over or drop
    code, again = dry_run(docker, "-v", mount, "--user", "65534:65534")
    assert code == 0, again
    assert secret_of(again) == secret_of(first)


def test_another_user_gets_one_accurate_line(docker: Docker, tmp_path: Path) -> None:
    mount = f"{docker.volume()}:/data"
    code, out = dry_run(docker, "-v", mount)
    assert code == 0, out
    code, out = dry_run(docker, "-v", mount, "--user", "65534:65534")
    assert code == EXIT_DATA_DIR, out
    line = fatal(out)
    assert "Cannot read /data/secret as uid 65534" in line
    assert "/data/secret belongs to uid 10001, mode 600" in line
    # The image's user on a root-owned directory it cannot write: no secret to keep.
    code, out = dry_run(docker, "-v", f"{tmp_path / 'new'}:/data", "--user", "10001:10001")
    assert code == EXIT_DATA_DIR, out
    line = fatal(out)
    assert "Cannot keep a secret in /data as uid 10001: Permission denied" in line
    assert "/data belongs to uid 0, mode 755" in line and "without --user" in line


def test_read_only_keeps_one_secret(docker: Docker) -> None:
    mount = f"{docker.volume()}:/data"
    code, first = dry_run(docker, "--read-only", "-v", mount)
    assert code == 0, first
    code, again = dry_run(docker, "--read-only", "-v", mount)
    assert code == 0 and secret_of(again) == secret_of(first), again
    # Nowhere to keep a new secret: stop rather than hand out links that will break.
    code, out = dry_run(docker, "--read-only", "-v", f"{docker.volume()}:/data:ro")
    assert code == EXIT_DATA_DIR, out
    assert "Read-only file system" in fatal(out)
    # A secret passed in SECRET does not change, so an unwritable /data is only a warning.
    code, out = dry_run(docker, "--read-only", "-v", f"{docker.volume()}:/data:ro",
                        "-e", f"SECRET={KEY}")
    assert code == 0, out
    assert "[!] cannot write /data/secret" in out


# --- running containers: a client through them, stops, health ------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def free_privileged_port() -> int:
    """A port below 1024 that nothing on the host's loopback listens on (443 first)."""
    candidates: list[int] = [443, *range(900, 1000)]
    for port in candidates:
        with socket.socket() as probe:
            probe.settimeout(1)
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return port
    pytest.fail("no free privileged port on 127.0.0.1")


class Proxy:
    def __init__(self, docker: Docker, name: str, port: int) -> None:
        self.docker = docker
        self.name = name
        self.port = port

    async def call(self, *args: str, check: bool = True) -> str:
        result = await asyncio.to_thread(self.docker, *args, check=check)
        return result.stdout + result.stderr

    async def logs(self) -> str:
        return await self.call("logs", self.name, check=False)

    async def process(self) -> dict[str, str]:
        """/proc/1/status of the container: whom the proxy runs as, with what."""
        out = await self.call(
            "exec", self.name, "/usr/bin/python3", "-c",
            "import json; print(json.dumps(dict(l.split(':', 1) for l in "
            "open('/proc/1/status').read().splitlines())))",
        )
        return {k: v.strip() for k, v in json.loads(out).items()}

    async def state(self) -> dict[str, object]:
        out = await self.call("inspect", "-f", "{{json .State}}", self.name)
        state: dict[str, object] = json.loads(out)
        return state

    async def relay(self, dc: FakeDC, size: int = 20_000) -> None:
        stream = await open_obfs2("127.0.0.1", self.port, bytes.fromhex(KEY), TAG_INTERMEDIATE, 2)
        payload = os.urandom(size)
        stream.write(payload)
        await stream.drain()
        assert await stream.readexactly(len(payload)) == payload
        stream.close()
        await stream.wait_closed()


@asynccontextmanager
async def running(docker: Docker, dc: FakeDC, *options: str, port: int | None = None,
                  env: tuple[str, ...] = (), image: str | None = None,
                  start_timeout: float = 30) -> AsyncIterator[Proxy]:
    """The image's ENTRYPOINT with the official flags, on the host's loopback."""
    port = port or free_port()
    name = f"mtproxy-test-{uuid.uuid4().hex[:12]}"
    proxy = Proxy(docker, name, port)
    await proxy.call(
        "run", "-d", "--name", name, "--network", "host", "-e", "MASK=off",
        "-e", f"SECRET={KEY}", *CONTRACT,
        *env, *options, image or docker.image, "-p", str(free_port()), "--address", "127.0.0.1",
        "-H", str(port), "--dc", f"2=127.0.0.1:{dc.port}",
    )
    try:
        deadline = time.monotonic() + start_timeout
        logs = ""
        while "[+] Proxy started" not in logs and time.monotonic() < deadline:
            if "[F]" in logs:
                break
            await asyncio.sleep(0.2)
            logs = await proxy.logs()
        assert "[+] Proxy started" in logs, logs
        yield proxy
    finally:
        await proxy.call("rm", "-f", name, check=False)


LEAST_PRIVILEGE = {
    "cap-drop-all-high-port": (("--cap-drop", "ALL"), False, 0, 0),
    "cap-drop-all-net-bind-443": (
        ("--cap-drop", "ALL", "--cap-add", "NET_BIND_SERVICE"), True, 0, CAP_NET_BIND_SERVICE),
    "compose-capabilities-443": (
        ("--cap-drop", "ALL", "--cap-add", "NET_BIND_SERVICE", "--cap-add", "SETUID",
         "--cap-add", "SETGID", "--cap-add", "CHOWN", "--read-only"),
        True, IMAGE_UID, CAP_NET_BIND_SERVICE),
    "no-new-privileges-443": (
        ("--security-opt", "no-new-privileges"), True, IMAGE_UID, CAP_NET_BIND_SERVICE),
    "read-only": (("--read-only",), False, IMAGE_UID, CAP_NET_BIND_SERVICE),
    "default-443": ((), True, IMAGE_UID, CAP_NET_BIND_SERVICE),
}


@pytest.mark.timeout_s(90)
@pytest.mark.parametrize("case", list(LEAST_PRIVILEGE))
async def test_least_privilege_relays_a_client(docker: Docker, case: str) -> None:
    """--network host: the host's ip_unprivileged_port_start (1024) applies, so a port
    below it binds only with CAP_NET_BIND_SERVICE, which the proxy keeps (and nothing
    else) when it drops from root to uid 10001."""
    options, privileged, uid, caps = LEAST_PRIVILEGE[case]
    port = free_privileged_port() if privileged else free_port()
    async with FakeDC(echo_handler) as dc, running(docker, dc, *options, port=port) as proxy:
        await proxy.relay(dc)
        status = await proxy.process()
        assert status["Uid"].split() == [str(uid)] * 4
        assert int(status["CapEff"], 16) == caps
        assert int(status["CapPrm"], 16) == caps
        if uid:
            assert status["NoNewPrivs"] == "1"
        else:
            assert "[!] Running as root with" in await proxy.logs()


@pytest.mark.timeout_s(90)
async def test_docker_stop_drains_a_live_session_and_exits_0(docker: Docker) -> None:
    async with FakeDC(echo_handler) as dc, running(docker, dc, env=("-e", "WORKERS=1")) as proxy:
        assert "uvloop loop" in await proxy.logs()
        stream = await open_obfs2("127.0.0.1", proxy.port, bytes.fromhex(KEY),
                                  TAG_INTERMEDIATE, 2)
        stream.write(b"x" * 64)
        await stream.drain()
        assert await stream.readexactly(64) == b"x" * 64
        # Docker's default: SIGTERM, SIGKILL 10 s later. The drain must end before that.
        await proxy.call("stop", proxy.name)
        state = await proxy.state()
        assert state["ExitCode"] == 0, await proxy.logs()
        assert state["OOMKilled"] is False
        logs = await proxy.logs()
        assert "1 sessions may drain for up to 8s" in logs
        # The session was held open to the end, then closed by the proxy.
        assert await stream.read() == b""
        stream.close()


async def health_status(proxy: Proxy, wanted: str, within: float) -> str:
    deadline = time.monotonic() + within
    status = ""
    while time.monotonic() < deadline:
        health = (await proxy.state())["Health"]
        assert isinstance(health, dict)
        status = str(health["Status"])
        if status == wanted:
            break
        await asyncio.sleep(0.5)
    return status


@pytest.mark.timeout_s(120)
async def test_healthcheck_follows_the_proxy(docker: Docker) -> None:
    async with FakeDC(echo_handler) as dc, running(docker, dc) as proxy:
        assert await health_status(proxy, "healthy", 20) == "healthy"
        out = await proxy.call("exec", proxy.name, "/usr/bin/mtproxy", "healthcheck")
        assert out.startswith("healthy: stats port 127.0.0.1:"), out
        assert "2 of 2 workers up" in out
        # Draining after the first SIGTERM: accepting no new clients any more.
        stream = await open_obfs2("127.0.0.1", proxy.port, bytes.fromhex(KEY),
                                  TAG_INTERMEDIATE, 2)
        stream.write(b"y" * 32)
        await stream.drain()
        assert await stream.readexactly(32) == b"y" * 32
        await proxy.call("kill", "-s", "TERM", proxy.name)
        out = await proxy.call("exec", proxy.name, "/usr/bin/mtproxy", "healthcheck",
                               check=False)
        assert out.startswith("unhealthy:") and "draining" in out, out
        stream.close()
    one_process = ("-e", "WORKERS=1")
    async with FakeDC(echo_handler) as dc, running(docker, dc, env=one_process) as proxy:
        assert await health_status(proxy, "healthy", 20) == "healthy"
        # A proxy that stops answering (here: stopped by SIGSTOP) turns unhealthy.
        await proxy.call("kill", "-s", "STOP", proxy.name)
        out = await proxy.call("exec", proxy.name, "/usr/bin/mtproxy", "healthcheck",
                               "--timeout", "1", check=False)
        assert out.startswith("unhealthy:") and "no answer in time" in out, out
        assert await health_status(proxy, "unhealthy", 60) == "unhealthy"
        await proxy.call("kill", "-s", "CONT", proxy.name)
