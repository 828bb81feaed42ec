#!/usr/bin/env python3
"""Print an image's compressed size (what a pull transfers) and its unpacked size.

Reads the tarball of `docker save`. A registry stores each layer gzip-compressed, as
`docker push` (Go's compress/gzip at its default level, like gzip -6) made it, plus the
config and the manifest; a pull transfers exactly those blobs, so their sum is the
compressed size. The unpacked size is what `docker image inspect` calls Size (the layers'
contents on disk); without a daemon to ask, the sum of the uncompressed layer tarballs
stands in for it (a few kB larger: tar headers).

    scripts/image-size.py dist/mtproxy-image.tar [--image mtproxy:latest] [--json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tarfile
from typing import IO

GZIP_LEVEL = 6
CHUNK = 1 << 20


class _Counter:
    """A write-only file object that only counts bytes."""

    def __init__(self) -> None:
        self.count = 0

    def write(self, data: bytes) -> int:
        self.count += len(data)
        return len(data)

    def flush(self) -> None:
        return None


def gzipped_size(stream: IO[bytes]) -> tuple[int, int]:
    """(uncompressed, gzip-compressed) size of STREAM."""
    counter = _Counter()
    raw = 0
    with gzip.GzipFile(fileobj=counter, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as gz:
        while chunk := stream.read(CHUNK):
            raw += len(chunk)
            gz.write(chunk)
    return raw, counter.count


def measure(saved: str) -> dict[str, int]:
    with tarfile.open(saved) as tar:
        manifest_member = tar.extractfile("manifest.json")
        assert manifest_member is not None
        manifest_bytes = manifest_member.read()
        manifest = json.loads(manifest_bytes)
        if len(manifest) != 1:
            raise SystemExit(f"{saved}: expected one image, found {len(manifest)}")
        entry = manifest[0]
        config = tar.extractfile(entry["Config"])
        assert config is not None
        config_size = len(config.read())
        layers_raw = layers_gz = 0
        for layer in entry["Layers"]:
            member = tar.extractfile(layer)
            assert member is not None
            raw, gz = gzipped_size(member)
            layers_raw += raw
            layers_gz += gz
    # The registry's manifest is a small JSON document like docker save's own.
    return {
        "layers": len(entry["Layers"]),
        "compressed": layers_gz + config_size + len(manifest_bytes),
        "layers_tar": layers_raw,
    }


def unpacked_from_daemon(image: str) -> int | None:
    docker = os.environ.get("DOCKER", "docker")
    try:
        out = subprocess.run([docker, "image", "inspect", "--format", "{{.Size}}", image],
                             check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return int(out.stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("saved", help="tarball written by `docker save`")
    parser.add_argument("--image", help="ask the engine for this image's unpacked size")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    sizes = measure(args.saved)
    unpacked = unpacked_from_daemon(args.image) if args.image else None
    sizes["unpacked"] = unpacked if unpacked is not None else sizes["layers_tar"]
    if args.json:
        print(json.dumps(sizes))
    else:
        print(f"compressed (pull, gzip -{GZIP_LEVEL} layers): {sizes['compressed'] / 1e6:6.2f} MB"
              f" ({sizes['compressed']} bytes, {sizes['layers']} layer(s))")
        print(f"unpacked (image inspect Size):           {sizes['unpacked'] / 1e6:6.2f} MB"
              f" ({sizes['unpacked']} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
