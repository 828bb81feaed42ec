"""The container image, run by a real Docker engine (see conftest.py for when these run).

What is checked here exists before the proxy's own entrypoint does: the image's metadata,
the non-root user and its /data volume, the runtime pieces the proxy will need (TLS with CA
certificates, AES from cryptography, asyncio), the size budget, and both network modes CI
can use (`--network none` and `--network host`).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import mtproxy

from .conftest import ROOT, Docker

IMAGE_UID = 10001
MAX_COMPRESSED = 10_000_000
MAX_UNPACKED = 30_000_000
CAP_NET_BIND_SERVICE = 10


def test_image_metadata(docker: Docker) -> None:
    config = docker.inspect_image()["Config"]
    assert isinstance(config, dict)
    assert config["User"] == f"{IMAGE_UID}:{IMAGE_UID}"
    assert config["Entrypoint"] == ["/usr/bin/python3", "-m", "mtproxy", "entrypoint"]
    assert config["Cmd"] == ["-p", "2398", "-H", "443"]
    assert set(config["ExposedPorts"]) == {"443/tcp", "2398/tcp"}
    assert set(config["Volumes"]) == {"/data"}
    assert config["WorkingDir"] == "/data"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"


def test_version_as_non_root_user(docker: Docker) -> None:
    expected = f"mtproxy {mtproxy.__version__}"
    assert docker.run("-m", "mtproxy", "--version").stdout.strip() == expected
    assert docker.run("--version", entrypoint="/usr/bin/mtproxy").stdout.strip() == expected
    ids = docker.python("import os; print(os.getuid(), os.getgid(), os.getcwd())")
    assert ids.stdout.split() == [str(IMAGE_UID), str(IMAGE_UID), "/data"]


def test_nothing_but_the_proxy_in_the_image(docker: Docker) -> None:
    """FROM scratch: no shell, no package manager, no compiler; nothing to exec into."""
    listing = docker.python(
        "import os, json; print(json.dumps({p: os.path.exists(p) for p in "
        "['/bin/sh', '/usr/bin/apt-get', '/usr/bin/pip', '/usr/bin/gcc', '/usr/bin/python3']}))"
    )
    assert json.loads(listing.stdout) == {
        "/bin/sh": False, "/usr/bin/apt-get": False, "/usr/bin/pip": False,
        "/usr/bin/gcc": False, "/usr/bin/python3": True,
    }
    shell = docker.run("-c", "true", entrypoint="/bin/sh", check=False)
    assert shell.returncode != 0


def test_data_volume_is_writable_and_persists(docker: Docker) -> None:
    volume = docker.volume()
    mount = f"{volume}:/data"
    docker.python(
        "import os; fd = os.open('/data/secret', os.O_WRONLY | os.O_CREAT, 0o600); "
        "os.write(fd, b'0123456789abcdef' * 2); os.close(fd)",
        "-v", mount,
    )
    again = docker.python(
        "import os; st = os.stat('/data/secret'); "
        "print(open('/data/secret').read(), st.st_uid, oct(st.st_mode & 0o777))",
        "-v", mount,
    )
    assert again.stdout.split() == ["0123456789abcdef" * 2, str(IMAGE_UID), "0o600"]
    # Without -v, VOLUME /data gives an anonymous volume, also the proxy user's.
    anonymous = docker.python("open('/data/probe', 'w').write('x'); print('written')")
    assert anonymous.stdout.strip() == "written"


def test_read_only_root_filesystem(docker: Docker) -> None:
    """`--read-only` works: nothing but /data is ever written (no bytecode caches)."""
    volume = docker.volume()
    result = docker.python(
        "import asyncio, ssl, urllib.request\n"
        "from cryptography.hazmat.primitives.ciphers import Cipher\n"
        "open('/data/ok', 'w').write('1')\n"
        "try:\n"
        "    open('/usr/lib/x', 'w')\n"
        "except OSError as exc:\n"
        "    print('refused', exc.errno)\n",
        "--read-only", "-v", f"{volume}:/data",
    )
    assert result.stdout.split()[0] == "refused"


RUNTIME_PROBE = r"""
import asyncio, hashlib, hmac, http.server, importlib.metadata, ipaddress, json, logging
import logging.handlers, multiprocessing, secrets, ssl, tomllib, urllib.request, uuid
import wsgiref.simple_server, concurrent.futures, argparse
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.backends.openssl.backend import backend

