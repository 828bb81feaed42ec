#!/usr/bin/env bash
# A private Docker engine for building and testing the image on a machine without one.
#
# It installs Debian's docker.io (and debootstrap, for scripts/base-image.sh) when missing and
# runs dockerd with its own data root, exec root, socket and pidfile, without touching
# iptables, IP forwarding or a bridge, so it cannot disturb any other engine or the host's
# network. Containers it runs use `--network host` or `--network none`. MTPROXY_DOCKER_SOCK
# may name another engine's socket (e.g. /var/run/docker.sock): one that already answers is
# used as it is and never stopped.
#
#   scripts/docker-engine.sh start    start it (no-op when already up), wait until it answers
#   scripts/docker-engine.sh stop     stop the daemon this script started (by its pidfile PID)
#   scripts/docker-engine.sh status   exit 0 when the daemon this script started answers
#   scripts/docker-engine.sh env      print `export DOCKER_HOST=...` for `eval`
set -euo pipefail

STATE_DIR=${MTPROXY_DOCKER_STATE:-/var/lib/mtproxy-docker}
RUN_DIR=${MTPROXY_DOCKER_RUN:-/run/mtproxy-docker}
SOCK=${MTPROXY_DOCKER_SOCK:-/run/mtproxy-docker.sock}
PIDFILE="$RUN_DIR/dockerd.pid"
LOG="$STATE_DIR/dockerd.log"
START_TIMEOUT=${MTPROXY_DOCKER_START_TIMEOUT:-60}
STOP_TIMEOUT=${MTPROXY_DOCKER_STOP_TIMEOUT:-30}
export DOCKER_HOST="unix://$SOCK"
# Debian's client matches Debian's daemon; another `docker` earlier on PATH may not.
DOCKER=${DOCKER:-$( [ -x /usr/bin/docker ] && echo /usr/bin/docker || echo docker )}

log() { printf 'docker-engine: %s\n' "$*" >&2; }

install_missing() {
    local pkgs=()
    command -v dockerd >/dev/null 2>&1 || [ -x /usr/sbin/dockerd ] || pkgs+=(docker.io)
    command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || pkgs+=(debootstrap)
    [ ${#pkgs[@]} -eq 0 ] && return 0
    log "installing ${pkgs[*]} with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
}

our_pid() {
    # The PID from our pidfile, only while that process is still a dockerd.
    [ -s "$PIDFILE" ] || return 1
    local pid
    pid=$(cat "$PIDFILE")
    [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = dockerd ] || return 1
    echo "$pid"
}

answers() { "$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

start() {
    install_missing
    if answers; then
        if our_pid >/dev/null; then
            log "already running (pid $(our_pid)), DOCKER_HOST=$DOCKER_HOST"
        else
            log "an engine not started here already answers on $SOCK; using it as it is"
        fi
        return 0
    fi
    mkdir -p "$STATE_DIR/data" "$RUN_DIR"
    # Left behind by a daemon that was killed (our_pid found no live dockerd behind it).
    if [ -e "$PIDFILE" ]; then
        log "removing stale $PIDFILE"
        rm -f "$PIDFILE"
    fi
    local dockerd
    dockerd=$(command -v dockerd || echo /usr/sbin/dockerd)
    log "starting $dockerd (data root $STATE_DIR/data, socket $SOCK)"
    # setsid: the daemon outlives this script and gets no signals meant for its caller.
    setsid "$dockerd" \
        --iptables=false --ip-masq=false --ip-forward=false --bridge=none \
        --data-root "$STATE_DIR/data" \
        --exec-root "$RUN_DIR/exec" \
        --pidfile "$PIDFILE" \
        --host "unix://$SOCK" \
        </dev/null >"$LOG" 2>&1 &
    local launched=$! waited=0
    until answers; do
        if ! kill -0 "$launched" 2>/dev/null; then
            log "dockerd exited while starting; last lines of $LOG:"
            tail -n 20 "$LOG" >&2
            return 1
        fi
        if [ "$waited" -ge "$START_TIMEOUT" ]; then
            log "dockerd did not answer within ${START_TIMEOUT}s; stopping it"
            kill "$launched" 2>/dev/null || true
            tail -n 20 "$LOG" >&2
            return 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    log "ready after ${waited}s: $("$DOCKER" version --format 'server {{.Server.Version}}')," \
        "storage driver $("$DOCKER" info --format '{{.Driver}}'), DOCKER_HOST=$DOCKER_HOST"
}

stop() {
    local pid
    if ! pid=$(our_pid); then
        log "not running (no live dockerd behind $PIDFILE)"
        return 0
    fi
    log "stopping dockerd pid $pid"
    kill -TERM "$pid"
    local waited=0
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$waited" -ge "$STOP_TIMEOUT" ]; then
            log "dockerd pid $pid ignored SIGTERM for ${STOP_TIMEOUT}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 1
        waited=$((waited + 1))
    done
    rm -f "$PIDFILE"
    unmount_leftovers
}

unmount_leftovers() {
    # dockerd leaves its data root bind-mounted on itself and the default network namespace
    # mounted under its exec root; they would keep both directories busy. Only mounts under
    # this engine's own directories are touched, the deepest first.
    local mnt
    awk '{print $5}' /proc/self/mountinfo | { grep -E "^($STATE_DIR|$RUN_DIR)(/|$)" || true; } |
        sort -r | while read -r mnt; do
            umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null ||
                log "could not unmount $mnt"
        done
}

status() {
    if our_pid >/dev/null && answers; then
        log "running (pid $(our_pid)), DOCKER_HOST=$DOCKER_HOST"
        return 0
    fi
    log "not running"
    return 1
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) printf 'export DOCKER_HOST=%q\n' "$DOCKER_HOST" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
