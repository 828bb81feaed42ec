# mtproxy container image: a drop-in for telegrammessenger/proxy in about a tenth of its size.
#
# The builder stage assembles a minimal root filesystem (docker/make-rootfs.py: Debian's
# python3.11, the shared libraries it loads, a trimmed standard library, the proxy and its
# dependencies); the final stage is that tree alone, FROM scratch. docs/container.md says
# how the size was reached and measured.
#
#   docker build -t mtproxy .                                # builder from the public registry
#   docker build --build-arg MTPROXY_EXTRAS= -t mtproxy .    # without uvloop (0.7 MB less)
#   make image                                               # offline: local builder, wheels
#   make image-multiarch                                     # amd64 + arm64, OCI index in dist/

# Any Debian bookworm image will do; the RUN below installs what it lacks. CI passes one made
# with debootstrap (scripts/base-image.sh), which has it all already.
ARG BUILDER_IMAGE=debian:bookworm-slim

FROM ${BUILDER_IMAGE} AS builder

# Unpinned on purpose: the image takes whatever bookworm currently ships, security fixes
# included; the interpreter's minor version (3.11) is fixed by the suite.
# hadolint ignore=DL3008
RUN if ! dpkg -s python3 python3-pip python3-cryptography python3-cffi-backend binutils \
            ca-certificates >/dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-pip python3-cryptography python3-cffi-backend binutils \
            ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi

WORKDIR /build
# The wheels for this image's CPU (scripts/wheels.sh): docker/wheels-arm64 for arm64.
ARG WHEELS_DIR=docker/wheels
COPY ${WHEELS_DIR}/ wheels/
COPY pyproject.toml README.md source/
COPY src/ source/src/

# Extras of the mtproxy package to install: "fast" (default: uvloop) or "".
ARG MTPROXY_EXTRAS="fast"
# A venv that sees Debian's packages: pip takes cryptography from there and installs only
# what Debian lacks. With wheels in the context (scripts/wheels.sh) nothing is downloaded.
RUN python3 -m venv --without-pip --system-site-packages venv \
    && if ls wheels/*.whl >/dev/null 2>&1; then export PIP_NO_INDEX=1; fi \
    && venv/bin/python -m pip install --no-cache-dir --no-compile --disable-pip-version-check \
        --root-user-action=ignore --find-links wheels "./source${MTPROXY_EXTRAS:+[$MTPROXY_EXTRAS]}"

# How the standard library is stored: "zip-mixed" (what a start imports as bytecode, the
# rest as source), "zip-py" (all source: about 0.5 MB smaller, starts about 1 s slower) or
# "zip-pyc" (all bytecode: about 0.5 MB larger).
ARG MTPROXY_STDLIB=zip-mixed
COPY docker/make-rootfs.py ./
RUN python3 make-rootfs.py --out /rootfs --probe-package mtproxy \
        --site venv/lib/python3.11/site-packages \
        --system-package cryptography --system-package _cffi_backend \
        --verify "-m mtproxy --version" --stdlib "${MTPROXY_STDLIB}"

FROM scratch

COPY --from=builder /rootfs/ /

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8

ARG MTPROXY_EXTRAS="fast"
LABEL org.opencontainers.image.title="mtproxy" \
      org.opencontainers.image.description="Telegram MTProto proxy; drop-in for telegrammessenger/proxy" \
      org.opencontainers.image.licenses="MIT" \
      io.github.mtproxy.extras="${MTPROXY_EXTRAS}"

# Starts as root, on purpose: the entrypoint gives /data to MTPROXY_USER (uid 10001,
# "mtproxy" in /etc/passwd) whatever the operator mounted there (a bind mount Docker
# created root-owned, a volume of the official image), then switches to that user for good,
# keeping only CAP_NET_BIND_SERVICE, before it reads or writes anything else
# (src/mtproxy/cli/entrypoint/privileges.py). `--user N` skips all that and runs as N.
ENV MTPROXY_USER=mtproxy
WORKDIR /data
VOLUME /data
# 443: clients; 2398: the stats page (publish it on localhost only).
EXPOSE 443 2398
# SIGTERM: stop accepting, let sessions drain for SHUTDOWN_GRACE (default 8 s: inside
# `docker stop`'s 10 s), exit 0.
STOPSIGNAL SIGTERM
# No shell in the image: the check is the proxy's own command, asking the stats port.
HEALTHCHECK --interval=5s --timeout=4s --start-period=30s --retries=3 \
    CMD ["/usr/bin/mtproxy", "healthcheck"]

ENTRYPOINT ["/usr/bin/python3", "-m", "mtproxy", "entrypoint"]
# The official image's server flags; the entrypoint adds what SECRET, TAG, WORKERS... ask for.
CMD ["-p", "2398", "-H", "443"]
