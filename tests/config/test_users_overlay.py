"""users.json, the management API's overlay on the configuration's users: what it writes
reads back the same, it merges predictably, and a broken file is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtproxy.config.errors import ConfigError
from mtproxy.config.settings import load_settings, with_users
from mtproxy.config.users import (
    USERS_FILE,
    Overlay,
    UserConfig,
    load_overlay,
    merge_users,
    save_overlay,
    user_entry,
    user_to_entry,
)
from mtproxy.protocol.secret import ClientSecret, Mode

A, B, C = (bytes([n]) * 16 for n in (0xA1, 0xB2, 0xC3))


def user(name: str, key: bytes, **kw: object) -> UserConfig:
    return UserConfig(name, ClientSecret(key, Mode.CLASSIC), **kw)  # type: ignore[arg-type]


secrets = st.builds(
    ClientSecret, st.binary(min_size=16, max_size=16),
    st.sampled_from([Mode.CLASSIC, Mode.SECURE]),
) | st.builds(lambda k: ClientSecret(k, Mode.TLS, "cdn.example.org"),
              st.binary(min_size=16, max_size=16))  # fmt: skip
users = st.builds(
    UserConfig,
    name=st.from_regex(r"[a-z][a-z0-9_-]{0,20}", fullmatch=True).filter(
        lambda n: not n.startswith("secret")),
    secret=secrets,
    max_connections=st.none() | st.integers(1, 10**6),
    max_ips=st.none() | st.integers(1, 10**6),
    quota=st.none() | st.integers(1, 10**15),
    rate_up=st.none() | st.integers(1, 10**12),
    rate_down=st.none() | st.integers(1, 10**12),
    expires=st.none() | st.integers(0, 4 * 10**9).map(float),
    disabled=st.booleans(),
)  # fmt: skip


@given(users)
def test_an_entry_reads_back_as_the_same_user(original: UserConfig) -> None:
    assert user_entry(json.loads(json.dumps(user_to_entry(original)))) == original


def test_save_and_load(tmp_path: Path) -> None:
    overlay = Overlay({"b": user("b", B, quota=10), "a": user("a", A, disabled=True)},
                      frozenset({"z"}))  # fmt: skip
    save_overlay(tmp_path, overlay)
    assert (tmp_path / USERS_FILE).stat().st_mode & 0o777 == 0o600
    assert load_overlay(tmp_path) == overlay
    assert list(json.loads((tmp_path / USERS_FILE).read_text())["users"][0]) == [
        "name", "secret", "disabled"]
    assert load_overlay(tmp_path / "missing") == Overlay({})


def test_merge_replaces_hides_and_appends() -> None:
    config = (user("a", A), user("b", B))
    overlay = Overlay({"c": user("c", C), "a": user("a", A, max_ips=2)}, frozenset({"b"}))
    merged = merge_users(config, overlay)
    assert [u.name for u in merged] == ["a", "c"]
    assert merged[0].max_ips == 2
    # A name both removed and present: the API put it back after removing it.
    assert [u.name for u in merge_users(config, Overlay({"b": user("b", C)}, frozenset({"b"})))
            ] == ["a", "b"]  # fmt: skip


def test_settings_apply_the_overlay_of_their_data_dir(tmp_path: Path) -> None:
    config = tmp_path / "mtproxy.toml"
    config.write_text(f'[[users]]\nname = "a"\nsecret = "{A.hex()}"\n'
                      f'[[users]]\nname = "b"\nsecret = "{B.hex()}"\n')  # fmt: skip
    data = tmp_path / "data"
    save_overlay(data, Overlay({"c": user("c", C)}, frozenset({"a"})))
    settings = load_settings({"data_dir": str(data)}, config)
    assert [u.name for u in settings.users] == ["b", "c"]
    assert [u.name for u in settings.file_users] == ["a", "b"]
    plain = load_settings({"data_dir": str(tmp_path / "empty")}, config)
    assert plain.config_users is None and plain.file_users == plain.users


def test_with_users_checks_like_a_file(tmp_path: Path) -> None:
    settings = load_settings({"data_dir": str(tmp_path), "secrets": [A.hex()]})
    tls = UserConfig("t", ClientSecret(C, Mode.TLS, "new.example.net"))
    changed = with_users(settings, (tls,))
    assert "new.example.net" in changed.tls_domains
    with pytest.raises(ConfigError) as info:
        with_users(settings, (user("x", A),))
    assert "reuses a secret" in str(info.value)


@pytest.mark.parametrize(
    ("text", "words"),
    [("{", "unreadable"), ("[]", "not a users file"), ('{"users": {}}', "not a users file"),
     ('{"users": [{"name": "x"}]}', "needs a name and a secret"),
     ('{"users": [], "removed": "x"}', "'removed' is not a list")],
)  # fmt: skip
def test_a_broken_file_is_one_clear_error(tmp_path: Path, text: str, words: str) -> None:
    (tmp_path / USERS_FILE).write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings({"data_dir": str(tmp_path)})
    assert str(tmp_path / USERS_FILE) in str(info.value) and words in str(info.value)
    assert "delete it" in str(info.value) and "\n" not in str(info.value)


def test_rates_read_as_bytes_per_second() -> None:
    base = {"name": "dora", "secret": "0123456789abcdef0123456789abcdef"}
    parsed = user_entry({**base, "rate_up": "512KiB/s", "rate_down": "2MB"})
    assert (parsed.rate_up, parsed.rate_down) == (512 * 1024, 2_000_000)
    assert user_entry({**base, "rate_down": 65536}).rate_down == 65536
    for bad in ("fast", 0, -5, "2 parsecs"):
        with pytest.raises(ValueError, match=r"rate_down: .* rate; write bytes per second"):
            user_entry({**base, "rate_down": bad})
