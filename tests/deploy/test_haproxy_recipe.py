"""Run the shipped deploy/haproxy/haproxy.cfg for real, on loopback.

Only the addresses are rewritten (Docker's DNS name and port 443 do not exist
here); balancing, health checks and ``send-proxy-v2`` are the file's own. A
stand-in replica parses the header with :func:`parse_proxy_header` and serves
``/stats`` for the health check.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path

import pytest
from system_tools import require_binary

from mtproxy.protocol.proxy_protocol import (
    MAX_HEADER_LENGTH,
    ProxyHeader,
    ProxyProtocolError,
    parse_proxy_header,
)

HAPROXY_CFG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy" / "haproxy.cfg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def loopback_config(frontend: int, replica: int, stats: int) -> str:
    """The shipped config with each address swapped for loopback (each swap must apply once)."""
    text = HAPROXY_CFG.read_text()
    swaps = [
        # 20000 connections need 40000 descriptors: compose raises nofile, a test runner may not.
        ("    maxconn 20000\n", "    maxconn 1000\n"),
        ("    bind :443\n", f"    bind 127.0.0.1:{frontend}\n"),
        (" mtproxy:443 ", f" 127.0.0.1:{replica} "),
        (" check port 2398 ", f" check port {stats} "),
        (" inter 5s ", " inter 200ms "),
        (" resolvers docker\n", "\n"),
    ]
    for old, new in swaps:
        assert text.count(old) == 1, f"haproxy.cfg changed: {old!r} no longer appears once"
        text = text.replace(old, new)
    return text


class Replica:
    """Stands in for one mtproxy replica started with --proxy-protocol."""

    def __init__(self, draining: int = 0) -> None:
        self.headers: list[ProxyHeader] = []
        self.rejected = 0
        self.stats_requests: asyncio.Queue[bytes] = asyncio.Queue()
        #: What /stats says: 1 once the proxy got SIGTERM and accepts no new clients.
        self.draining = draining

    async def client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = b""
        try:
            while (header := parse_proxy_header(buf)) is None:
                chunk = await reader.read(MAX_HEADER_LENGTH - len(buf))
                if not chunk:
                    return
                buf += chunk
            self.headers.append(header)
            rest = buf[header.header_length :]
            rest += await reader.readexactly(5 - len(rest))
            writer.write(b"ok:" + rest)
            await writer.drain()
        except ProxyProtocolError:
            self.rejected += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def stats(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            # The head of the real page (mtproxy.ops.snapshot.render_tsv).
            body = f"pid\t1\nworkers\t1\ndraining\t{self.draining}\nreloads\t0\n".encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
            )
            await writer.drain()
            await self.stats_requests.put(request)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest.mark.timeout_s(60)
async def test_shipped_haproxy_config_forwards_with_proxy_v2(tmp_path: Path) -> None:
    binary = require_binary("haproxy", "haproxy")
    replica = Replica()
    client_server = await asyncio.start_server(replica.client, "127.0.0.1", 0)
    stats_server = await asyncio.start_server(replica.stats, "127.0.0.1", 0)
    frontend = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        loopback_config(
            frontend,
            client_server.sockets[0].getsockname()[1],
            stats_server.sockets[0].getsockname()[1],
        )
    )
    log = (tmp_path / "haproxy.log").open("wb")
    proc = subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=log, stderr=log)

    def alive() -> None:
        assert proc.poll() is None, (tmp_path / "haproxy.log").read_text()

    try:
        async with client_server, stats_server:
            # The health check reaches the replica's /stats endpoint.
            request = b""
            for _ in range(200):
                alive()
                try:
                    request = await asyncio.wait_for(replica.stats_requests.get(), 0.1)
                    break
                except TimeoutError:
                    continue
            assert request.startswith(b"GET /stats HTTP/1.")
            reader = writer = None
            for _ in range(100):
                alive()
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", frontend)
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            assert reader is not None and writer is not None
            client = writer.get_extra_info("sockname")[:2]
            writer.write(b"hello")
            await writer.drain()
            assert await asyncio.wait_for(reader.readexactly(8), 10) == b"ok:hello"
            writer.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
    assert replica.rejected == 0
    (header,) = [h for h in replica.headers if h.source == client]
    assert header.version == 2
    assert header.command == "PROXY"
    assert header.destination == ("127.0.0.1", frontend)


@pytest.mark.timeout_s(60)
async def test_a_draining_replica_gets_no_new_clients(tmp_path: Path) -> None:
    """The shipped health check reads the stats page: a replica that says it is draining
    (it got SIGTERM and lets its sessions finish) is taken out of the backend."""
    binary = require_binary("haproxy", "haproxy")
    replica = Replica(draining=1)
    client_server = await asyncio.start_server(replica.client, "127.0.0.1", 0)
    stats_server = await asyncio.start_server(replica.stats, "127.0.0.1", 0)
    frontend = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(loopback_config(frontend, client_server.sockets[0].getsockname()[1],
                                   stats_server.sockets[0].getsockname()[1]))
    log = (tmp_path / "haproxy.log").open("wb")
    proc = subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=log, stderr=log)
    try:
        async with client_server, stats_server:
            # Every slot of the server-template points at this replica; each is marked
            # down after 3 failed checks, 200 ms apart.
            text = ""
            for _ in range(200):
                assert proc.poll() is None, text
                text = (tmp_path / "haproxy.log").read_text()
                if "0 active and 0 backup servers left" in text:
                    break
                await asyncio.sleep(0.05)
            assert "0 active and 0 backup servers left" in text, text
            assert "HTTP content check did not match" in text
            reader, writer = await asyncio.open_connection("127.0.0.1", frontend)
            writer.write(b"hello")
            await writer.drain()
            assert await asyncio.wait_for(reader.read(100), 10) == b""
            writer.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
    assert replica.headers == []
