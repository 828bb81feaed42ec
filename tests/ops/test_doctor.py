"""``mtproxy doctor`` against fakes on loopback: every check on its own, then the command on
a healthy and on a broken set-up (its output is what the operator reads)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from system_tools import soft_fd_limit

from mtproxy.config.settings import Settings, load_settings
from mtproxy.ops.bound import write_bound
from mtproxy.ops.doctor import (
    Level,
    Probe,
    Result,
    check_clock,
    check_dcs,
    check_fd_limit,
    check_mask,
    check_port,
    check_telegram_files,
    check_tls_dns,
    render,
    worst,
)
from ops.doctor_fakes import (
    PROXY_LIST,
    PROXY_SECRET,
    Listener,
    TlsSite,
    WebServer,
    closed_port,
    self_signed,
)
from ops.helpers import ROOT, SECRET, ProxyProc
from ops.socks5_server import Socks5Server

DOMAIN = "localhost"  # resolves to loopback from /etc/hosts, offline


def settings_for(tmp: Path, **cli: object) -> Settings:
    raw: dict[str, object] = {"data_dir": str(tmp / "data"), "mask": "off",
                              "public_host": "127.0.0.1"}
    raw.update(cli)
    return load_settings(raw)


def fake_resolver(table: dict[str, list[str]]) -> object:
    async def resolve(name: str) -> list[str]:
        if name not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[name]

    return resolve


def by_check(results: list[Result]) -> dict[str, Result]:
    return {r.check: r for r in results}


# -- one check at a time -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("skew", "level", "words"),
    [(0, Level.OK, "within"), (30, Level.WARNING, "behind by"),
     (-30, Level.WARNING, "ahead by"), (300, Level.ERROR, "from the future"),
     (-900, Level.ERROR, "look stale"), (-300, Level.WARNING, "ahead by")],
)  # fmt: skip
async def test_clock(tmp_path: Path, skew: float, level: Level, words: str) -> None:
    async with WebServer(skew=skew) as web:
        probe = Probe(time_url=web.url + "/", timeout=3)
        result = await check_clock(settings_for(tmp_path), probe)
    assert result.level is level, result
    assert words in result.message
    seen = re.search(r"(?:by|within) ([0-9.]+) s", result.message)
    assert seen and abs(float(seen.group(1)) - abs(skew)) <= 1.0  # the Date header has 1 s steps
    assert (result.fix is None) == (level is Level.OK)
    assert web.requests == ["HEAD /"]


async def test_clock_without_a_date_or_a_server(tmp_path: Path) -> None:
    async with WebServer(date=False) as web:
        result = await check_clock(settings_for(tmp_path), Probe(time_url=web.url, timeout=3))
    assert result.level is Level.WARNING and "no Date header" in result.message
    probe = Probe(time_url=f"http://127.0.0.1:{closed_port()}/", timeout=3)
    result = await check_clock(settings_for(tmp_path), probe)
    assert result.level is Level.WARNING and "--time-url" in (result.fix or "")


async def test_clock_skew_only_matters_for_fake_tls(tmp_path: Path) -> None:
    async with WebServer(skew=900) as web:
        result = await check_clock(settings_for(tmp_path, modes="classic,secure"),
                                   Probe(time_url=web.url, timeout=3))  # fmt: skip
    assert result.level is Level.WARNING


async def test_dcs_direct_and_through_socks5(tmp_path: Path) -> None:
    dead = closed_port()
    async with Listener() as dc, Socks5Server("u", "p") as socks:
        dcs = [f"{i}=127.0.0.1:{dc.port}" for i in (1, 2, 4, 5)] + [f"3=127.0.0.1:{dead}"]
        settings = settings_for(tmp_path, dc=dcs, socks5=f"socks5://u:p@127.0.0.1:{socks.port}")
        results = by_check(await check_dcs(settings, Probe(timeout=3)))
        assert dc.accepted == 8  # four DCs, twice: directly and through the proxy
        assert {t.port for t in socks.tunnels} == {dc.port, dead}
    assert results["dc 1"].level is Level.OK and f"127.0.0.1:{dc.port}" in results["dc 1"].message
    assert results["dc 3"].level is Level.ERROR and "refused" in results["dc 3"].message
    assert "firewall" in (results["dc 3"].fix or "")
    assert results["dc 2 via socks5"].level is Level.OK
    assert results["dc 3 via socks5"].level is Level.ERROR
    assert "SOCKS5 proxy" in (results["dc 3 via socks5"].fix or "")


async def test_dcs_with_a_wrong_socks5_password(tmp_path: Path) -> None:
    async with Listener() as dc, Socks5Server("u", "p") as socks:
        dcs = [f"{i}=127.0.0.1:{dc.port}" for i in range(1, 6)]
        url = f"socks5://u:wrong@127.0.0.1:{socks.port}"
        results = await check_dcs(settings_for(tmp_path, dc=dcs, socks5=url), Probe(timeout=3))
        assert socks.auth_failures == 5
    via = [r for r in results if r.check.endswith("via socks5")]
    assert len(via) == 5 and all(r.level is Level.ERROR for r in via)
    assert all(r.level is Level.OK for r in results if r not in via)


async def test_telegram_files(tmp_path: Path) -> None:
    pages = {"/config": (200, PROXY_LIST), "/secret": (200, PROXY_SECRET),
             "/html": (200, b"<html><body>blocked</body></html>")}  # fmt: skip
    async with WebServer(pages=pages) as web:
        good = settings_for(tmp_path, proxy_config=web.url + "/config",
                            proxy_secret=web.url + "/secret")  # fmt: skip
        results = by_check(await check_telegram_files(good, Probe(timeout=3)))
        assert results["proxy list"].level is Level.OK
        assert "3 middle-proxies for 2 DCs" in results["proxy list"].message
        assert results["proxy secret"].message.startswith("128 bytes")
        # Direct mode only warns; middle-proxy mode cannot run without them.
        for middle, level in ((False, Level.WARNING), (True, Level.ERROR)):
            bad = settings_for(tmp_path, proxy_config=web.url + "/html",
                               proxy_secret=web.url + "/missing", middle_proxy=middle)
            results = by_check(await check_telegram_files(bad, Probe(timeout=3)))
            assert results["proxy list"].level is level
            assert "HTML" in results["proxy list"].message
            assert results["proxy secret"].level is level
            assert "HTTP 404" in results["proxy secret"].message
    local = tmp_path / "proxy-secret"
    local.write_bytes(PROXY_SECRET)
    results = by_check(await check_telegram_files(
        settings_for(tmp_path, proxy_secret=str(local), proxy_config=str(tmp_path / "none")),
        Probe(timeout=3)))  # fmt: skip
    assert results["proxy secret"].level is Level.OK
    assert results["proxy list"].level is Level.WARNING


async def test_mask(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, DOMAIN)
    other_cert, other_key = self_signed(tmp_path, "other.example")
    trusted = Probe(timeout=3, tls_context=lambda: ssl.create_default_context(cafile=cert))
    async with TlsSite(cert, key) as good, TlsSite(
        cert, key, ssl.TLSVersion.TLSv1_2
    ) as old, TlsSite(other_cert, other_key) as wrong, Listener() as plain:

        async def mask(port: int, probe: Probe = trusted) -> Result:
            settings = settings_for(tmp_path, mask=f"127.0.0.1:{port}", tls_domains=[DOMAIN])
            (result,) = await check_mask(settings, probe)
            return result

        result = await mask(good.port)
        assert result.level is Level.OK and "TLS 1.3" in result.message
        result = await mask(old.port)
        assert result.level is Level.WARNING and "TLSv1.2" in result.message
        result = await mask(wrong.port)
        assert result.level is Level.WARNING and "does not verify" in result.message
        result = await mask(good.port, Probe(timeout=3))  # self-signed, not trusted
        assert result.level is Level.WARNING
        result = await mask(plain.port)
        assert result.level is Level.ERROR and "TLS handshake" in result.message
        result = await mask(closed_port())
        assert result.level is Level.ERROR and "refused" in result.message
        # Without fake TLS the mask only has to answer.
        settings = settings_for(tmp_path, mask=f"127.0.0.1:{plain.port}", modes="classic")
        assert (await check_mask(settings, trusted))[0].level is Level.OK
    (off,) = await check_mask(settings_for(tmp_path), trusted)
    assert off.level is Level.WARNING and "silent" in off.message


async def test_tls_domain_dns(tmp_path: Path) -> None:
    resolve = fake_resolver({"here.example": ["198.51.100.7", "2001:db8::7"],
                             "cdn.example": ["203.0.113.99"]})  # fmt: skip
    probe = Probe(resolve=resolve)  # type: ignore[arg-type]
    settings = settings_for(tmp_path, tls_domains=["here.example", "cdn.example", "gone.example"])
    results = by_check(await check_tls_dns(settings, probe, ["198.51.100.7"]))
    assert results["dns here.example"].level is Level.OK
    assert results["dns cdn.example"].level is Level.WARNING
    assert "203.0.113.99, not to this server (198.51.100.7)" in results["dns cdn.example"].message
    assert "198.51.100.7" in (results["dns cdn.example"].fix or "")
    assert results["dns gone.example"].level is Level.WARNING
    assert "does not resolve" in results["dns gone.example"].message
    unknown = by_check(await check_tls_dns(settings, probe, []))
    assert "--public-host" in (unknown["dns here.example"].fix or "")


@pytest.mark.timeout_s(60)
async def test_port_is_proved_with_a_signed_hello(tmp_path: Path) -> None:
    proxy = await ProxyProc.start(tmp_path, "--modes", "tls", "--tls-domain", DOMAIN)
    try:
        settings = settings_for(tmp_path, secrets=[SECRET.hex()], modes="tls",
                                tls_domains=[DOMAIN])  # fmt: skip
        result = await check_port(settings, Probe(timeout=3), ["127.0.0.1"])
        assert result.level is Level.OK, result
        assert f"127.0.0.1:{proxy.port} answers as this proxy" in result.message
        # Other secrets than the proxy's: something answers, but not this proxy.
        other = settings_for(tmp_path, secrets=["ff" * 16], modes="tls", tls_domains=[DOMAIN])
        result = await check_port(other, Probe(timeout=3), ["127.0.0.1"])
        assert result.level is Level.ERROR and "does not answer as this proxy" in result.message
        # The public address is another one, where nothing listens.
        result = await check_port(settings, Probe(timeout=3), ["127.0.0.2"])
        assert result.level is Level.ERROR and "it runs here" in result.message
    finally:
        await proxy.stop()
    result = await check_port(settings, Probe(timeout=3), ["127.0.0.1"])
    assert result.level is Level.ERROR and "is the proxy running?" in result.message


async def test_fd_limit(tmp_path: Path) -> None:
    def probe(soft: int, hard: int = 1 << 20) -> Probe:
        return Probe(limits=lambda: (soft, hard), process_limits=lambda pid: (soft * 2, 7))

    assert (await check_fd_limit(settings_for(tmp_path), probe(65536))).level is Level.OK
    low = await check_fd_limit(settings_for(tmp_path), probe(1024, 1024))
    assert low.level is Level.WARNING and "about 480 clients" in low.message
    assert "LimitNOFILE" in (low.fix or "")
    # A low soft limit under a high hard one is fine: the proxy raises it at start.
    raised = await check_fd_limit(settings_for(tmp_path), probe(1024))
    assert raised.level is Level.OK and "raised to the hard limit" in raised.message
    capped = await check_fd_limit(
        settings_for(tmp_path, max_connections=50_000), probe(65536, 65536)
    )
    assert capped.level is Level.ERROR and "--max-connections is 50000" in capped.message
    # With a running proxy on record, its own limits count, not the doctor's.
    write_bound(tmp_path / "data", [("127.0.0.1", 1)])
    result = await check_fd_limit(settings_for(tmp_path), probe(2048))
    assert f"pid {os.getpid()}" in result.message
    assert "soft limit is 4096 (hard 7)" in result.message


def test_render_and_worst() -> None:
    results = [Result("clock", Level.OK, "fine"), Result("dc 2", Level.ERROR, "down", "fix it")]
    text = render(results)
    assert text.splitlines() == [
        "ok       clock  fine",
        "error    dc 2   down",
        "                fix: fix it",
        "1 ok, 0 warnings, 1 error",
    ]
    assert worst(results) is Level.ERROR and worst([]) is Level.OK


# -- the command -------------------------------------------------------------------------------


@pytest.fixture
def roomy_fd_limit() -> Iterator[None]:
    """Children (the proxy) inherit a soft limit the fd check calls comfortable."""
    with soft_fd_limit(8192, 65536, "the healthy set-up needs 8192"):
        yield


async def doctor(cert: Path, *args: str) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), SSL_CERT_FILE=str(cert))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mtproxy", "doctor", "--timeout", "3", *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert err == b"", err.decode()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@pytest.mark.timeout_s(90)
async def test_doctor_on_a_healthy_set_up(tmp_path: Path, roomy_fd_limit: None) -> None:
    cert, key = self_signed(tmp_path, DOMAIN)
    pages = {"/config": (200, PROXY_LIST), "/secret": (200, PROXY_SECRET)}
    async with WebServer(pages=pages) as web, TlsSite(cert, key) as site, Listener() as dc, \
            Socks5Server("u", "p") as socks:  # fmt: skip
        dcs = [a for i in range(1, 6) for a in ("--dc", f"{i}=127.0.0.1:{dc.port}")]
        common = ["--modes", "tls", "--tls-domain", DOMAIN, "--mask", f"127.0.0.1:{site.port}",
                  "--socks5", f"socks5://u:p@127.0.0.1:{socks.port}", *dcs,
                  "--proxy-config", web.url + "/config", "--proxy-secret", web.url + "/secret"]
        proxy = await ProxyProc.start(tmp_path, *common)
        try:
            code, out = await doctor(
                cert, *common, "--secret", SECRET.hex(), "--public-host", "127.0.0.1",
                "--data-dir", str(tmp_path / "data"), "--time-url", web.url + "/",
            )  # fmt: skip
        finally:
            await proxy.stop()
    print(out)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[-1] == "17 ok, 0 warnings, 0 errors"
    assert all(line.startswith("ok ") for line in lines[:-1]), out
    for words in ("clock", "dc 5 via socks5", "3 middle-proxies", "TLS 1.3 for localhost",
                  "localhost points to this server", "answers as this proxy", "fd limit"):
        assert words in out, words


@pytest.mark.timeout_s(90)
async def test_doctor_on_a_broken_set_up(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, DOMAIN)
    pages = {"/config": (200, PROXY_LIST)}
    async with WebServer(pages=pages, skew=400) as web, TlsSite(
        cert, key, ssl.TLSVersion.TLSv1_2
    ) as site, Listener() as dc, Socks5Server("u", "p") as socks:
        dcs = [a for i in (1, 2, 4, 5) for a in ("--dc", f"{i}=127.0.0.1:{dc.port}")]
        code, out = await doctor(
            cert, "--modes", "tls", "--tls-domain", DOMAIN, "--mask", f"127.0.0.1:{site.port}",
            "--socks5", f"socks5://u:bad@127.0.0.1:{socks.port}", *dcs,
            "--dc", f"3=127.0.0.1:{closed_port()}", "--secret", SECRET.hex(),
            "--proxy-config", web.url + "/config", "--proxy-secret", web.url + "/secret",
            "--public-host", "127.0.0.2", "--listen", f"127.0.0.1:{closed_port()}",
            "--max-connections", "10000000", "--data-dir", str(tmp_path / "data"),
            "--time-url", web.url + "/",
        )  # fmt: skip
        json_code, json_out = await doctor(cert, "--json", "--modes", "classic", "--mask", "off",
                                           "--time-url", web.url, "--public-host", "127.0.0.1",
                                           *dcs, "--dc", f"3=127.0.0.1:{dc.port}",
                                           "--proxy-config", web.url + "/config",
                                           "--proxy-secret", web.url + "/missing",
                                           "--listen", "127.0.0.1:0",
                                           "--data-dir", str(tmp_path / "none"))  # fmt: skip
    print(out)
    assert code == 2
    assert "error    clock" in out and "from the future" in out  # 400 s behind
    assert "error    dc 3  " in out and "ok       dc 1  " in out
    assert "error    dc 1 via socks5" in out
    assert "warning  proxy secret" in out and "HTTP 404" in out
    assert "warning  mask localhost" in out and "TLSv1.2" in out
    assert "warning  dns localhost" in out and "not to this server (127.0.0.2)" in out
    assert "error    port" in out and "open TCP port" in out
    assert "error    fd limit" in out
    assert out.count("fix: ") == out.count("\nwarning ") + out.count("\nerror ") + (
        out.startswith(("warning", "error"))
    )
    results = json.loads(json_out)
    assert json_code == 1  # warnings only: the port is unknown, the files are not needed
    assert {r["check"] for r in results if r["level"] == "warning"} == {
        "clock", "proxy secret", "port"
    } | ({"fd limit"} if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 8192 else set())


def test_doctor_with_a_bad_setting() -> None:
    result = subprocess.run([sys.executable, "-m", "mtproxy", "doctor", "--mask", "bogus host"],
                            capture_output=True, text=True, timeout=30,
                            env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))  # fmt: skip
    assert result.returncode == 2
    assert result.stdout.startswith("error    config  --mask: 'bogus host'")
    result = subprocess.run([sys.executable, "-m", "mtproxy", "doctor", "--timeout", "x"],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert result.returncode == 2 and "--timeout" in result.stderr
