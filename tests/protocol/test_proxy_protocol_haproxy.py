"""Interop: parse the headers a real HAProxy sends (v1, v2, v2 with CRC32C, LOCAL checks).

Our builders and parser agreeing proves little on its own; this drives the
Debian ``haproxy`` binary on loopback as the load balancer in front of a tiny
asyncio backend that uses :func:`parse_proxy_header` the way the server does.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from system_tools import require_binary

from mtproxy.protocol.proxy_protocol import (
    MAX_HEADER_LENGTH,
    ProxyHeader,
    ProxyProtocolError,
    parse_proxy_header,
)


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def ipv6_loopback() -> bool:
    try:
        free_port("::1")
    except OSError:
        return False
    return True


class Backend:
    """Records the header (and first payload) of every connection it accepts."""

    def __init__(self) -> None:
        self.seen: asyncio.Queue[tuple[ProxyHeader | None, bytes]] = asyncio.Queue()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = b""
        header: ProxyHeader | None = None
        try:
            while (header := parse_proxy_header(buf)) is None:
                chunk = await reader.read(MAX_HEADER_LENGTH - len(buf))
                if not chunk:
                    break
                buf += chunk
        except ProxyProtocolError:
            header = None
        if header is None:
            await self.seen.put((None, buf))
            writer.close()
            return
        rest = buf[header.header_length :]
        try:
            if header.command == "PROXY":
                rest += await reader.readexactly(5 - len(rest))
                writer.write(b"ok:" + rest)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # a readiness probe that connected and left
        writer.close()
        await self.seen.put((header, rest))

    async def next_with_payload(self) -> tuple[ProxyHeader | None, bytes]:
        """Skip the empty connections of the readiness probes."""
        while True:
            header, rest = await self.seen.get()
            if header is None or rest:
                return header, rest


@contextlib.contextmanager
def running_haproxy(binary: str, config: str) -> Iterator[subprocess.Popen[bytes]]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "haproxy.cfg"
        cfg.write_text(config)
        check = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        proc = subprocess.Popen(
            [binary, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


async def wait_listening(host: str, port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(100):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise AssertionError(f"haproxy never listened on {host}:{port}")


SEND_OPTIONS = {
    "v1": "send-proxy",
    "v2": "send-proxy-v2",
    "v2crc": "send-proxy-v2 proxy-v2-options crc32c",
}


@pytest.mark.timeout_s(60)
async def test_real_haproxy_headers_parse() -> None:
    binary = require_binary("haproxy", "haproxy")
    backend = Backend()
    server = await asyncio.start_server(backend.handle, "127.0.0.1", 0)
    backend_port = server.sockets[0].getsockname()[1]
    hosts = ["127.0.0.1"] + (["::1"] if ipv6_loopback() else [])
    fronts = {(name, host): free_port(host) for name in SEND_OPTIONS for host in hosts}
    sections = []
    for (name, host), port in fronts.items():
        tag = f"{name}_{'v6' if ':' in host else 'v4'}"
        sections.append(
            f"listen {tag}\n"
            f"    bind {'[' + host + ']' if ':' in host else host}:{port}\n"
            f"    server be 127.0.0.1:{backend_port} {SEND_OPTIONS[name]}\n"
        )
    config = (
        "global\n    maxconn 64\n"
        "defaults\n    mode tcp\n    timeout connect 5s\n"
        "    timeout client 10s\n    timeout server 10s\n" + "\n".join(sections)
    )
    async with server:
        with running_haproxy(binary, config) as proc:
            for (name, host), port in fronts.items():
                await wait_listening(host, port, proc)
                reader, writer = await asyncio.open_connection(host, port)
                client = writer.get_extra_info("sockname")[:2]
                writer.write(b"hello")
                await writer.drain()
                assert await asyncio.wait_for(reader.readexactly(8), 10) == b"ok:hello"
                writer.close()
                header, rest = await asyncio.wait_for(backend.next_with_payload(), 10)
                assert header is not None, (name, host, rest)
                assert rest == b"hello"
                assert header.version == (1 if name == "v1" else 2)
                assert header.command == "PROXY"
                assert header.family == ("INET6" if ":" in host else "INET")
                assert header.source == (client[0], client[1])
                assert header.destination == (host, port)
                assert any(t == 0x03 for t, _ in header.tlvs) == (name == "v2crc")


@pytest.mark.timeout_s(60)
async def test_real_haproxy_health_check_sends_local() -> None:
    """``check-send-proxy`` health checks arrive as a v2 LOCAL header, which must parse."""
    binary = require_binary("haproxy", "haproxy")
    backend = Backend()
    server = await asyncio.start_server(backend.handle, "127.0.0.1", 0)
    backend_port = server.sockets[0].getsockname()[1]
    config = (
        "global\n    maxconn 16\n"
        "defaults\n    mode tcp\n    timeout connect 2s\n"
        "    timeout client 5s\n    timeout server 5s\n    timeout check 2s\n"
        f"frontend fe\n    bind 127.0.0.1:{free_port('127.0.0.1')}\n    default_backend be\n"
        f"backend be\n    server s 127.0.0.1:{backend_port} send-proxy-v2"
        " check check-send-proxy inter 200ms\n"
    )
    async with server:
        with running_haproxy(binary, config):
            header, _ = await asyncio.wait_for(backend.seen.get(), 20)
    assert header is not None
    assert header.version == 2
    assert header.command == "LOCAL"
    assert header.source is None
