"""Data-directory files: atomic writes that survive a failure mid-way, and the secret file."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtproxy.state import (
    StateError,
    atomic_write,
    load_or_create_secrets,
    parse_secret_list,
    read_secrets,
    write_secrets,
)

OLD = b"old contents that must survive\n"


def test_atomic_write_creates_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "dir" / "file"
    atomic_write(target, b"one")
    assert target.read_bytes() == b"one"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    atomic_write(target, b"two", mode=0o644)
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert os.listdir(target.parent) == ["file"]


class Boom(OSError):
    pass


@pytest.mark.parametrize("step", ["fsync", "replace", "chmod", "interrupt"])
def test_failure_mid_write_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    target = tmp_path / "secret"
    target.write_bytes(OLD)
    seen: list[str] = []

    def fail(*args: object, **kwargs: object) -> None:
        seen.append(step)
        if step == "interrupt":
            raise KeyboardInterrupt
        raise Boom("disk on fire")

    name = "fsync" if step == "interrupt" else step
    monkeypatch.setattr(os, name, fail)
    with pytest.raises(Boom if step != "interrupt" else KeyboardInterrupt):
        atomic_write(target, b"new contents, never to be seen" * 100)
    monkeypatch.undo()
    assert seen
    assert target.read_bytes() == OLD
    assert os.listdir(tmp_path) == ["secret"]  # no temporary file left behind


def test_failure_while_writing_the_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "secret"
    target.write_bytes(OLD)
    real_fdopen = os.fdopen

    class FailingFile:
        def __init__(self, fd: int, mode: str) -> None:
            self.inner = real_fdopen(fd, mode)

        def __enter__(self) -> FailingFile:
            return self

        def __exit__(self, *exc: object) -> None:
            self.inner.close()

        def write(self, data: bytes) -> int:
            self.inner.write(data[: len(data) // 2])
            self.inner.flush()
            raise Boom("no space left on device")

    monkeypatch.setattr(os, "fdopen", FailingFile)
    with pytest.raises(Boom):
        atomic_write(target, b"x" * 10_000)
    monkeypatch.undo()
    assert target.read_bytes() == OLD
    assert os.listdir(tmp_path) == ["secret"]


keys = st.binary(min_size=16, max_size=16)


@given(st.lists(keys, min_size=1, max_size=16))
@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_secret_file_round_trip(tmp_path: Path, secrets: list[bytes]) -> None:
    with tempfile.TemporaryDirectory(dir=tmp_path) as d:
        data_dir = Path(d) / "data"
        assert read_secrets(data_dir) is None
        write_secrets(data_dir, secrets)
        assert read_secrets(data_dir) == secrets
        path = data_dir / "secret"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text() == ",".join(k.hex() for k in secrets) + "\n"


def test_secret_list_spellings() -> None:
    a, b = "00" * 16, "AB" * 16
    assert parse_secret_list(f" {a} ,\n{b}\n\n,") == [bytes(16), b"\xab" * 16]
    assert parse_secret_list("") == []


@pytest.mark.parametrize(
    ("content", "hint"),
    [
        (b"not a secret\n", "fix it or delete it"),
        (b"00" * 16 + b",zz\n", "fix it or delete it"),
        (b"", "1 to 16 secrets"),
        (b" ,\n", "1 to 16 secrets"),
        (b",".join([b"00" * 16] * 17), "1 to 16 secrets"),
        ("é".encode() * 16, "fix or delete the file"),
    ],
)
def test_corrupt_secret_file(tmp_path: Path, content: bytes, hint: str) -> None:
    (tmp_path / "secret").write_bytes(content)
    with pytest.raises(StateError) as info:
        read_secrets(tmp_path)
    assert str(tmp_path / "secret") in str(info.value)
    assert hint in str(info.value)


def test_secret_path_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "secret").mkdir()
    with pytest.raises(StateError, match="fix or delete the file"):
        read_secrets(tmp_path)


def test_unwritable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StateError, match="choose a writable --data-dir"):
        write_secrets(blocker / "data", [bytes(16)])


def test_failed_secret_write_is_a_state_error_and_keeps_the_old_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_secrets(tmp_path, [bytes(16)])

    def fail(*args: object) -> None:
        raise Boom(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(StateError, match="No space left on device"):
        write_secrets(tmp_path, [b"\x01" * 16])
    monkeypatch.undo()
    assert read_secrets(tmp_path) == [bytes(16)]
    assert os.listdir(tmp_path) == ["secret"]


def test_load_or_create(tmp_path: Path) -> None:
    created, fresh = load_or_create_secrets(tmp_path / "d", count=3)
    assert fresh and len(created) == 3 and len(set(created)) == 3
    assert all(len(k) == 16 for k in created)
    again, fresh = load_or_create_secrets(tmp_path / "d", count=5)
    assert not fresh and again == created
