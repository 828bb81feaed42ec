"""Root only long enough to make the data directory ours, then the proxy user for good.

The image starts as root because that is the only way a secret survives whatever the
operator mounts at /data: Docker creates a missing bind-mount directory root-owned (755),
and the official image leaves root-owned files behind. So, as root, the entrypoint gives
the data directory and the files directly in it to ``MTPROXY_USER`` (the image sets
``mtproxy``, uid 10001), then switches to that user with ``setresuid``, keeping at most
one capability, ``CAP_NET_BIND_SERVICE``, and only when the container has it: ports
below 1024 still bind with ``--network host``, and workers that the supervisor restarts
get sockets it binds again. Nothing here runs unless the process is root and
``MTPROXY_USER`` names a user, so ``mtproxy`` started by hand is left alone.

Capabilities are read from ``/proc/self/status``; ``prctl`` and ``capset`` (which the
standard library does not wrap) are called through ctypes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from mtproxy.cli.entrypoint.contract import EXIT_CONFIG, EXIT_DATA_DIR, Fatal, say

CAP_CHOWN = 0
CAP_DAC_OVERRIDE = 1
CAP_SETGID = 6
CAP_SETUID = 7
CAP_NET_BIND_SERVICE = 10

_PR_SET_KEEPCAPS = 8
_PR_SET_NO_NEW_PRIVS = 38
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


@dataclass(frozen=True)
class Target:
    uid: int
    gid: int
    name: str


def capabilities(which: str = "CapEff") -> int:
    """A capability set of this process as a bit mask (0 where /proc says nothing)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(which + ":"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def has(cap: int, which: str = "CapEff") -> bool:
    return bool(capabilities(which) >> cap & 1)


def target(spec: str) -> Target:
    """``MTPROXY_USER``: a user name, or ``UID[:GID]`` (the group defaults to the uid's)."""
    user, _, group = spec.partition(":")
    try:
        if user.isdigit():
            uid = int(user)
            try:
                entry = pwd.getpwuid(uid)
                name, gid = entry.pw_name, entry.pw_gid
            except KeyError:
                name, gid = str(uid), uid
        else:
            entry = pwd.getpwnam(user)
            name, uid, gid = entry.pw_name, entry.pw_uid, entry.pw_gid
        if group:
            if not group.isdigit():
                raise ValueError
            gid = int(group)
    except (KeyError, ValueError):
        raise Fatal(EXIT_CONFIG, f"MTPROXY_USER {spec!r} is not a user of this image: give "
                    "a name from /etc/passwd (mtproxy) or a number, UID or UID:GID.") from None
    return Target(uid, gid, name)


def give_data_dir(data_dir: Path, user: Target) -> None:
    """Create DATA_DIR if needed and make it, and the files directly in it, USER's."""
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        msg = (f"Cannot create the data directory {data_dir}: {exc.strerror or exc}; mount a "
               "volume there (-v proxy-config:/data).")
        raise Fatal(EXIT_DATA_DIR, msg) from None
    moved: list[str] = []
    entries = [data_dir]
    with contextlib.suppress(OSError):
        entries += sorted(data_dir.iterdir())
    for path in entries:
        try:
            st = path.lstat()
            if (path is not data_dir and not stat.S_ISREG(st.st_mode)) or (
                st.st_uid == user.uid and st.st_gid == user.gid
            ):
                continue
            os.chown(path, user.uid, user.gid, follow_symlinks=False)
        except OSError:
            continue  # a read-only volume, or no CAP_CHOWN: checked when it matters
        moved.append(path.name if path is not data_dir else str(data_dir))
    if moved:
        say(f"[*] Gave {', '.join(moved)} to {user.name} (uid {user.uid}), the user the "
            "proxy runs as.")


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _call(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _keep_only(mask: int) -> None:
    """Set the effective and permitted capability sets to MASK (the low 32 bits)."""
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)(_Data(mask, mask, 0), _Data(0, 0, 0))
    _call(_libc().capset(ctypes.byref(header), data), "capset")


def become(user: Target) -> str:
    """Switch this process to USER for good; returns the capabilities it keeps."""
    keep = has(CAP_NET_BIND_SERVICE, "CapPrm")
    libc = _libc()
    if keep:
        _call(libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
    os.setgroups([])
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)
    if keep:
        _keep_only(1 << CAP_NET_BIND_SERVICE)
        _call(libc.prctl(_PR_SET_KEEPCAPS, 0, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
    # Nothing this process or its workers execute may gain privileges again.
    _call(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    return "NET_BIND_SERVICE" if keep else "none"


def settle(data_dir: Path, spec: str | None) -> None:
    """As root with ``MTPROXY_USER`` set: hand DATA_DIR over and drop root."""
    if os.geteuid() != 0 or not spec:
        return
    user = target(spec)
    if user.uid == 0:
        return
    give_data_dir(data_dir, user)
    if not (has(CAP_SETUID) and has(CAP_SETGID)):
        kept = "NET_BIND_SERVICE" if has(CAP_NET_BIND_SERVICE) else "no capability"
        say(f"[!] Running as root with {kept}: the container lacks SETUID and SETGID "
            f"(--cap-drop ALL), so the proxy cannot become {user.name}. Add --user "
            f"{user.uid}:{user.gid}, or --cap-add SETUID --cap-add SETGID --cap-add CHOWN.")
        return
    try:
        kept = become(user)
    except OSError as exc:
        raise Fatal(EXIT_DATA_DIR, f"Cannot switch to {user.name} (uid {user.uid}): "
                    f"{exc.strerror or exc}; start the container with --user "
                    f"{user.uid}:{user.gid}.") from None
    say(f"[+] Running as {user.name} (uid {user.uid}, gid {user.gid}); capabilities kept: "
        f"{kept}.")
