#!/usr/bin/env bash
# Fills docker/wheels/ with every wheel the image build needs, so `docker build` runs offline.
#
# The runtime dependencies (and those of the `fast` extra: uvloop) come as Linux wheels for
# CPython 3.11 and WHEELS_ARCH (x86_64 or aarch64), whatever this machine runs; setuptools and wheel come too because
# the builder stage builds mtproxy itself from the source in the build context. Packages the
# image takes from Debian instead (cryptography, see docs/container.md) are left out. The
# Dockerfile installs with --no-index as soon as this directory holds a wheel.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
DEST=${WHEELS_DIR:-docker/wheels}
# The image's CPU, as manylinux names it: x86_64 (default) or aarch64.
WHEELS_ARCH=${WHEELS_ARCH:-x86_64}
EXTRAS=${MTPROXY_EXTRAS-fast}
# Installed from Debian in the builder stage (python3-cryptography); space-separated.
FROM_DEBIAN=${WHEELS_FROM_DEBIAN-cryptography}
PY_VERSION=${WHEELS_PYTHON_VERSION:-3.11}

log() { printf 'wheels: %s\n' "$*" >&2; }

mkdir -p "$DEST"
rm -f "$DEST"/*.whl
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The requirements are read from pyproject.toml, so this list never drifts from it.
"$PYTHON" - "$EXTRAS" "$FROM_DEBIAN" >"$tmp/requirements.txt" <<'PY'
import re
import sys
import tomllib

with open("pyproject.toml", "rb") as f:
    meta = tomllib.load(f)
project = meta["project"]
reqs = list(project["dependencies"]) + list(meta["build-system"]["requires"])
for extra in filter(None, sys.argv[1].split(",")):
    reqs += project["optional-dependencies"][extra]
skip = set(sys.argv[2].split())
print("\n".join(r for r in reqs if re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0] not in skip))
PY
log "downloading: $(tr '\n' ' ' <"$tmp/requirements.txt")"

# Every manylinux tag that Debian bookworm's glibc 2.36 can load, newest first.
platforms=()
for tag in manylinux_2_34 manylinux_2_28 manylinux2014 manylinux_2_17 manylinux1 linux; do
    platforms+=(--platform "${tag}_${WHEELS_ARCH}")
done

"$PYTHON" -m pip download --quiet --disable-pip-version-check \
    --only-binary=:all: --implementation cp --python-version "$PY_VERSION" "${platforms[@]}" \
    --dest "$DEST" -r "$tmp/requirements.txt"

wheels=("$DEST"/*.whl)
log "${#wheels[@]} wheels in $DEST:"
printf '  %s\n' "${wheels[@]##*/}" >&2
