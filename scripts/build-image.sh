#!/usr/bin/env bash
# `make image`: builds the container image with no registry and no network in the build.
#
# Starts the private engine (scripts/docker-engine.sh), makes the builder base image with
# debootstrap (scripts/base-image.sh), downloads the wheels (scripts/wheels.sh), builds with
# `--network none`, saves the image as dist/mtproxy-image.tar (+ .tar.gz, for `docker load`)
# and prints its compressed and unpacked sizes. The engine is left running for the tests;
# `scripts/docker-engine.sh stop` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-mtproxy:latest}
BUILDER_IMAGE=${BUILDER_IMAGE:-mtproxy-builder-base:bookworm}
MTPROXY_EXTRAS=${MTPROXY_EXTRAS-fast}
MTPROXY_STDLIB=${MTPROXY_STDLIB:-zip-mixed}
DIST=${DIST:-dist}
export DOCKER=${DOCKER:-$( [ -x /usr/bin/docker ] && echo /usr/bin/docker || echo docker )}
export DOCKER_HOST=${DOCKER_HOST:-unix://${MTPROXY_DOCKER_SOCK:-/run/mtproxy-docker.sock}}

step_start=$(date +%s)
step() {
    local now
    now=$(date +%s)
    printf 'build-image: %-34s %4ss\n' "$1" "$((now - step_start))" >&2
    step_start=$now
}
total_start=$step_start

scripts/docker-engine.sh start
step "engine"
BUILDER_BASE_IMAGE=$BUILDER_IMAGE scripts/base-image.sh
step "builder base image"
scripts/wheels.sh
step "wheels"
mkdir -p "$DIST"
"$DOCKER" build --network none \
    --build-arg BUILDER_IMAGE="$BUILDER_IMAGE" \
    --build-arg MTPROXY_EXTRAS="$MTPROXY_EXTRAS" \
    --build-arg MTPROXY_STDLIB="$MTPROXY_STDLIB" \
    -t "$IMAGE" . >"$DIST/build.log" 2>&1 || {
    tail -n 40 "$DIST/build.log" >&2
    exit 1
}
step "docker build (log: $DIST/build.log)"
"$DOCKER" save "$IMAGE" -o "$DIST/mtproxy-image.tar"
gzip -6 -c "$DIST/mtproxy-image.tar" >"$DIST/mtproxy-image.tar.gz"
step "docker save"
# Replaced images and build leftovers only fill the private engine's disk.
if scripts/docker-engine.sh status >/dev/null 2>&1; then
    "$DOCKER" image prune -f >/dev/null
fi
echo "image $IMAGE (extras: ${MTPROXY_EXTRAS:-none}, stdlib: $MTPROXY_STDLIB)," \
    "built in $(( $(date +%s) - total_start ))s; saved as $DIST/mtproxy-image.tar(.gz)"
"${PYTHON:-python3}" scripts/image-size.py "$DIST/mtproxy-image.tar" --image "$IMAGE"
