#!/usr/bin/env bash
# Lets this x86-64 machine run arm64 programs, for building and smoke-testing the arm64 image.
#
# Installs Debian's qemu-user-static when missing, mounts binfmt_misc when it is not, and
# registers qemu-aarch64 from the package's own /usr/lib/binfmt.d/qemu-aarch64.conf. That
# entry has the F flag: the kernel opens the emulator once, at registration, so it also
# runs arm64 programs inside containers and chroots, where /usr/bin/qemu-* does not exist.
# Nothing is done when the handler is already there. binfmt_misc is global to the kernel:
# the handler only claims arm64 ELF files, which this machine could not run anyway.
#
#   scripts/qemu-binfmt.sh           register (idempotent), then check with an arm64 program
#   scripts/qemu-binfmt.sh status    exit 0 when arm64 programs run
set -euo pipefail

BINFMT=/proc/sys/fs/binfmt_misc
CONF=/usr/lib/binfmt.d/qemu-aarch64.conf

log() { printf 'qemu-binfmt: %s\n' "$*" >&2; }

registered() { [ -r "$BINFMT/qemu-aarch64" ] && grep -qx enabled "$BINFMT/qemu-aarch64"; }

if [ "${1:-}" = status ]; then
    registered && log "qemu-aarch64 is registered: $(grep -E '^(interpreter|flags)' \
        "$BINFMT/qemu-aarch64" | tr '\n' ' ')" && exit 0
    log "qemu-aarch64 is not registered"
    exit 1
fi

if [ "$(uname -m)" = aarch64 ]; then
    log "this machine is arm64 already"
    exit 0
fi

if [ ! -e "$CONF" ]; then
    log "installing qemu-user-static with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends qemu-user-static >/dev/null
fi

if [ ! -e "$BINFMT/register" ]; then
    if ! grep -qw binfmt_misc /proc/filesystems; then
        log "this kernel has no binfmt_misc (CONFIG_BINFMT_MISC): arm64 cannot be emulated"
        exit 1
    fi
    mount -t binfmt_misc binfmt_misc "$BINFMT" || {
        log "cannot mount binfmt_misc on $BINFMT (needs root outside a container, or a" \
            "privileged container): arm64 cannot be emulated"
        exit 1
    }
fi

if ! registered; then
    # The conf line is the register format itself: :name:type:offset:magic:mask:interp:flags
    interpreter=$(cut -d: -f7 "$CONF")
    [ -x "$interpreter" ] || { log "$interpreter (from $CONF) is missing"; exit 1; }
    if [ -e "$BINFMT/qemu-aarch64" ]; then
        echo 1 >"$BINFMT/qemu-aarch64"  # registered but disabled: enable it
    else
        cat "$CONF" >"$BINFMT/register" || {
            log "the kernel refused the registration from $CONF"
            exit 1
        }
    fi
fi
registered || { log "qemu-aarch64 did not register"; exit 1; }
log "qemu-aarch64 registered: $(grep -E '^(interpreter|flags)' "$BINFMT/qemu-aarch64" |
    tr '\n' ' ')"
