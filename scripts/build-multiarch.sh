#!/usr/bin/env bash
# `make image-multiarch`: the arm64 image, built the same offline way as the amd64 one, and
# both joined into one multi-arch OCI image in dist/.
#
# Run after `make image` (dist/mtproxy-image.tar is the amd64 half). qemu-user-static runs
# the arm64 builder (scripts/qemu-binfmt.sh registers it): debootstrap --arch=arm64 makes
# the builder base from Debian's arm64 packages (scripts/base-image.sh, cached like the
# amd64 one), pip takes uvloop's aarch64 wheel (scripts/wheels.sh), and `docker build
# --network none` runs the Dockerfile's RUN steps under emulation. Then:
#   dist/mtproxy-oci/, dist/mtproxy-oci.tar    the OCI index: linux/amd64 + linux/arm64/v8
#   dist/mtproxy-image-arm64.tar               the arm64 image alone, for `docker load`,
#                                              loaded as ARM64_IMAGE (mtproxy:arm64) for
#                                              the smoke test (tests/container/test_arm64.py)
set -euo pipefail
cd "$(dirname "$0")/.."

ARM64_IMAGE=${ARM64_IMAGE:-mtproxy:arm64}
BUILDER_IMAGE=${ARM64_BUILDER_IMAGE:-mtproxy-builder-base:bookworm-arm64}
MTPROXY_EXTRAS=${MTPROXY_EXTRAS-fast}
MTPROXY_STDLIB=${MTPROXY_STDLIB:-zip-mixed}
DIST=${DIST:-dist}
OCI_TAG=${OCI_TAG:-latest}
export DOCKER=${DOCKER:-$( [ -x /usr/bin/docker ] && echo /usr/bin/docker || echo docker )}
export DOCKER_HOST=${DOCKER_HOST:-unix://${MTPROXY_DOCKER_SOCK:-/run/mtproxy-docker.sock}}
PYTHON=${PYTHON:-python3}

step_start=$(date +%s)
step() {
    local now
    now=$(date +%s)
    printf 'build-multiarch: %-38s %4ss\n' "$1" "$((now - step_start))" >&2
    step_start=$now
}
total_start=$step_start

[ -s "$DIST/mtproxy-image.tar" ] || { echo "build-multiarch: run make image first" >&2; exit 1; }
scripts/docker-engine.sh start
scripts/qemu-binfmt.sh
step "engine, qemu-aarch64"
DEBIAN_ARCH=arm64 BUILDER_BASE_IMAGE=$BUILDER_IMAGE scripts/base-image.sh
step "arm64 builder base image"
WHEELS_ARCH=aarch64 WHEELS_DIR=docker/wheels-arm64 MTPROXY_EXTRAS=$MTPROXY_EXTRAS \
    PYTHON=$PYTHON scripts/wheels.sh
step "arm64 wheels"
build_tag="$ARM64_IMAGE-build"
"$DOCKER" build --network none \
    --build-arg BUILDER_IMAGE="$BUILDER_IMAGE" \
    --build-arg WHEELS_DIR=docker/wheels-arm64 \
    --build-arg MTPROXY_EXTRAS="$MTPROXY_EXTRAS" \
    --build-arg MTPROXY_STDLIB="$MTPROXY_STDLIB" \
    -t "$build_tag" . >"$DIST/build-arm64.log" 2>&1 || {
    tail -n 40 "$DIST/build-arm64.log" >&2
    exit 1
}
step "docker build under qemu (log: $DIST/build-arm64.log)"
"$DOCKER" save "$build_tag" -o "$DIST/mtproxy-image-arm64.unlabelled.tar"
"$PYTHON" scripts/oci-image.py --out "$DIST/mtproxy-oci" --tag "$OCI_TAG" \
    "linux/amd64=$DIST/mtproxy-image.tar" \
    "linux/arm64=$DIST/mtproxy-image-arm64.unlabelled.tar" \
    --docker-tar "linux/arm64=$DIST/mtproxy-image-arm64.tar,$ARM64_IMAGE"
rm -f "$DIST/mtproxy-image-arm64.unlabelled.tar"
"$DOCKER" rmi "$build_tag" >/dev/null
"$DOCKER" load -i "$DIST/mtproxy-image-arm64.tar" >/dev/null
if scripts/docker-engine.sh status >/dev/null 2>&1; then
    "$DOCKER" image prune -f >/dev/null
fi
step "OCI index, docker load $ARM64_IMAGE"
echo "arm64 image $ARM64_IMAGE ($("$DOCKER" image inspect -f '{{.Os}}/{{.Architecture}}' \
    "$ARM64_IMAGE"), extras: ${MTPROXY_EXTRAS:-none}), built in" \
    "$(( $(date +%s) - total_start ))s; saved as $DIST/mtproxy-image-arm64.tar"
"$PYTHON" scripts/image-size.py "$DIST/mtproxy-image-arm64.tar" --image "$ARM64_IMAGE"
