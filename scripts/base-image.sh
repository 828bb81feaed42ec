#!/usr/bin/env bash
# Makes the builder base image locally, for machines that reach no container registry.
#
# Debian's `debootstrap --variant=minbase` lays out bookworm with exactly what the Dockerfile's
# builder stage uses (python3.11, pip, python3-cryptography, binutils for strip, CA
# certificates), and `docker import` turns it into an image. The root filesystem tarball is
# cached, so a repeated run only re-imports it; nothing is done when the image exists.
#
# DEBIAN_ARCH (default: this machine's) makes it for another CPU: debootstrap runs the
# target's maintainer scripts through qemu-user-static (scripts/qemu-binfmt.sh registers it),
# and the image is imported with that platform.
#
# Needs a running engine (DOCKER_HOST, see scripts/docker-engine.sh) and root for debootstrap.
set -euo pipefail

ARCH=${DEBIAN_ARCH:-$(dpkg --print-architecture)}
IMAGE=${BUILDER_BASE_IMAGE:-mtproxy-builder-base:bookworm}
SUITE=${DEBIAN_SUITE:-bookworm}
CACHE_DIR=${MTPROXY_CACHE_DIR:-/var/cache/mtproxy-image}
# Empty: debootstrap's own default mirror.
MIRROR=${DEBIAN_MIRROR:-}
PACKAGES=python3,python3-pip,python3-cryptography,python3-cffi-backend,binutils,ca-certificates
DOCKER=${DOCKER:-$( [ -x /usr/bin/docker ] && echo /usr/bin/docker || echo docker )}

log() { printf 'base-image: %s\n' "$*" >&2; }

if "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
    log "$IMAGE already exists"
    exit 0
fi

# The cache key changes whenever the suite, the architecture or the package list does.
key=$(printf '%s %s %s' "$SUITE" "$ARCH" "$PACKAGES" | sha256sum | cut -c1-12)
tarball="$CACHE_DIR/rootfs-$SUITE-$ARCH-minbase-$key.tar"
mkdir -p "$CACHE_DIR"

if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null 2>&1 || {
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    }
    root=$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    log "debootstrap --arch=$ARCH --variant=minbase $SUITE (+ $PACKAGES) into $root"
    start=$(date +%s)
    # shellcheck disable=SC2086  # an empty mirror must vanish, not become an empty argument
    debootstrap --arch="$ARCH" --variant=minbase --include="$PACKAGES" "$SUITE" "$root" $MIRROR \
        >"$CACHE_DIR/debootstrap-$ARCH.log" 2>&1 || {
        log "debootstrap failed; last lines of $CACHE_DIR/debootstrap-$ARCH.log:"
        tail -n 20 "$CACHE_DIR/debootstrap-$ARCH.log" >&2
        exit 1
    }
    # Downloaded .debs and apt lists only make the image bigger.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/debootstrap
    tar --numeric-owner --xattrs -C "$root" -cf "$tarball.part" .
    mv "$tarball.part" "$tarball"
    log "root filesystem cached as $tarball after $(( $(date +%s) - start ))s"
fi

log "importing $tarball as $IMAGE"
"$DOCKER" import --platform "linux/$ARCH" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    "$tarball" "$IMAGE" >/dev/null
log "$IMAGE: $("$DOCKER" image inspect --format '{{.Size}}' "$IMAGE") bytes"
