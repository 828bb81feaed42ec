"""Fixtures for the container-image tests, which drive a real Docker engine.

They run only with MTPROXY_DOCKER_TESTS=1 (CI sets it after `make image`); elsewhere they
are skipped with the reason, except under CI=true, where a missing opt-in would silently
hide the image from the suite, so every test fails instead. The image is built once per
session (scripts/build-image.sh) when the engine does not have it yet.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SOCK = "/run/mtproxy-docker.sock"
# Generous: a cold `docker run` is well under a second here, the image build under 3 min.
RUN_TIMEOUT_S = 60.0
BUILD_TIMEOUT_S = 900.0


def _docker_binary() -> str:
    explicit = os.environ.get("DOCKER")
    if explicit:
        return explicit
    # Debian's client matches the engine scripts/docker-engine.sh starts.
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


@dataclass
class Docker:
    """Runs the docker CLI against the chosen engine, always with a timeout."""

    binary: str
    env: dict[str, str]
    image: str
    cleanups: list[list[str]] = field(default_factory=list)
    # Set when the tests must fail rather than run: every call then fails with this reason.
    refusal: str | None = None

    def __call__(self, *args: str, timeout: float = RUN_TIMEOUT_S,
                 check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        if self.refusal is not None:
            pytest.fail(self.refusal, pytrace=False)
        result = subprocess.run([self.binary, *args], env=self.env, capture_output=True,
                                text=True, timeout=timeout, input=stdin)
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def run(self, *args: str, entrypoint: str | None = "/usr/bin/python3",
            network: str = "none", timeout: float = RUN_TIMEOUT_S,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """`docker run --rm` of the image; ARGS are docker options, then `--`, then command."""
        if "--" in args:
            split = args.index("--")
            options, command = list(args[:split]), list(args[split + 1:])
        else:
            options, command = [], list(args)
        if entrypoint is not None:
            options += ["--entrypoint", entrypoint]
        return self("run", "--rm", "--network", network, *options, self.image, *command,
                    timeout=timeout, check=check)

    def python(self, code: str, *options: str, network: str = "none",
               check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run CODE with the image's interpreter, as the image's user unless OPTIONS say."""
        return self.run(*options, "--", "-c", code, network=network, check=check)

    def volume(self) -> str:
        name = f"mtproxy-test-{uuid.uuid4().hex[:12]}"
        self("volume", "create", name)
        self.cleanups.append(["volume", "rm", "-f", name])
        return name

    def inspect_image(self) -> dict[str, object]:
        data = json.loads(self("image", "inspect", self.image).stdout)
        assert isinstance(data, list) and len(data) == 1
        entry = data[0]
        assert isinstance(entry, dict)
        return entry


def _refusal() -> str | None:
    """None to run the tests; a reason to fail them; skips them otherwise."""
    if os.environ.get("MTPROXY_DOCKER_TESTS") == "1":
        return None
    if os.environ.get("CI") == "true":
        # Failing in the test itself (not in this fixture's setup) reports them as failed.
        return ("CI=true but MTPROXY_DOCKER_TESTS is not 1: CI must build the image and run "
                "the container tests (.ci/run does both)")
    pytest.skip("container tests need a Docker engine; run `make image` and set "
                "MTPROXY_DOCKER_TESTS=1 (as CI does)")


def _engine_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / "scripts" / "docker-engine.sh"), *args],
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)


@pytest.fixture(scope="session")
def docker() -> Iterator[Docker]:
    refusal = _refusal()
    env = dict(os.environ)
    env.setdefault("DOCKER_HOST", f"unix://{os.environ.get('MTPROXY_DOCKER_SOCK', DEFAULT_SOCK)}")
    binary = _docker_binary()
    image = os.environ.get("IMAGE", "mtproxy:latest")
    if refusal is not None:
        yield Docker(binary=binary, env=env, image=image, refusal=refusal)
        return
    if shutil.which(binary) is None:
        pytest.fail(f"MTPROXY_DOCKER_TESTS=1 but there is no docker client ({binary})")
    client = Docker(binary=binary, env=env, image=image)

    started_here = False
    if client("version", check=False).returncode != 0:
        started = _engine_script("start")
        assert started.returncode == 0, f"could not start the engine:\n{started.stderr}"
        started_here = True
    if client("image", "inspect", client.image, check=False).returncode != 0:
        # This interpreter has pip, which scripts/wheels.sh needs; python3 may not.
        build_env = {**env, "PYTHON": sys.executable}
        built = subprocess.run([str(ROOT / "scripts" / "build-image.sh")], cwd=ROOT,
                               env=build_env,
                               capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        assert built.returncode == 0, f"building the image failed:\n{built.stderr[-4000:]}"
    try:
        yield client
    finally:
        for cleanup in client.cleanups:
            client(*cleanup, check=False)
        if started_here:
            _engine_script("stop")
