"""The official container's contract, run for real: ``python -m mtproxy entrypoint``.

Every case starts the entrypoint in a subprocess with its own environment and a
temporary data directory (the container's /data). Local HTTP servers stand in for
Telegram's getProxyConfig/getProxySecret and for the "what is my IP" services, so
nothing leaves loopback. The last cases start the proxy and relay a client to a fake
DC through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import TAG_INTERMEDIATE, FakeDC, echo_handler, open_obfs2
from fakes.web import ThreadedWeb
from system_tools import network_namespace, require_root

from mtproxy.cli import entrypoint as ep
from mtproxy.config.settings import OPTIONS
from mtproxy.publicip import local_outbound_ip

KEY = "0123456789abcdef0123456789abcdef"
KEY2 = "00112233445566778899aabbccddeeff"
TAG = "fedcba9876543210fedcba9876543210"
EXTERNAL = "203.0.113.7"
INTERNAL = "10.1.2.3"
CONFIG = (
    b"# force_probability 10 10\n"
    b"default 2;\n"
    b"proxy_for 1 149.154.175.50:8888;\n"
    b"proxy_for -1 149.154.175.50:8888;\n"
    b"proxy_for 2 149.154.161.144:8888;\n"
    b"proxy_for 2 149.154.162.38:80;\n"
    b"proxy_for 4 91.108.4.195:8888;\n"
)
PROXY_SECRET = bytes(range(1, 129))
HTML = b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>"
CONTRACT_VARS = {
    "SECRET", "SECRET_COUNT", "TAG", "WORKERS", "DEBUG", "PORT", "STATS_PORT", "STATS_HOST",
    "EXTERNAL_IP", "INTERNAL_IP", "EXTERNAL_PORT", "DATA_DIR", "IP_SERVICES", "IP_TIMEOUT",
    "MIDDLE_PROXY", "PROXY_CONFIG_URL", "PROXY_SECRET_URL", "MIDDLE_FALLBACK", "MASK",
}
KNOWN = {opt.field for opt in OPTIONS}


# --- local stand-ins for Telegram and the IP services ------------------------------------


@pytest.fixture
def web() -> Iterator[ThreadedWeb]:
    routes = {
        "/getProxyConfig": (200, CONFIG),
        "/getProxySecret": (200, PROXY_SECRET),
        "/ip": (200, f"{EXTERNAL}\n".encode()),
    }
    with ThreadedWeb(routes).running() as fake:
        yield fake


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def environment(web: ThreadedWeb, **extra: str) -> dict[str, str]:
    """A clean environment: none of the contract's variables unless given here."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in CONTRACT_VARS and not k.lower().endswith("_proxy")
        and not k.startswith("MTPROXY_")
    }
    env.update(
        IP_SERVICES=web.url("/ip"),
        IP_TIMEOUT="3",
        PROXY_CONFIG_URL=web.url("/getProxyConfig"),
        PROXY_SECRET_URL=web.url("/getProxySecret"),
        INTERNAL_IP=INTERNAL,
    )
    env.update(extra)
    return {k: v for k, v in env.items() if v != "<unset>"}


