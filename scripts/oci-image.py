#!/usr/bin/env python3
"""Join `docker save` tarballs of one image per CPU into one multi-arch OCI image.

Each input is PLATFORM=TARBALL (linux/amd64=dist/mtproxy-image.tar). The output is an OCI
image layout directory (oci-layout, index.json, blobs/sha256/...) whose index.json names
one image index, tagged with --tag, listing a manifest per platform; it is also written as
a tarball next to it. A registry takes it as it is, e.g.
``skopeo copy --all oci:dist/mtproxy-oci:latest docker://registry.example/mtproxy:latest``,
and a pull then picks the manifest of its CPU.

The image config's architecture is set from PLATFORM: the arm64 image is built by an
x86-64 engine (its RUN steps run under qemu), which labels everything it builds amd64.
With --docker-tar the corrected image is also written in `docker save` format, for
`docker load` on engines that do not read OCI archives. Layers are gzip-compressed at level
9 with no timestamp, so the same build gives the same digests.

    scripts/oci-image.py --out dist/mtproxy-oci --tag latest \\
        linux/amd64=dist/mtproxy-image.tar linux/arm64=dist/mtproxy-image-arm64.tar
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path
from typing import Any

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
GZIP_LEVEL = 9


class Layout:
    """An OCI image layout directory being written: content-addressed blobs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        if root.exists():
            shutil.rmtree(root)
        (root / "blobs" / "sha256").mkdir(parents=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}\n')

    def blob(self, data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (self.root / "blobs" / "sha256" / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data), **extra}


def platform_of(text: str) -> dict[str, str]:
    parts = text.split("/")
    if len(parts) not in (2, 3) or parts[0] != "linux":
        raise SystemExit(f"{text}: write linux/ARCH or linux/ARCH/VARIANT")
    out = {"os": parts[0], "architecture": parts[1]}
    if len(parts) == 3:
        out["variant"] = parts[2]
    elif parts[1] == "arm64":
        out["variant"] = "v8"
    return out


def read_saved(path: Path) -> tuple[dict[str, Any], list[bytes]]:
    """(image config, uncompressed layer tarballs) of a one-image `docker save` file."""
    with tarfile.open(path) as tar:
        def member(name: str) -> bytes:
            handle = tar.extractfile(name)
            if handle is None:
                raise SystemExit(f"{path}: {name} is missing")
            return handle.read()

        manifest = json.loads(member("manifest.json"))
        if len(manifest) != 1:
            raise SystemExit(f"{path}: expected one image, found {len(manifest)}")
        config = json.loads(member(manifest[0]["Config"]))
        layers = [member(name) for name in manifest[0]["Layers"]]
    for layer, diff_id in zip(layers, config["rootfs"]["diff_ids"], strict=True):
        if f"sha256:{hashlib.sha256(layer).hexdigest()}" != diff_id:
            raise SystemExit(f"{path}: a layer does not match its diff_id")
    return config, layers


def docker_tar(path: Path, config: dict[str, Any], layers: list[bytes], tag: str) -> None:
    """`docker save` format (what every `docker load` reads), with this config."""
    config_bytes = json.dumps(config, separators=(",", ":")).encode()
    config_name = f"{hashlib.sha256(config_bytes).hexdigest()}.json"
    files: list[tuple[str, bytes]] = [(config_name, config_bytes)]
    names = []
    for layer in layers:
        name = f"{hashlib.sha256(layer).hexdigest()}/layer.tar"
        names.append(name)
        files.append((name, layer))
    files.append(("manifest.json", json.dumps(
        [{"Config": config_name, "RepoTags": [tag], "Layers": names}]).encode()))
    with tarfile.open(path, "w") as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", metavar="PLATFORM=TARBALL")
    parser.add_argument("--out", type=Path, required=True, help="OCI layout directory")
    parser.add_argument("--tag", default="latest", help="reference name in index.json")
    parser.add_argument("--docker-tar", action="append", default=[], metavar="PLATFORM=PATH,TAG",
                        help="also write that platform's image for `docker load`, tagged TAG")
    parser.add_argument("--json", action="store_true", help="print the sizes as JSON")
    args = parser.parse_args()

    layout = Layout(args.out)
    manifests = []
    sizes: dict[str, dict[str, int]] = {}
    corrected: dict[str, tuple[dict[str, Any], list[bytes]]] = {}
    for item in args.images:
        name, _, saved = item.partition("=")
        platform = platform_of(name)
        config, layers = read_saved(Path(saved))
        config["architecture"] = platform["architecture"]
        config["os"] = platform["os"]
        if "variant" in platform:
            config["variant"] = platform["variant"]
        else:
            config.pop("variant", None)
        corrected[name] = (config, layers)
        layer_descs = [
            layout.blob(gzip.compress(layer, GZIP_LEVEL, mtime=0), LAYER) for layer in layers
        ]
        config_desc = layout.blob(json.dumps(config, separators=(",", ":")).encode(), CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "config": config_desc,
                    "layers": layer_descs}
        manifest_bytes = json.dumps(manifest, separators=(",", ":")).encode()
        manifests.append(layout.blob(manifest_bytes, MANIFEST, platform=platform))
        sizes[name] = {
            "compressed": sum(d["size"] for d in layer_descs) + config_desc["size"]
            + len(manifest_bytes),
            "unpacked": sum(len(layer) for layer in layers),
        }
    index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests}
    index_desc = layout.blob(json.dumps(index, separators=(",", ":")).encode(), INDEX,
                             annotations={"org.opencontainers.image.ref.name": args.tag})
    (args.out / "index.json").write_text(json.dumps(
        {"schemaVersion": 2, "mediaType": INDEX, "manifests": [index_desc]}, indent=1) + "\n")
    archive = args.out.with_name(args.out.name + ".tar")
    with tarfile.open(archive, "w") as tar:
        for path in sorted(args.out.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(args.out)), recursive=False)

    for spec in args.docker_tar:
        name, _, rest = spec.partition("=")
        path, _, tag = rest.partition(",")
        if name not in corrected or not path or not tag:
            raise SystemExit(f"--docker-tar {spec}: write PLATFORM=PATH,TAG for a given platform")
        docker_tar(Path(path), *corrected[name], tag=tag)

    if args.json:
        print(json.dumps(sizes))
    else:
        print(f"OCI index {args.out} ({archive.name}), tag {args.tag}: "
              f"{len(manifests)} platforms, layers gzip -{GZIP_LEVEL}")
        for name, size in sizes.items():
            print(f"  {name:<14} pull {size['compressed'] / 1e6:6.2f} MB   "
                  f"unpacked {size['unpacked'] / 1e6:6.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
