"""The arm64 image, run under qemu-user-static, and the multi-arch OCI index in dist/.

`make image-multiarch` builds both (scripts/build-multiarch.sh) and loads the arm64 image
as mtproxy:arm64 (ARM64_IMAGE). Like every container test these need
MTPROXY_DOCKER_TESTS=1; without the arm64 image they are skipped with the reason, except
under CI=true, where .ci/run builds it and a missing one fails them.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeDC, echo_handler
from system_tools import unavailable

from .conftest import ROOT, Docker
from .test_image_operations import KEY, running

ARM64_IMAGE = os.environ.get("ARM64_IMAGE", "mtproxy:arm64")
OCI = ROOT / "dist" / "mtproxy-oci"
MAX_COMPRESSED = 10_000_000


@pytest.fixture
def arm64(docker: Docker) -> str:
    if docker("image", "inspect", ARM64_IMAGE, check=False).returncode == 0:
        return ARM64_IMAGE
    unavailable(f"no {ARM64_IMAGE} in the engine: run `make image-multiarch` "
                "(needs qemu-user-static; .ci/run does)")


def blob(digest: str) -> bytes:
    algorithm, _, hexdigest = digest.partition(":")
    assert algorithm == "sha256"
    data = (OCI / "blobs" / "sha256" / hexdigest).read_bytes()
    assert hashlib.sha256(data).hexdigest() == hexdigest
    return data


def test_oci_index_holds_both_platforms(arm64: str, docker: Docker) -> None:
    assert json.loads((OCI / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    (entry,) = json.loads((OCI / "index.json").read_text())["manifests"]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "latest"
    index = json.loads(blob(entry["digest"]))
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    platforms: dict[str, Any] = {}
    for desc in index["manifests"]:
        manifest = json.loads(blob(desc["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        for layer in manifest["layers"]:
            blob(layer["digest"])
        plat = desc["platform"]
        assert (config["os"], config["architecture"]) == (plat["os"], plat["architecture"])
        platforms["/".join([plat["architecture"], plat.get("variant", "")]).rstrip("/")] = config
    assert set(platforms) == {"amd64", "arm64/v8"}
    # The index holds the very images the engine runs.
    for name, image in (("amd64", docker.image), ("arm64/v8", arm64)):
        inspected = json.loads(docker("image", "inspect", image).stdout)[0]
        assert inspected["RootFS"]["Layers"] == platforms[name]["rootfs"]["diff_ids"]
        assert inspected["Architecture"] == name.split("/")[0]


def test_arm64_image_within_budget(arm64: str, docker: Docker, tmp_path: Path) -> None:
    saved = tmp_path / "arm64.tar"
    docker("save", arm64, "-o", str(saved), timeout=120)
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "image-size.py"), str(saved), "--image", arm64,
         "--json"], env=docker.env, capture_output=True, text=True, timeout=120, check=True,
    )
    sizes = json.loads(out.stdout)
    print(f"image {arm64}: {sizes['compressed'] / 1e6:.2f} MB compressed, "
          f"{sizes['unpacked'] / 1e6:.2f} MB unpacked")
    assert 0 < sizes["compressed"] <= MAX_COMPRESSED


@pytest.mark.timeout_s(180)
async def test_arm64_image_starts_prints_links_and_relays(arm64: str, docker: Docker) -> None:
    async with FakeDC(echo_handler) as dc, running(docker, dc, image=arm64,
                                                   start_timeout=120) as proxy:
        logs = await proxy.logs()
        assert f"[*]   Secret 1: {KEY}" in logs
        assert "[*]   t.me link for secret 1: https://t.me/proxy?server=" in logs
        assert "[+] Running as mtproxy (uid 10001" in logs
        machine = await proxy.call("exec", proxy.name, "/usr/bin/python3", "-c",
                                   "import platform; print(platform.machine())")
        assert machine.strip() == "aarch64"
        await proxy.relay(dc)
        (conn,) = await dc.wait_connections(1)
        assert conn.dc_id == 2 and conn.error is None