def entrypoint(
    data_dir: Path, env: dict[str, str], *args: str, dry_run: bool = True,
    prefix: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    extra = ["--dry-run"] if dry_run else []
    command = [*prefix, sys.executable, "-m", "mtproxy", "entrypoint"]
    if args[:1] == ("run",):
        command += [*args, "--data-dir", str(data_dir), *extra]
    else:
        command += ["--data-dir", str(data_dir), *args, *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def runs_as(out: str) -> str:
    (line,) = [ln for ln in out.splitlines() if ln.startswith("[*]   Runs as: mtproxy run ")]
    return " " + line.split("mtproxy run ", 1)[1] + " "


def check_option(out: str, name: str, *values: str) -> None:
    """``--name value`` is passed on to ``mtproxy run``, which has that option."""
    assert name in KNOWN, name
    flag = "--" + name.replace("_", "-")
    for value in values:
        assert f" {flag} {value} " in runs_as(out), out


def fatal(result: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("[F] ")]
    assert len(lines) == 1, result.stdout + result.stderr
    assert result.stdout.rstrip().splitlines()[-1] == lines[0]  # the last word
    return lines[0]


def leftovers(data_dir: Path) -> list[str]:
    return [p.name for p in data_dir.iterdir() if p.name.startswith(".")]


# --- secrets --------------------------------------------------------------------------------


def test_generates_persists_and_reuses_secrets(tmp_path: Path, web: ThreadedWeb) -> None:
    first = entrypoint(tmp_path, environment(web, SECRET_COUNT="3"))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "[+] No secret given: generating 3 random ones." in first.stdout
    stored = (tmp_path / "secret").read_text().strip().split(",")
    assert len(stored) == 3 and all(re.fullmatch("[0-9a-f]{32}", s) for s in stored)
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600
    assert leftovers(tmp_path) == []
    for i, key in enumerate(stored, 1):
        assert f"[*]   Secret {i}: {key}\n" in first.stdout
        query = f"server={EXTERNAL}&port=443&secret={key}"
        assert f"[*]   tg:// link for secret {i} auto configuration: tg://proxy?{query}\n" in (
            first.stdout
        )
        assert f"[*]   t.me link for secret {i}: https://t.me/proxy?{query}\n" in first.stdout

    again = entrypoint(tmp_path, environment(web, SECRET_COUNT="5"))
    assert again.returncode == 0, again.stdout
    assert f"[+] Using the secrets stored in {tmp_path / 'secret'}: '{','.join(stored)}'." in (
        again.stdout
    )
    assert "generating" not in again.stdout
    assert (tmp_path / "secret").read_text().strip().split(",") == stored


def test_stored_secrets_work_from_a_read_only_volume(tmp_path: Path, web: ThreadedWeb) -> None:
    """A volume left by the official image: its secret is readable, not writable."""
    (tmp_path / "secret").write_text(KEY.upper() + "\n")
    os.chmod(tmp_path / "secret", 0o444)
    before = (tmp_path / "secret").stat()
    result = entrypoint(tmp_path, environment(web))
    assert result.returncode == 0, result.stdout
    assert f"[*]   Secret 1: {KEY}" in result.stdout
    assert "[!]" not in result.stdout
    after = (tmp_path / "secret").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_one_secret_by_default(tmp_path: Path, web: ThreadedWeb) -> None:
    result = entrypoint(tmp_path, environment(web))
    assert result.returncode == 0, result.stdout
    assert "generating 1 random one." in result.stdout
    assert len((tmp_path / "secret").read_text().strip().split(",")) == 1


def test_same_secret_is_not_rewritten(tmp_path: Path, web: ThreadedWeb) -> None:
    (tmp_path / "secret").write_text(KEY + "\n")
    before = (tmp_path / "secret").stat()
    result = entrypoint(tmp_path, environment(web, SECRET=KEY.upper()))
    assert result.returncode == 0, result.stdout
    after = (tmp_path / "secret").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_corrupt_secret_file_is_replaced_by_the_variable(tmp_path: Path, web: ThreadedWeb) -> None:
    (tmp_path / "secret").write_text("garbage\n")
    result = entrypoint(tmp_path, environment(web, SECRET=KEY))
    assert result.returncode == 0, result.stdout
    assert (tmp_path / "secret").read_text() == KEY + "\n"


def test_secret_variable_is_lower_cased_stored_and_beats_the_file(
    tmp_path: Path, web: ThreadedWeb
) -> None:
    (tmp_path / "secret").write_text(KEY2 + "\n")
    given = f"{KEY.upper()}, {KEY2.upper()}"
    result = entrypoint(tmp_path, environment(web, SECRET=given))
    assert result.returncode == 0, result.stdout
    assert f"[+] Using the secrets passed in SECRET: '{KEY},{KEY2}'." in result.stdout
    assert (tmp_path / "secret").read_text() == f"{KEY},{KEY2}\n"
    assert f"[*]   Secret 2: {KEY2}" in result.stdout
    assert f" --secret {KEY} --secret {KEY2} " in runs_as(result.stdout)


def test_sixteen_secrets_are_fine(tmp_path: Path, web: ThreadedWeb) -> None:
    keys = [f"{i:032x}" for i in range(1, 17)]
    result = entrypoint(tmp_path, environment(web, SECRET=",".join(keys)))
    assert result.returncode == 0, result.stdout
    assert "[*]   Secret 16: " + keys[-1] in result.stdout


@pytest.mark.parametrize(
    "secret",
    [
        "abc",
        "g" * 32,
        KEY + "0",
        KEY + ",",
        f"{KEY};{KEY2}",
        ",".join([KEY] * 17),
        "dd" + KEY,
    ],
)
def test_bad_secret_exits_1(tmp_path: Path, web: ThreadedWeb, secret: str) -> None:
    result = entrypoint(tmp_path, environment(web, SECRET=secret))
    assert result.returncode == 1
    line = fatal(result)
    assert "32 hex" in line and "comma-separated" in line
    assert not (tmp_path / "secret").exists()
    assert web.hits == {}


@pytest.mark.parametrize("count", ["0", "17", "-1", "two"])
def test_secret_count_out_of_range_exits_5(tmp_path: Path, web: ThreadedWeb, count: str) -> None:
    result = entrypoint(tmp_path, environment(web, SECRET_COUNT=count))
    assert result.returncode == 5
    assert "SECRET_COUNT" in fatal(result) and "16" in fatal(result)
    assert not (tmp_path / "secret").exists()


def test_secret_count_is_ignored_when_a_secret_is_given(tmp_path: Path, web: ThreadedWeb) -> None:
    result = entrypoint(tmp_path, environment(web, SECRET=KEY, SECRET_COUNT="99"))
    assert result.returncode == 0, result.stdout


def test_corrupt_secret_file_exits_1(tmp_path: Path, web: ThreadedWeb) -> None:
    (tmp_path / "secret").write_text("not,a,secret\n")
    result = entrypoint(tmp_path, environment(web))
    assert result.returncode == 1
    assert "corrupt" in fatal(result)
    assert (tmp_path / "secret").read_text() == "not,a,secret\n"


def test_secret_file_is_replaced_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A write that dies midway leaves the old file whole and no temporary behind."""
    (tmp_path / "secret").write_text(KEY2 + "\n")
    startup = ep.Startup(ep.parse_official([]), {"SECRET": KEY})

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    assert startup.secrets(tmp_path) == [KEY]
    assert (tmp_path / "secret").read_text() == KEY2 + "\n"
    assert leftovers(tmp_path) == []
    assert "[!] cannot write" in capsys.readouterr().out


def test_unwritable_data_dir_warns_and_continues(tmp_path: Path, web: ThreadedWeb) -> None:
    """Like a volume left by the official image (root's files, we are not root): a
    secret that cannot be saved is a warning; a download that cannot be saved is used
    from a temporary copy, removed again at exit."""
    (tmp_path / "secret").mkdir()
    (tmp_path / "proxy-config").mkdir()
    env = environment(web, SECRET=KEY, TAG=TAG, TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    result = entrypoint(tmp_path, env)
    assert result.returncode == 0, result.stdout
    assert f"[!] cannot write {tmp_path / 'secret'}" in result.stdout
    assert f"[!] cannot save {tmp_path / 'proxy-config'}" in result.stdout
    assert f"the temporary copy {tmp_path / 'tmp'}/mtproxy-proxy-config-" in result.stdout
    assert (tmp_path / "proxy-secret").read_bytes() == PROXY_SECRET
    assert list((tmp_path / "tmp").iterdir()) == []


def test_secret_flags_add_to_the_variable(tmp_path: Path, web: ThreadedWeb) -> None:
    result = entrypoint(tmp_path, environment(web, SECRET=KEY), "-S", KEY2.upper(), "-S", KEY)
    assert result.returncode == 0, result.stdout
    assert f"[+] Using the secrets passed in SECRET and -S: '{KEY},{KEY2}'." in result.stdout
    assert (tmp_path / "secret").read_text() == f"{KEY},{KEY2}\n"


# --- tag and Telegram's files -----------------------------------------------------------------


def test_bad_tag_warns_and_continues_without(tmp_path: Path, web: ThreadedWeb) -> None:
    result = entrypoint(tmp_path, environment(web, SECRET=KEY, TAG="nothex"))
    assert result.returncode == 0, result.stdout
    assert "[+] Using the ad tag passed in TAG: 'nothex'." in result.stdout
    warnings = [ln for ln in result.stdout.splitlines() if ln.startswith("[!]")]
    assert any("TAG" in w and "32 hex" in w for w in warnings)
    assert "[*]   Tag: no tag" in result.stdout
    assert "--tag" not in result.stdout
    # No tag, so no middle proxies: Telegram's files are not needed.
    assert "/getProxyConfig" not in web.hits


def test_tag_fetches_and_caches_telegram_files(tmp_path: Path, web: ThreadedWeb) -> None:
    result = entrypoint(tmp_path, environment(web, SECRET=KEY, TAG=TAG.upper()))
    assert result.returncode == 0, result.stdout
    assert f"[*]   Tag: {TAG}" in result.stdout
    assert (tmp_path / "proxy-config").read_bytes() == CONFIG
    assert (tmp_path / "proxy-secret").read_bytes() == PROXY_SECRET
    assert web.hits["/getProxyConfig"] == web.hits["/getProxySecret"] == 1
    assert leftovers(tmp_path) == []
    check_option(result.stdout, "tag", TAG)
    # The URLs go on to the proxy, which re-downloads hourly and falls back to the copies.
    check_option(result.stdout, "proxy_config", web.url("/getProxyConfig"))
    check_option(result.stdout, "proxy_secret", web.url("/getProxySecret"))
    check_option(result.stdout, "nat_info", f"{INTERNAL}:{EXTERNAL}")


def test_middle_proxy_on_without_tag_fetches(tmp_path: Path, web: ThreadedWeb) -> None:
    result = entrypoint(tmp_path, environment(web, SECRET=KEY, MIDDLE_PROXY="on"))
    assert result.returncode == 0, result.stdout
    assert web.hits["/getProxyConfig"] == 1
    assert "[*]   Tag: no tag" in result.stdout


def test_middle_proxy_off_ignores_the_tag_for_fetching(tmp_path: Path, web: ThreadedWeb) -> None:
    result = entrypoint(tmp_path, environment(web, SECRET=KEY, TAG=TAG, MIDDLE_PROXY="off"))
    assert result.returncode == 0, result.stdout
    assert web.hits.get("/getProxyConfig") is None


@pytest.mark.parametrize(
    "answer",
    [(200, HTML), (404, b"nope"), (500, CONFIG), (200, b""), (200, CONFIG[:-2]),
     (200, b"proxy_for 1 nonsense;\n")],
    ids=["html", "404", "500", "empty", "truncated", "garbage"],
)
def test_unusable_config_without_cache_exits_2(
    tmp_path: Path, web: ThreadedWeb, answer: tuple[int, bytes]
) -> None:
    web.routes["/getProxyConfig"] = answer
    result = entrypoint(tmp_path, environment(web, SECRET=KEY, TAG=TAG))
    assert result.returncode == 2
    assert "proxy configuration" in fatal(result)
    assert not (tmp_path / "proxy-config").exists()


def test_unreachable_config_server_exits_2(tmp_path: Path, web: ThreadedWeb) -> None:
    url = f"http://127.0.0.1:{closed_port()}/getProxyConfig"
    result = entrypoint(tmp_path, environment(web, SECRET=KEY, TAG=TAG, PROXY_CONFIG_URL=url))
    assert result.returncode == 2
    assert "proxy configuration" in fatal(result)


def test_middle_fallback_on_starts_without_telegram_s_files(
    tmp_path: Path, web: ThreadedWeb
) -> None:
    """MIDDLE_FALLBACK=on: no config and no secret at start is a warning, and the proxy
    gets the URLs to keep trying while it serves clients directly."""
    url = f"http://127.0.0.1:{closed_port()}/"
    env = environment(web, SECRET=KEY, TAG=TAG, PROXY_CONFIG_URL=url + "getProxyConfig",
                      PROXY_SECRET_URL=url + "getProxySecret", MIDDLE_FALLBACK="on")
    result = entrypoint(tmp_path, env)
    assert result.returncode == 0, result.stdout
    assert "[!] Cannot get the proxy configuration from Telegram servers" in result.stdout
    assert "[!] Cannot get the proxy secret from Telegram servers" in result.stdout
    assert "[!] MIDDLE_FALLBACK=on: clients are served directly" in result.stdout
    assert f"--proxy-config {url}getProxyConfig" in runs_as(result.stdout)


def test_the_mask_host_from_a_variable_or_a_flag(tmp_path: Path, web: ThreadedWeb) -> None:
    env = environment(web, SECRET=KEY, MASK="127.0.0.1:8443")
    assert "--mask 127.0.0.1:8443" in runs_as(entrypoint(tmp_path, env).stdout)
    flag = entrypoint(tmp_path, env, "--mask", "off")
    assert "--mask off" in runs_as(flag.stdout)
    bad = entrypoint(tmp_path, environment(web, SECRET=KEY, MASK="not a host!"))
    assert bad.returncode == 2
    assert fatal(bad).startswith("[F] MASK: ")


def test_middle_fallback_off_and_bad_values(tmp_path: Path, web: ThreadedWeb) -> None:
    off = entrypoint(tmp_path, environment(web, SECRET=KEY, TAG=TAG, MIDDLE_FALLBACK="off"))
    assert off.returncode == 0, off.stdout
    assert "--no-middle-fallback" in runs_as(off.stdout)
    bad = entrypoint(tmp_path, environment(
        web, SECRET=KEY, TAG=TAG, MIDDLE_FALLBACK="maybe",
        PROXY_CONFIG_URL=f"http://127.0.0.1:{closed_port()}/c",
    ))  # fmt: skip
    assert bad.returncode == 2
    assert "MIDDLE_FALLBACK='maybe': write on or off." in fatal(bad)


def test_unusable_config_falls_back_to_the_saved_copy(tmp_path: Path, web: ThreadedWeb) -> None:
    saved = b"proxy_for 2 91.108.56.1:8888;\n"
    (tmp_path / "proxy-config").write_bytes(saved)
    web.routes["/getProxyConfig"] = (200, HTML)
    result = entrypoint(tmp_path, environment(web, SECRET=KEY, TAG=TAG))
    assert result.returncode == 0, result.stdout
    assert "[!] Cannot download the proxy configuration from Telegram" in result.stdout
    assert f"[!] Using the copy saved in {tmp_path / 'proxy-config'}." in result.stdout
    assert (tmp_path / "proxy-config").read_bytes() == saved


def test_corrupt_saved_config_does_not_count(tmp_path: Path, web: ThreadedWeb) -> None:
    (tmp_path / "proxy-config").write_bytes(HTML)
    web.routes["/getProxyConfig"] = (503, b"")
    result = entrypoint(tmp_path, environment(web, SECRET=KEY, TAG=TAG))
    assert result.returncode == 2
    assert "unusable too" in fatal(result)


def test_good_download_replaces_the_saved_copy(tmp_path: Path, web: ThreadedWeb) -> None:
    (tmp_path / "proxy-config").write_bytes(b"proxy_for 2 91.108.56.1:8888;\n")
    result = entrypoint(tmp_path, environment(web, SECRET=KEY, TAG=TAG))
    assert result.returncode == 0, result.stdout
    assert (tmp_path / "proxy-config").read_bytes() == CONFIG


@pytest.mark.parametrize(
    "answer",
    [(200, HTML), (404, b""), (200, b"\x01\x02"), (200, bytes(64)), (200, b"x" * 300)],
    ids=["html", "404", "short", "zero-selector", "long"],
)
def test_unusable_proxy_secret_without_cache_exits_5(
    tmp_path: Path, web: ThreadedWeb, answer: tuple[int, bytes]
) -> None:
    web.routes["/getProxySecret"] = answer
    result = entrypoint(tmp_path, environment(web, SECRET=KEY, TAG=TAG))
    assert result.returncode == 5
    assert "proxy secret" in fatal(result)
    assert not (tmp_path / "proxy-secret").exists()


def test_unusable_proxy_secret_falls_back_to_the_saved_copy(
    tmp_path: Path, web: ThreadedWeb
) -> None:
    (tmp_path / "proxy-secret").write_bytes(PROXY_SECRET[::-1])
    web.routes["/getProxySecret"] = (500, b"")
    result = entrypoint(tmp_path, environment(web, SECRET=KEY, TAG=TAG))
    assert result.returncode == 0, result.stdout
    assert "[!] Cannot download the proxy secret from Telegram" in result.stdout
    assert (tmp_path / "proxy-secret").read_bytes() == PROXY_SECRET[::-1]


def test_official_config_file_and_aes_pwd_are_used_instead_of_downloads(
    tmp_path: Path, web: ThreadedWeb
) -> None:
    files = tmp_path / "etc"
    files.mkdir()
    (files / "proxy-multi.conf").write_bytes(CONFIG)
    (files / "proxy-secret").write_bytes(PROXY_SECRET)
    data = tmp_path / "data"
    result = entrypoint(
        data, environment(web), "-S", KEY, "-P", TAG, "--aes-pwd", str(files / "proxy-secret"),
        str(files / "proxy-multi.conf"),
    )
    assert result.returncode == 0, result.stdout
    assert web.hits.get("/getProxyConfig") is None and web.hits.get("/getProxySecret") is None
    assert f"[+] Using the proxy configuration in {files / 'proxy-multi.conf'}." in result.stdout
    check_option(result.stdout, "proxy_config", str(files / "proxy-multi.conf"))
    check_option(result.stdout, "proxy_secret", str(files / "proxy-secret"))


def test_official_files_without_a_tag_are_not_needed(tmp_path: Path, web: ThreadedWeb) -> None:
    conf = tmp_path / "proxy-multi.conf"
    conf.write_bytes(HTML)  # not even read
    result = entrypoint(tmp_path / "data", environment(web), "-S", KEY, "--aes-pwd",
                        str(tmp_path / "missing"), str(conf))
    assert result.returncode == 0, result.stdout
    assert "[*] No ad tag, so the proxy connects straight to Telegram's data centers" in (
        result.stdout
    )
    assert "proxy-config" not in runs_as(result.stdout)
    assert web.hits == {"/ip": 1}


def test_official_config_file_that_is_html_exits_2(tmp_path: Path, web: ThreadedWeb) -> None:
    conf = tmp_path / "proxy-multi.conf"
    conf.write_bytes(HTML)
    result = entrypoint(tmp_path / "data", environment(web), "-S", KEY, "-P", TAG, str(conf))
    assert result.returncode == 2
    assert str(conf) in fatal(result)


# --- addresses --------------------------------------------------------------------------------


def test_external_ip_is_detected_past_broken_services(tmp_path: Path, web: ThreadedWeb) -> None:
    web.routes["/html"] = (200, HTML)
    web.routes["/v6"] = (200, b"2001:db8::5\n")
    web.routes["/err"] = (500, b"")
    services = ",".join(
        [web.url("/html"), web.url("/v6"), web.url("/err"),
         f"http://127.0.0.1:{closed_port()}/ip", web.url("/ip")]
    )
    result = entrypoint(tmp_path, environment(web, SECRET=KEY, IP_SERVICES=services))
    assert result.returncode == 0, result.stdout
    assert f"[+] Detected the external IP: {EXTERNAL}." in result.stdout
    assert f"[*]   External IP: {EXTERNAL}" in result.stdout


def test_no_usable_ip_service_exits_3(tmp_path: Path, web: ThreadedWeb) -> None:
    web.routes["/ip"] = (200, HTML)
    web.routes["/err"] = (502, b"")
    services = f"{web.url('/ip')},{web.url('/err')},http://127.0.0.1:{closed_port()}/"
    result = entrypoint(tmp_path, environment(web, SECRET=KEY, IP_SERVICES=services))
    assert result.returncode == 3
    assert "external IP" in fatal(result) and "EXTERNAL_IP" in fatal(result)


def test_slow_ip_service_times_out(tmp_path: Path, web: ThreadedWeb) -> None:
    """A service that accepts but never answers costs IP_TIMEOUT, not forever."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        result = entrypoint(tmp_path, environment(web, SECRET=KEY, IP_SERVICES=url,
                                                  IP_TIMEOUT="0.5"))
    assert result.returncode == 3


def test_given_external_ip_is_not_detected(tmp_path: Path, web: ThreadedWeb) -> None:
    result = entrypoint(tmp_path, environment(web, SECRET=KEY, EXTERNAL_IP="198.51.100.4"))
    assert result.returncode == 0, result.stdout
    assert "[+] Using the external IP passed in EXTERNAL_IP: 198.51.100.4." in result.stdout
    assert "server=198.51.100.4&port=443" in result.stdout
    assert web.hits.get("/ip") is None
    check_option(result.stdout, "public_host", "198.51.100.4")


@pytest.mark.parametrize("value", ["not an ip!", "300.1.2.3.4."])
def test_bad_external_ip_exits_3(tmp_path: Path, web: ThreadedWeb, value: str) -> None:
    result = entrypoint(tmp_path, environment(web, SECRET=KEY, EXTERNAL_IP=value))
    assert result.returncode == 3
    assert "EXTERNAL_IP" in fatal(result)


def test_bad_internal_ip_exits_4(tmp_path: Path, web: ThreadedWeb) -> None:
    result = entrypoint(tmp_path, environment(web, SECRET=KEY, INTERNAL_IP="10.0.0"))
    assert result.returncode == 4
    assert "INTERNAL_IP" in fatal(result)


def test_internal_ip_is_the_outbound_interface(tmp_path: Path, web: ThreadedWeb) -> None:
    result = entrypoint(tmp_path, environment(web, SECRET=KEY, INTERNAL_IP="<unset>"))
    expected = local_outbound_ip()
    if expected is None:  # a host without any route out: the contract says exit 4
        assert result.returncode == 4
    else:
        assert result.returncode == 0, result.stdout
        assert f"[+] Detected the internal IP: {expected}." in result.stdout
        assert f"[*]   Internal IP: {expected}" in result.stdout


def test_no_route_out_exits_4(tmp_path: Path, web: ThreadedWeb) -> None:
    """In a network namespace with no interface up there is no internal address."""
    netns = network_namespace()
    env = environment(web, SECRET=KEY, EXTERNAL_IP=EXTERNAL, INTERNAL_IP="<unset>")
    result = entrypoint(tmp_path, env, prefix=tuple(netns))
    assert result.returncode == 4
    assert "internal IP" in fatal(result) and "INTERNAL_IP" in fatal(result)


def test_nat_info_needs_ipv4_on_both_sides(tmp_path: Path, web: ThreadedWeb) -> None:
    env = environment(web, SECRET=KEY, TAG=TAG, EXTERNAL_IP="proxy.example.com")
    result = entrypoint(tmp_path, env)
    assert result.returncode == 0, result.stdout
    assert "[!] No NAT info" in result.stdout
    assert "nat-info" not in result.stdout.replace("[!] No NAT info", "")


# --- the official flags and the other variables --------------------------------------------


def test_official_flags_are_translated(tmp_path: Path, web: ThreadedWeb) -> None:
    result = entrypoint(
        tmp_path, environment(web, SECRET="<unset>"),
        "-H", "4443,4444", "-p", "8888", "-M", "2", "-S", KEY, "-P", TAG, "-C", "60000",
        "--nat-info", "10.0.0.1:198.51.100.1", "-u", "nobody", "--allow-skip-dh",
        "--http-stats", "-6", "-b", "512",
    )
    assert result.returncode == 0, result.stdout
    out = result.stdout
    assert "[*] Accepted for compatibility, no effect here: --allow-skip-dh, --http-stats." in out
    assert "-u nobody: mtproxy does not switch users" in out
    line = runs_as(out)
    for listen in ("0.0.0.0:4443", "[::]:4443", "0.0.0.0:4444", "[::]:4444"):
        assert f" --listen {listen} " in line
    assert f" --secret {KEY} " in line and " --backlog 512 " in line
    assert f"server={EXTERNAL}&port=4443&secret={KEY}" in out
    check_option(out, "workers", "2")
    check_option(out, "stats", "0.0.0.0:8888")
    check_option(out, "tag", TAG)
    check_option(out, "max_connections", "60000")
    check_option(out, "nat_info", "10.0.0.1:198.51.100.1")


def test_domain_flag_means_fake_tls_only(tmp_path: Path, web: ThreadedWeb) -> None:
    result = entrypoint(tmp_path, environment(web, SECRET=KEY), "-D", "cdn.example.org")
    assert result.returncode == 0, result.stdout
    ee = "ee" + KEY + b"cdn.example.org".hex()
    assert (f"[*]   tg:// link for secret 1 auto configuration (fake TLS, cdn.example.org): "
            f"tg://proxy?server={EXTERNAL}&port=443&secret={ee}") in result.stdout
    assert f"secret={KEY}\n" not in result.stdout and f"secret=dd{KEY}" not in result.stdout
    assert " --modes tls " in runs_as(result.stdout)
    assert " --tls-domain cdn.example.org " in runs_as(result.stdout)


def test_all_modes_print_classic_first(tmp_path: Path, web: ThreadedWeb) -> None:
    result = entrypoint(tmp_path, environment(web, SECRET=KEY))
    assert result.returncode == 0, result.stdout
    links = [ln for ln in result.stdout.splitlines() if "link for secret 1" in ln]
    assert len(links) == 6
    assert links[0].endswith(f"secret={KEY}") and links[1].endswith(f"secret={KEY}")
    assert "(dd, padded)" in links[2] and links[2].endswith(f"secret=dd{KEY}")
    assert "(fake TLS, www.google.com)" in links[4]


def test_variables_beat_the_flags_of_the_image_cmd(tmp_path: Path, web: ThreadedWeb) -> None:
    env = environment(web, SECRET=KEY, PORT="5443", STATS_PORT="9999", WORKERS="4",
                      STATS_HOST="127.0.0.1")
    result = entrypoint(tmp_path, env, "-p", "2398", "-H", "443", "-M", "1")
    assert result.returncode == 0, result.stdout
    assert " --listen 0.0.0.0:5443 " in runs_as(result.stdout)
    assert "0.0.0.0:443 " not in runs_as(result.stdout)
    assert f"server={EXTERNAL}&port=5443&secret={KEY}" in result.stdout
    check_option(result.stdout, "stats", "127.0.0.1:9999")
    check_option(result.stdout, "workers", "4")


def test_defaults_without_flags(tmp_path: Path, web: ThreadedWeb) -> None:
    result = entrypoint(tmp_path, environment(web, SECRET=KEY))
    assert result.returncode == 0, result.stdout
    assert " --listen 0.0.0.0:443 " in runs_as(result.stdout)
    assert f" --data-dir {tmp_path} " in runs_as(result.stdout)
    assert " --workers 2 " in runs_as(result.stdout)
    assert not [ln for ln in result.stdout.splitlines() if ln.startswith("[!]")]


def test_external_port_changes_only_the_links(tmp_path: Path, web: ThreadedWeb) -> None:
    result = entrypoint(tmp_path, environment(web, SECRET=KEY, EXTERNAL_PORT="8443"),
                        "-H", "443")
    assert result.returncode == 0, result.stdout
    assert f"server={EXTERNAL}&port=8443&secret={KEY}" in result.stdout
    assert " --listen 0.0.0.0:443 " in runs_as(result.stdout)


def test_debug_is_verbose(tmp_path: Path, web: ThreadedWeb) -> None:
    result = entrypoint(tmp_path, environment(web, SECRET=KEY, DEBUG="1"))
    assert result.returncode == 0, result.stdout
    assert " --log-level DEBUG " in runs_as(result.stdout)


@pytest.mark.parametrize(
    "args",
    [("--bogus",), ("-S", "xyz"), ("-H", "http"), ("-H", "70000"), ("-P", "short"),
     ("-M", "many"), ("a.conf", "b.conf")],
)
def test_bad_flags_exit_2(tmp_path: Path, web: ThreadedWeb, args: tuple[str, ...]) -> None:
    result = entrypoint(tmp_path, environment(web, SECRET=KEY), *args)
    assert result.returncode == 2
    fatal(result)


@pytest.mark.parametrize(
    "env", [{"PORT": "0"}, {"WORKERS": "lots"}, {"STATS_PORT": "x"}, {"MIDDLE_PROXY": "maybe"},
            {"IP_SERVICES": "ftp://example.com"}],
)
def test_bad_variables_exit_2(tmp_path: Path, web: ThreadedWeb, env: dict[str, str]) -> None:
    result = entrypoint(tmp_path, environment(web, SECRET=KEY, **env))
    assert result.returncode == 2
    assert next(iter(env)) in fatal(result)


def test_data_dir_variable(tmp_path: Path, web: ThreadedWeb) -> None:
    env = environment(web, DATA_DIR=str(tmp_path / "volume"))
    result = subprocess.run(
        [sys.executable, "-m", "mtproxy", "entrypoint", "--dry-run"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout
    assert (tmp_path / "volume" / "secret").exists()


def test_run_mode_options_win_and_variables_fill_in(tmp_path: Path, web: ThreadedWeb) -> None:
    env = environment(web, SECRET=KEY2, EXTERNAL_IP="198.51.100.9", PORT="1234")
    result = entrypoint(tmp_path, env, "run", "--secret", f"dd{KEY}", "--listen",
                        "127.0.0.1:7443", "--modes", "secure")
    assert result.returncode == 0, result.stdout
    out = result.stdout
    assert "[*] SECRET is not used: --secret is set." in out
    assert "[*] PORT is not used: --listen is set." in out
    assert f"[*]   tg:// link for secret 1 auto configuration (dd, padded): " \
        f"tg://proxy?server=198.51.100.9&port=7443&secret=dd{KEY}" in out
    assert (tmp_path / "secret").read_text() == KEY + "\n"


@pytest.mark.parametrize(
    ("config", "code"),
    [(f'secrets = ["{KEY[:-1]}"]\n', 1), (f'secrets = ["{KEY}"]\nbacklog = "x"\n', 2),
     ("listen = [\n", 2)],
)
def test_run_mode_bad_config_file(tmp_path: Path, web: ThreadedWeb, config: str, code: int) -> None:
    path = tmp_path / "mtproxy.toml"
    path.write_text(config)
    result = entrypoint(tmp_path / "data", environment(web), "run", "--config", str(path))
    assert result.returncode == code, result.stdout
    assert str(path) in fatal(result)


def test_run_mode_takes_secrets_from_the_config_file(tmp_path: Path, web: ThreadedWeb) -> None:
    config = tmp_path / "mtproxy.toml"
    config.write_text(f'secrets = ["{KEY2}"]\npublic_host = "198.51.100.3"\n')
    result = entrypoint(tmp_path / "data", environment(web, SECRET=KEY), "run", "--config",
                        str(config))
    assert result.returncode == 0, result.stdout
    assert f"[+] Using the secrets set with --secret or --config: '{KEY2}'." in result.stdout
    assert "server=198.51.100.3&port=443" in result.stdout
    assert web.hits.get("/ip") is None


def test_generate_secret_passes_through(web: ThreadedWeb) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mtproxy", "entrypoint", "generate-secret", "--tls", "a.example"],
        env=environment(web), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0
    assert re.fullmatch(r"ee[0-9a-f]{32}" + b"a.example".hex() + "\n", result.stdout)


# --- the proxy really starts and relays -------------------------------------------------------


def free_port() -> int:
    return closed_port()


async def start_entrypoint(
    data_dir: Path, env: dict[str, str], *args: str
) -> tuple[asyncio.subprocess.Process, list[str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mtproxy", "entrypoint", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(30):
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                raise AssertionError("entrypoint ended before starting:\n" + "".join(lines))
            lines.append(raw.decode())
            if raw.startswith(b"[+] Proxy started"):
                return proc, lines


async def stop(proc: asyncio.subprocess.Process) -> int:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(15):
            return await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise


async def relay_once(port: int, secret: str, dc: FakeDC) -> None:
    stream = await open_obfs2("127.0.0.1", port, bytes.fromhex(secret), TAG_INTERMEDIATE, 2)
    payload = os.urandom(50_000)
    stream.write(payload)
    await stream.drain()
    assert await stream.readexactly(len(payload)) == payload
    stream.close()
    await stream.wait_closed()
    (conn,) = await dc.wait_connections(1)
    assert conn.dc_id == 2 and conn.error is None


@pytest.mark.timeout_s(60)
async def test_official_command_line_starts_and_relays(tmp_path: Path) -> None:
    port = free_port()
    async with FakeDC(echo_handler) as dc:
        env = environment_plain(EXTERNAL_IP=EXTERNAL, INTERNAL_IP=INTERNAL)
        proc, lines = await start_entrypoint(
            tmp_path, env, "--data-dir", str(tmp_path), "-u", "nobody", "-p", str(free_port()),
            "-H", str(port), "-M", "1", "-S", KEY, "--address", "127.0.0.1", "--dc",
            f"2=127.0.0.1:{dc.port}", "--mask", "off",
        )
        try:
            text = "".join(lines)
            assert "[+] Starting proxy..." in text
            assert f"[+] Proxy started, listening on 127.0.0.1:{port}." in text
            await relay_once(port, KEY, dc)
        finally:
            assert await stop(proc) == 0


@pytest.mark.timeout_s(60)
async def test_variables_only_start_and_relay(tmp_path: Path) -> None:
    port = free_port()
    async with FakeDC(echo_handler) as dc:
        env = environment_plain(SECRET=KEY2.upper(), PORT=str(port), EXTERNAL_IP=EXTERNAL,
                                INTERNAL_IP=INTERNAL, DATA_DIR=str(tmp_path), MASK="off")
        proc, _ = await start_entrypoint(tmp_path, env, "--dc", f"2=127.0.0.1:{dc.port}")
        try:
            await relay_once(port, KEY2, dc)
        finally:
            assert await stop(proc) == 0
    assert (tmp_path / "secret").read_text() == KEY2 + "\n"


@pytest.mark.timeout_s(60)
async def test_run_mode_starts_and_relays(tmp_path: Path) -> None:
    port = free_port()
    async with FakeDC(echo_handler) as dc:
        env = environment_plain(SECRET=KEY, EXTERNAL_IP=EXTERNAL, INTERNAL_IP=INTERNAL)
        proc, _ = await start_entrypoint(
            tmp_path, env, "run", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path),
            "--dc", f"2=127.0.0.1:{dc.port}", "--mask", "off",
        )
        try:
            await relay_once(port, KEY, dc)
        finally:
            assert await stop(proc) == 0


@pytest.mark.timeout_s(60)
async def test_busy_port_is_a_fatal_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = environment_plain(SECRET=KEY, EXTERNAL_IP=EXTERNAL, INTERNAL_IP=INTERNAL)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mtproxy", "entrypoint", "--data-dir", str(tmp_path),
            "--address", "127.0.0.1", "-H", str(port),
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(30):
            out, _ = await proc.communicate()
    assert proc.returncode == 1
    assert out.decode().rstrip().splitlines()[-1].startswith("[F] cannot listen on 127.0.0.1:")


def environment_plain(**extra: str) -> dict[str, str]:
    """The clean environment without fake services (nothing is fetched or detected)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in CONTRACT_VARS and not k.lower().endswith("_proxy")
        and not k.startswith("MTPROXY_")
    }
    env.update(IP_SERVICES=f"http://127.0.0.1:{closed_port()}/", IP_TIMEOUT="1")
    env.update(extra)
    return env


# --- container defaults: modes, drain time, the data directory --------------------------------


def test_all_modes_are_on_and_passed_explicitly(tmp_path: Path, web: ThreadedWeb) -> None:
    """`mtproxy run` alone may default to fewer modes; the container keeps the official
    behaviour (classic and dd links too) by passing them all."""
    official = entrypoint(tmp_path, environment(web, SECRET=KEY))
    assert official.returncode == 0, official.stdout
    assert " --modes classic,secure,tls " in runs_as(official.stdout)
    run_mode = entrypoint(tmp_path, environment(web, SECRET=KEY), "run")
    assert run_mode.returncode == 0, run_mode.stdout
    assert " --modes classic,secure,tls " in runs_as(run_mode.stdout)
    assert f"secret={KEY}\n" in run_mode.stdout and f"secret=dd{KEY}\n" in run_mode.stdout
    chosen = entrypoint(tmp_path, environment(web, SECRET=KEY), "run", "--modes", "tls")
    assert chosen.returncode == 0, chosen.stdout
    assert " --modes tls " in runs_as(chosen.stdout)
    assert f"secret={KEY}\n" not in chosen.stdout


def test_links_show_every_mode_the_container_serves(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(KEY + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTPROXY_")}
    env.update(DATA_DIR=str(tmp_path), EXTERNAL_IP=EXTERNAL)
    result = subprocess.run(
        [sys.executable, "-m", "mtproxy", "entrypoint", "links", "--no-qr"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    query = f"server={EXTERNAL}&port=443&secret="
    for secret in (KEY, "dd" + KEY, "ee" + KEY):
        assert f"https://t.me/proxy?{query}{secret}" in result.stdout


def test_drain_fits_in_docker_stop(tmp_path: Path, web: ThreadedWeb) -> None:
    default = entrypoint(tmp_path, environment(web, SECRET=KEY))
    assert default.returncode == 0, default.stdout
    assert " --shutdown-grace 8 " in runs_as(default.stdout)  # docker stop waits 10 s
    raised = entrypoint(tmp_path, environment(web, SECRET=KEY, SHUTDOWN_GRACE="25.5"))
    assert " --shutdown-grace 25.5 " in runs_as(raised.stdout)
    given = entrypoint(tmp_path, environment(web, SECRET=KEY, SHUTDOWN_GRACE="3"), "run",
                       "--shutdown-grace", "1")
    assert " --shutdown-grace 1 " in runs_as(given.stdout)
    assert "[*] SHUTDOWN_GRACE is not used: --shutdown-grace is set." in given.stdout
    bad = entrypoint(tmp_path, environment(web, SECRET=KEY, SHUTDOWN_GRACE="soon"))
    assert bad.returncode == 2
    assert "SHUTDOWN_GRACE" in fatal(bad)


def test_a_new_secret_that_cannot_be_kept_stops_the_start(tmp_path: Path, web: ThreadedWeb) -> None:
    """Every start would make another secret and break the links: exit 6, one line."""
    (tmp_path / "file").write_text("not a directory\n")
    data = tmp_path / "file" / "data"
    result = entrypoint(data, environment(web))
    assert result.returncode == 6
    line = fatal(result)
    assert f"Cannot keep a secret in {data} as uid {os.geteuid()}: Not a directory" in line
    assert "set SECRET" in line
    # With the secret given, it does not change, so the start goes on (with a warning).
    given = entrypoint(data, environment(web, SECRET=KEY))
    assert given.returncode == 0, given.stdout
    assert "[!] cannot write" in given.stdout


def test_root_hands_the_data_directory_over(tmp_path: Path) -> None:
    require_root("the image starts as root and hands /data over")
    from mtproxy.cli.entrypoint import privileges

    data = tmp_path / "data"
    data.mkdir()
    (data / "secret").write_text(KEY + "\n")
    (data / "link").symlink_to("/etc/passwd")
    user = privileges.target("65534:65533")
    assert (user.uid, user.gid) == (65534, 65533)
    privileges.give_data_dir(data, user)
    for path in (data, data / "secret"):
        assert (path.stat().st_uid, path.stat().st_gid) == (65534, 65533)
    assert Path("/etc/passwd").stat().st_uid == 0  # a link is not followed
    assert privileges.target("0").uid == 0
    with pytest.raises(ep.Fatal) as bad:
        privileges.target("no-such-user")
    assert bad.value.code == 2 and "MTPROXY_USER" in str(bad.value)


def test_nothing_is_dropped_without_mtproxy_user(tmp_path: Path) -> None:
    from mtproxy.cli.entrypoint import privileges

    before = (os.geteuid(), privileges.capabilities())
    privileges.settle(tmp_path, None)
    privileges.settle(tmp_path, "")
    assert (os.geteuid(), privileges.capabilities()) == before
    assert not any(tmp_path.iterdir())
