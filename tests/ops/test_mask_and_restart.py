"""The real ``mtproxy run``: mask-host health and profile, and replay protection across restarts.

- The proxy measures a real TLS 1.3 site (OpenSSL via Python's ssl) at start-up and copies
  its ServerHello extension order and encrypted-flight size; the profile is stored in the
  data directory and used after a restart while the site is down.
- A mask host that is down is a WARNING naming it and the fix, and ``mask_up 0``.
- A hello or a header seen before a restart is refused after it (clean stop, kill -9, and
  with two workers sharing the cache).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakes import (
    TAG_INTERMEDIATE,
    TAG_PADDED,
    FakeDC,
    RecordingServer,
    build_client_hello,
    faketls_exchange,
    open_faketls,
    open_obfs2,
    packet_echo_handler,
    parse_server_response,
)
from fakes.obfs import make_initiator_header
from fakes.tls_site import TlsSite
from system_tools import require_binary

from ops.helpers import ROOT, SECRET, ProxyProc, free_port

DOMAIN = "www.example.com"
SITE_REPLY = b"HTTP/1.1 400 Bad Request\r\nServer: nginx\r\nContent-Length: 0\r\n\r\n"


async def wait_for(predicate: object, timeout: float = 15.0, what: str = "") -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def profile_of(proxy_data: Path) -> dict[str, object] | None:
    path = proxy_data / "mask-profile.json"
    return json.loads(path.read_text()) if path.exists() else None


async def fake_reply(port: int) -> bytes:
    _, writer, response = await faketls_exchange(
        "127.0.0.1", port, build_client_hello(SECRET, DOMAIN)
    )
    writer.close()
    return response


async def test_the_fake_answer_copies_the_measured_site(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with TlsSite(tmp_path / "site", DOMAIN) as site:
        proxy = await ProxyProc.start(
            tmp_path, "--tls-domain", DOMAIN, "--mask", f"127.0.0.1:{site.port}",
            "--mask-check-interval", "1",
        )  # fmt: skip
        try:
            await wait_for(lambda: (profile_of(data) or {}).get("source") == "fetched",
                           what="a fetched profile")  # fmt: skip
            await proxy.wait_stat("mask_up", 1)
            stored = profile_of(data)
            assert stored is not None and stored["sni"] == DOMAIN
            records = stored["records"]
            assert isinstance(records, list) and len(records) >= 3  # EE, Cert, CV, Finished
            sizes = set()
            for _ in range(3):
                info = parse_server_response(await fake_reply(proxy.port))
                assert list(info.extension_order) == stored["extension_order"]
                sizes.add(info.appdata_len)
            # One record as long on the wire as the site's records together, every time.
            assert sizes == {sum(5 + n for n in records) - 5}
            _, metrics = await proxy.get("/metrics")
            assert "mtproxy_mask_up 1.0" in metrics
            assert 'mtproxy_mask_profile_info{source="fetched"} 1.0' in metrics
            assert (await proxy.stats())["mask_profile_source"] == "fetched"
        finally:
            await proxy.stop()
    # The site is gone now: a restart answers in the shape measured before, and says so.
    proxy = await ProxyProc.start(
        tmp_path, "--tls-domain", DOMAIN, "--mask", f"127.0.0.1:{site.port}",
        "--mask-check-interval", "1",
    )  # fmt: skip
    try:
        info = parse_server_response(await fake_reply(proxy.port))
        assert info.appdata_len == sum(5 + n for n in records) - 5
        await proxy.wait_stat("mask_up", 0)
        assert (await proxy.stats())["mask_profile_source"] == "cached"
        assert f"mask host 127.0.0.1:{site.port} is unreachable" in proxy.log()
    finally:
        await proxy.stop()


async def test_a_mask_host_that_is_down_is_said_loudly(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    proxy = await ProxyProc.start(
        tmp_path, "--tls-domain", DOMAIN, "--mask", f"127.0.0.1:{port}",
        "--log-level", "info",
    )  # fmt: skip
    try:
        await proxy.wait_stat("mask_up", 0)
        await wait_for(lambda: "fake-TLS replies use one fixed record size" in proxy.log(),
                       what="the drawn-size warning")  # fmt: skip
        log = proxy.log()
        line = next(x for x in log.splitlines() if "is unreachable" in x)
        assert "WARNING" in line and f"127.0.0.1:{port}" in line and "connection refused" in line
        assert "fix:" in line and "--mask" in line
        # One size, drawn once and stored: the same for every connection.
        sizes = {parse_server_response(await fake_reply(proxy.port)).appdata_len
                 for _ in range(3)}  # fmt: skip
        stored = profile_of(tmp_path / "data")
        assert stored is not None and stored["source"] == "drawn"
        assert sizes == {stored["records"][0]}  # type: ignore[index]
        _, metrics = await proxy.get("/metrics")
        assert "mtproxy_mask_up 0.0" in metrics
    finally:
        await proxy.stop()


def test_an_unresolvable_mask_host_is_said_loudly(tmp_path: Path) -> None:
    """In a private network namespace, so that the name lookup leaves no trace outside."""
    unshare = require_binary("unshare", "util-linux")
    require_binary("ip", "iproute2")
    cmd = [unshare, "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
           sys.executable, "-m", "mtproxy", "run", "--listen", "127.0.0.1:443",
           "--secret", SECRET.hex(), "--tls-domain", DOMAIN, "--mask", "mask.invalid:443",
           "--data-dir", str(tmp_path / "data"), "--public-host", "127.0.0.1",
           "--stats", "off"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    line = ""
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "is unreachable" not in line:
            line = proc.stderr.readline()
            if not line:
                break
    finally:
        proc.terminate()
        proc.wait(15)
    assert "WARNING" in line and "mask.invalid:443" in line, line
    assert "cannot resolve mask.invalid" in line and "fix:" in line


# -- replay protection across restarts --------------------------------------------------------


async def masked(site: RecordingServer, port: int, data: bytes) -> bool:
    """Send ``data`` raw; True if the site (not the proxy) answered and got exactly it."""
    index = len(site.connections)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer == SITE_REPLY and await site.wait_bytes(len(data), index=index) == data


async def record_sessions(port: int) -> tuple[bytes, bytes]:
    """One fake-TLS and one classic session that work; their openings, for replaying."""
    hello = build_client_hello(SECRET, DOMAIN)
    stream = await open_faketls("127.0.0.1", port, SECRET, DOMAIN, TAG_PADDED, 2, hello=hello)
    async with stream:
        stream.send_packet(b"ping")
        assert await stream.recv_packet() == b"ping"
    header = make_initiator_header(TAG_INTERMEDIATE, 2, SECRET).wire
    classic = await open_obfs2("127.0.0.1", port, SECRET, TAG_INTERMEDIATE, 2, header=header)
    async with classic:
        classic.send_packet(b"ping")
        assert await classic.recv_packet() == b"ping"
    return hello, header


@pytest.mark.parametrize("workers", [1, 2])
async def test_replays_after_a_clean_restart_see_the_site(tmp_path: Path, workers: int) -> None:
    async with RecordingServer(SITE_REPLY) as site, FakeDC(packet_echo_handler) as dc:
        args = ("--tls-domain", DOMAIN, "--mask", f"127.0.0.1:{site.port}",
                "--workers", str(workers), "--mask-check-interval", "3600")  # fmt: skip
        proxy = await ProxyProc.start(tmp_path, *args, dc_port=dc.port)
        try:
            hello, header = await record_sessions(proxy.port)
        finally:
            assert await proxy.stop() == 0
        assert (tmp_path / "data" / "replay-cache").exists()
        proxy = await ProxyProc.start(tmp_path, *args, dc_port=dc.port)
        try:
            assert await masked(site, proxy.port, hello)
            assert await masked(site, proxy.port, header)
            hs = await proxy.stats()
            assert hs.get("handshakes_any_tls_replay") == "1"
            assert hs.get("handshakes_any_replay") == "1"
            await record_sessions(proxy.port)  # fresh clients still get through
        finally:
            await proxy.stop()


async def test_a_hello_replayed_after_a_crash_sees_the_site(tmp_path: Path) -> None:
    """No clean save: hellos older than the new start are refused by their timestamp."""
    async with RecordingServer(SITE_REPLY) as site, FakeDC(packet_echo_handler) as dc:
        args = ("--tls-domain", DOMAIN, "--mask", f"127.0.0.1:{site.port}",
                "--mask-check-interval", "3600")  # fmt: skip
        proxy = await ProxyProc.start(tmp_path, *args, dc_port=dc.port)
        try:
            hello, _ = await record_sessions(proxy.port)
        finally:
            os.killpg(proxy.pid, signal.SIGKILL)
            await proxy.proc.wait()
        await asyncio.sleep(1.1)
        proxy = await ProxyProc.start(tmp_path, *args, dc_port=dc.port)
        try:
            assert await masked(site, proxy.port, hello)
            assert (await proxy.stats()).get("handshakes_any_tls_bad_time") == "1"
            await asyncio.sleep(1.1)  # a client whose clock reads after the start is fine
            await record_sessions(proxy.port)
        finally:
            await proxy.stop()
