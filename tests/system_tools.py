"""System programs some tests drive (HAProxy, unshare): where they are, or why not.

Locally a missing program skips those tests with the command that installs it; under CI
(which installs them in .ci/run) a missing program fails them instead.
"""

from __future__ import annotations

import os
import shutil

import pytest


def require_binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        hint = f"{name} not installed (apt-get install -y {package})"
        if os.environ.get("CI"):
            pytest.fail(f"{hint}: CI must provide it")
        pytest.skip(hint)
    return path


def require_module(name: str, package: str | None = None) -> None:
    """A Python package some tests drive (e.g. TDLib's ``tdjson``): skip or fail like above."""
    import importlib.util

    if importlib.util.find_spec(name) is None:
        hint = f"Python package {name} not installed (pip install {package or name})"
        if os.environ.get("CI"):
            pytest.fail(f"{hint}: CI must provide it")
        pytest.skip(hint)