# NIST SP 800-38A, F.5.1 (CTR-AES128.Encrypt), first block.
key = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
ctr = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
plain = bytes.fromhex("6bc1bee22e409f96e93d7e117393172a")
enc = Cipher(algorithms.AES(key), modes.CTR(ctr)).encryptor()
print(json.dumps({
    "ctr": (enc.update(plain) + enc.finalize()).hex(),
    "sha256": hashlib.sha256(b"abc").hexdigest(),
    "ca_certs": ssl.create_default_context().cert_store_stats()["x509_ca"],
    "idna": "b\u00fccher.example".encode("idna").decode(),
    "ssl_openssl": ssl.OPENSSL_VERSION,
    "cryptography_openssl": backend.openssl_version_text(),
    "cryptography": importlib.metadata.version("cryptography"),
    "mtproxy": importlib.metadata.version("mtproxy"),
}))
"""


def test_runtime_pieces_work(docker: Docker) -> None:
    """TLS with CA certificates (for the config download), AES, the stdlib the proxy uses."""
    result = json.loads(docker.python(RUNTIME_PROBE).stdout)
    assert result["ctr"] == "874d6191b620e3261bef6864990db6ce"
    assert result["sha256"] == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert result["ca_certs"] > 50
    assert result["idna"] == "xn--bcher-kva.example"
    assert result["mtproxy"] == mtproxy.__version__
    # One OpenSSL in the image: cryptography uses the libcrypto that Python's ssl loads.
    assert result["cryptography_openssl"] == result["ssl_openssl"]


def test_size_within_budget(docker: Docker, tmp_path: Path) -> None:
    saved = tmp_path / "image.tar"
    docker("save", docker.image, "-o", str(saved), timeout=120)
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "image-size.py"), str(saved),
         "--image", docker.image, "--json"],
        env=docker.env, capture_output=True, text=True, timeout=120, check=True,
    )
    sizes = json.loads(out.stdout)
    print(f"image {docker.image}: {sizes['compressed'] / 1e6:.2f} MB compressed, "
          f"{sizes['unpacked'] / 1e6:.2f} MB unpacked")
    assert sizes["layers"] == 1
    assert 0 < sizes["compressed"] <= MAX_COMPRESSED
    assert 0 < sizes["unpacked"] <= MAX_UNPACKED


NONE_NETWORK_PROBE = r"""
import asyncio, json, socket

async def main():
    async def echo(reader, writer):
        writer.write(await reader.readexactly(5))
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(echo, "0.0.0.0", 443)
    reader, writer = await asyncio.open_connection("127.0.0.1", 443)
    writer.write(b"hello")
    reply = await asyncio.wait_for(reader.readexactly(5), 10)
    writer.close()
    server.close()
    print(json.dumps({"reply": reply.decode(),
                      "interfaces": sorted(name for _, name in socket.if_nameindex())}))

asyncio.run(asyncio.wait_for(main(), 20))
"""


def test_network_none_binds_443_as_non_root(docker: Docker) -> None:
    result = json.loads(docker.python(NONE_NETWORK_PROBE, network="none").stdout)
    assert result == {"reply": "hello", "interfaces": ["lo"]}


HOST_SERVER = r"""
import asyncio, sys

async def main(port):
    done = asyncio.Event()
    async def echo(reader, writer):
        writer.write(b"echo:" + await reader.readexactly(5))
        await writer.drain()
        writer.close()
        done.set()
    server = await asyncio.start_server(echo, "127.0.0.1", port)
    caps = [l for l in open("/proc/self/status") if l.startswith("CapEff:")][0].split()[1]
    print("ready", caps, flush=True)
    await asyncio.wait_for(done.wait(), 30)
    server.close()

asyncio.run(main(int(sys.argv[1])))
"""


def _free_privileged_port() -> int:
    """A port below 1024 that nothing on the host's loopback listens on."""
    candidates: list[int] = [443, *range(900, 1000)]
    for port in candidates:
        with socket.socket() as probe:
            probe.settimeout(1)
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return port
    pytest.fail("no free privileged port on 127.0.0.1")


def test_network_host_serves_a_host_client_on_a_privileged_port(docker: Docker) -> None:
    """With --network host the host's ip_unprivileged_port_start applies (1024 by default):
    the non-root user binds below it only thanks to the interpreter's file capability."""
    port = _free_privileged_port()
    name = f"mtproxy-test-{uuid.uuid4().hex[:12]}"
    docker("run", "-d", "--rm", "--name", name, "--network", "host",
           "--entrypoint", "/usr/bin/python3", docker.image, "-c", HOST_SERVER, str(port))
    try:
        deadline = time.monotonic() + 20
        while True:
            logs = docker("logs", name, check=False)
            if "ready" in logs.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert "ready" in logs.stdout, f"server did not start: {logs.stdout}{logs.stderr}"
        cap_eff = int(logs.stdout.split()[1], 16)
        assert cap_eff == 1 << CAP_NET_BIND_SERVICE
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"hello")
            reply = b""
            while len(reply) < 10:
                chunk = client.recv(10 - len(reply))
                if not chunk:
                    break
                reply += chunk
        assert reply == b"echo:hello"
    finally:
        docker("rm", "-f", name, check=False)


def test_capability_needs_net_bind_service_in_the_bounding_set(docker: Docker) -> None:
    """docs/container.md: with --cap-drop ALL, NET_BIND_SERVICE must be added back."""
    refused = docker.run("--cap-drop", "NET_BIND_SERVICE", "--", "-c", "pass", check=False)
    assert refused.returncode != 0
    assert "operation not permitted" in refused.stderr
    allowed = docker.run("--cap-drop", "ALL", "--cap-add", "NET_BIND_SERVICE", "--",
                         "-c", "print('started')")
    assert allowed.stdout.strip() == "started"


def test_uvloop_exactly_when_built_with_the_fast_extra(docker: Docker) -> None:
    config = docker.inspect_image()["Config"]
    assert isinstance(config, dict)
    extras = (config["Labels"] or {}).get("io.github.mtproxy.extras", "").split(",")
    result = docker.python(
        "import asyncio\n"
        "try:\n"
        "    import uvloop\n"
        "except ModuleNotFoundError:\n"
        "    print('absent')\n"
        "else:\n"
        "    uvloop.install()\n"
        "    print(type(asyncio.new_event_loop()).__module__)\n"
    )
    assert result.stdout.strip() == ("uvloop" if "fast" in extras else "absent")
