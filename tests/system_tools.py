"""System programs and privileges some tests need (HAProxy, a network namespace): where
they are, or why not.

Locally a missing program or privilege skips those tests with the reason and the fix;
under CI (which installs the programs in .ci/run and runs as root) it fails them instead,
so a CI run can never pass by skipping them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import shutil
import subprocess
from collections.abc import Iterator
from typing import NoReturn

import pytest


def unavailable(reason: str) -> NoReturn:
    """Skip the calling test locally; fail it under CI, which must provide everything."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI must provide it")
    pytest.skip(reason)


def require_root(why: str) -> None:
    """Tests that act as the image's entrypoint does, or make namespaces: root only."""
    if os.geteuid() != 0:
        unavailable(f"needs root: {why}")


@contextlib.contextmanager
def soft_fd_limit(at_least: int, at_most: int, why: str) -> Iterator[None]:
    """Raise this process's soft descriptor limit (children inherit it) to the hard one,
    capped at ``at_most``; unavailable below ``at_least``; restored afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard == resource.RLIM_INFINITY else min(hard, at_most)
    if wanted < at_least:
        unavailable(f"hard descriptor limit {hard} is too low: {why}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def require_binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} not installed (apt-get install -y {package})")
    return path


def require_module(name: str, package: str | None = None) -> None:
    """A Python package some tests drive (e.g. TDLib's ``tdjson``): skip or fail like above."""
    import importlib.util

    if importlib.util.find_spec(name) is None:
        hint = f"Python package {name} not installed (pip install {package or name})"
        if os.environ.get("CI"):
            pytest.fail(f"{hint}: CI must provide it")
        pytest.skip(hint)


@functools.cache
def _namespace_prefix(unshare: str) -> tuple[tuple[str, ...] | None, str]:
    error = ""
    # Plain -n needs root (CAP_SYS_ADMIN). -r -n first makes a user namespace in which
    # the caller is root, which most kernels allow unprivileged users too.
    for flags in (("-n",), ("-r", "-n")):
        probe = subprocess.run(
            [unshare, *flags, "true"], capture_output=True, text=True, timeout=10
        )
        if probe.returncode == 0:
            return (unshare, *flags), ""
        error = error or probe.stderr.strip()
    return None, error


def network_namespace() -> list[str]:
    """A command prefix that runs a program in a fresh network namespace of its own: only
    a loopback interface, still down (``ip link set lo up`` inside brings it up)."""
    prefix, error = _namespace_prefix(require_binary("unshare", "util-linux"))
    if prefix is None:
        unavailable(
            f"cannot create a network namespace ({error or 'unshare failed'}): run the tests "
            "as root, or let unprivileged users create user namespaces"
        )
    return list(prefix)
