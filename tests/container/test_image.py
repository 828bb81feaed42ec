"""The container image, run by a real Docker engine (see conftest.py for when these run).

What is checked here exists before the proxy's own entrypoint does: the image's metadata
(root start, stop signal, health check), the proxy user and its /data volume, the runtime
pieces the proxy will need (TLS with CA certificates, AES from cryptography, asyncio,
uvloop, ctypes), the size budget, and both network modes CI can use (`--network none`
and `--network host`). The entrypoint's own behaviour in the image is in
test_image_entrypoint.py and test_image_operations.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mtproxy

from .conftest import ROOT, Docker

IMAGE_UID = 10001
MAX_COMPRESSED = 10_000_000
MAX_UNPACKED = 30_000_000


def test_image_metadata(docker: Docker) -> None:
    config = docker.inspect_image()["Config"]
    assert isinstance(config, dict)
    # Root on purpose: the entrypoint hands /data over and drops to MTPROXY_USER itself.
    assert config["User"] == ""
    assert config["Entrypoint"] == ["/usr/bin/python3", "-m", "mtproxy", "entrypoint"]
    assert config["Cmd"] == ["-p", "2398", "-H", "443"]
    assert set(config["ExposedPorts"]) == {"443/tcp", "2398/tcp"}
    assert set(config["Volumes"]) == {"/data"}
    assert config["WorkingDir"] == "/data"
    assert config["StopSignal"] == "SIGTERM"
    health = config["Healthcheck"]
    assert health["Test"] == ["CMD", "/usr/bin/mtproxy", "healthcheck"]
    # Healthy within seconds of start: Docker runs the first check one interval after it.
    assert health["Interval"] <= 10 * 10**9 and health["Timeout"] < health["Interval"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["MTPROXY_USER"] == "mtproxy"


def test_version_and_the_proxy_user(docker: Docker) -> None:
    expected = f"mtproxy {mtproxy.__version__}"
    assert docker.run("-m", "mtproxy", "--version").stdout.strip() == expected
    assert docker.run("--version", entrypoint="/usr/bin/mtproxy").stdout.strip() == expected
    ids = docker.python("import os, pwd; e = pwd.getpwnam('mtproxy'); "
                        "print(e.pw_uid, e.pw_gid, os.getcwd())")
    assert ids.stdout.split() == [str(IMAGE_UID), str(IMAGE_UID), "/data"]
    # No file capability left on the interpreter (it broke --cap-drop ALL).
    caps = docker.python("import os; print(os.getxattr('/usr/bin/python3.11', "
                         "'security.capability'))", check=False)
    assert "No data available" in caps.stderr, caps.stdout + caps.stderr


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
    as_user = ("--user", f"{IMAGE_UID}:{IMAGE_UID}")
    docker.python(
        "import os; fd = os.open('/data/secret', os.O_WRONLY | os.O_CREAT, 0o600); "
        "os.write(fd, b'0123456789abcdef' * 2); os.close(fd)",
        "-v", mount, *as_user,
    )
    again = docker.python(
        "import os; st = os.stat('/data/secret'); d = os.stat('/data'); "
        "print(open('/data/secret').read(), st.st_uid, oct(st.st_mode & 0o777), d.st_uid, "
        "oct(d.st_mode & 0o7777))",
        "-v", mount, *as_user,
    )
    # /data is the proxy user's and, like /tmp, writable by any --user (sticky bit).
    assert again.stdout.split() == ["0123456789abcdef" * 2, str(IMAGE_UID), "0o600",
                                    str(IMAGE_UID), "0o1777"]
    # Without -v, VOLUME /data gives an anonymous volume, also writable by any user.
    anonymous = docker.python("open('/data/probe', 'w').write('x'); print('written')",
                              "--user", "65534:65534")
    assert anonymous.stdout.strip() == "written"


def test_read_only_root_filesystem(docker: Docker) -> None:
    """`--read-only` works: nothing but /data is ever written (no bytecode caches)."""
    volume = docker.volume()
    result = docker.python(
        "import asyncio, ssl, urllib.request, uvloop, ctypes\n"
        "from cryptography.hazmat.primitives.ciphers import Cipher\n"
        "open('/data/ok', 'w').write('1')\n"
        "try:\n"
        "    open('/usr/lib/x', 'w')\n"
        "except OSError as exc:\n"
        "    print('refused', exc.errno)\n",
        "--read-only", "-v", f"{volume}:/data", "--user", f"{IMAGE_UID}:{IMAGE_UID}",
    )
    assert result.stdout.split()[0] == "refused"


RUNTIME_PROBE = r"""
import asyncio, hashlib, hmac, http.server, importlib.metadata, ipaddress, json, logging
import logging.handlers, mmap, fcntl, secrets, ssl, tomllib, urllib.request, uuid
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
    result = json.loads(docker.python(NONE_NETWORK_PROBE, "--user", f"{IMAGE_UID}:{IMAGE_UID}",
                                      network="none").stdout)
    assert result == {"reply": "hello", "interfaces": ["lo"]}


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
