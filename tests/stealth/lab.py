"""The censor's lab: nginx as the mask host, the proxy in front of it, probes against both.

Run inside a private network namespace (``unshare -n``, see conftest.py): it brings up
its loopback, starts nginx (TLS 1.3, h2, a self-signed RSA certificate made here) and
``mtproxy run`` with ``--mask`` pointing at nginx and default modes, a fake DC, and then
sends every probe of the issue's table once straight to nginx and once to the proxy. It
prints one JSON object with what each side did: the bytes, how and when the connection
ended, the ServerHello's shape, and what TDLib (the real client) made of the proxy.

It also measures the sizes of the records after the handshake: a bulk download from nginx
and through the proxy from a fake DC, and a few small writes of the fake DC.

``unshare -n python tests/stealth/lab.py DIR --timers`` measures the slow rows instead
(about 7 s): when each side ends a connection that sends nothing, one byte or half a
ClientHello, or completes a TLS session with the site and then goes quiet; whether it is a
FIN or a reset; and the TCP keep-alive probes each side sends before that, from a tcpdump
capture of the namespace's loopback (apt-get install tcpdump). nginx runs with its timers
shortened (:data:`SHORT_TIMERS`) and the proxy with a 1 s ``--keepalive``, which an
accepted fake-TLS session in the same run shows. The same capture, taken with
segmentation offload off on lo (one capture record per wire segment), shows the
segments of the fake ServerHello flight with and without ``--server-hello-segment``.
``--default-timers`` keeps nginx's own timers (60 s and 75 s; the run takes about 80 s),
``--listen=SECONDS`` how long each probe waits.

The quick run also puts proxies in front of a mask host that is down in each way
(refused, black-holed, unresolvable) and notes what a prober sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1] / "src")]

from fakes import (  # noqa: E402
    TAG_PADDED,
    DcConn,
    FakeDC,
    TelethonAuthResponder,
    build_client_hello,
    open_faketls,
)
from fakes.tls_site import write_self_signed  # noqa: E402

from mtproxy.protocol.tlsprofile import build_probe_hello, parse_flight, split_records  # noqa: E402
from stealth import tdlib  # noqa: E402

DOMAIN = "www.example.com"
SECRET = bytes.fromhex("5ec2e7000000000000000000000000a1")
NGINX_PORT, PROXY_PORT = 8443, 443
#: Proxies whose mask host is down, by how it is down: nothing listens on its port
#: (refused), its port takes no new connection (black-holed: a full accept queue drops
#: the SYN), or its name does not resolve.
DOWN = {"refused": (444, 8444), "black_holed": (445, 8445), "unresolvable": (446, 0)}
UNRESOLVABLE = "mask.invalid:443"
#: The down proxies' timers (shortened for the lab; the defaults are 10 s each).
DOWN_TIMERS = ("--handshake-timeout", "2", "--connect-timeout", "2")
#: TDLib's built-in production RSA key (its fingerprint; the fake DC offers it in resPQ).
TDLIB_KEY_FINGERPRINT = 0xD09D1D85DE64FD85
HTTP_GET = f"GET / HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode()
#: Bytes of the bulk download (from nginx: a file; through the proxy: from a fake DC).
BULK = 2 << 20
#: What the fake DC writes in the small-writes probe, one write at a time.
#: A DC's tiny writes (a quick ack, a TCP segment's few last bytes), back to back: each
#: under the 18 bytes of the smallest TLS 1.3 record, so the proxy holds them to coalesce.
SMALL_WRITES = (1, 4, 17, 3, 9, 2)
#: Another proxy to put in front of nginx (e.g. an older checkout's src/, for a before and
#: after), and how long the quick probes listen.
PROXY_SRC = Path(os.environ.get("MTPROXY_LAB_SRC", HERE.parents[1] / "src"))
LISTEN = float(os.environ.get("MTPROXY_LAB_LISTEN", "3"))


@dataclass
class Seen:
    """What one probe connection saw."""

    data: str  # hex of everything received
    ttfb: float | None  # seconds from connect to the first byte
    closed: float | None  # seconds from connect to FIN or RST
    close: str  # "fin", "rst" or "open" (still open when we stopped listening)
    after: str | None = None  # what answered a byte sent after the close (see timed())


def bring_loopback_up(*, whole_segments: bool = False) -> None:
    """``whole_segments``: no segmentation offload on lo, so that a capture shows each
    TCP segment as it would cross a wire (with it, one capture record may be many)."""
    extra = ["gso_max_segs", "1"] if whole_segments else []
    subprocess.run(["ip", "link", "set", "lo", "up", *extra], check=True)


def nginx_config(workdir: Path, timers: dict[str, int] | None = None) -> Path:
    cert, key = write_self_signed(workdir / "certs", DOMAIN, rsa_bits=2048)
    (workdir / "www").mkdir(exist_ok=True)
    (workdir / "www" / "index.html").write_text("<html><body>a web site</body></html>\n")
    (workdir / "www" / "big.bin").write_bytes(random.Random(1).randbytes(BULK))
    temp = workdir / "nginx-tmp"
    temp.mkdir(exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
daemon off;
master_process on;
worker_processes 1;
user root;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {temp}; proxy_temp_path {temp}; fastcgi_temp_path {temp};
    uwsgi_temp_path {temp}; scgi_temp_path {temp};
    server {{
        listen 127.0.0.1:{NGINX_PORT} ssl http2;
        server_name {DOMAIN};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        root {workdir}/www;
        {"".join(f"{name} {value}s; " for name, value in (timers or {}).items())}
    }}
}}
""")
    return conf


async def wait_port(
    port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None
) -> bool:
    """Until something listens on ``port``; False if ``proc`` (what should) exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return True
        if proc is not None and proc.poll() is not None:
            return False
        await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@contextlib.asynccontextmanager
async def process(cmd: list[str], log: Path, **kw: Any) -> Any:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, **kw)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def proxy_cmd(
    workdir: Path, dc_port: int, *extra: str, port: int = PROXY_PORT,
    mask: int | str = NGINX_PORT, source_port: int = 0,
) -> list[str]:
    dcs = ["--dc", f"3=127.0.0.1:{source_port}"] if source_port else []
    mask = mask if isinstance(mask, str) else f"127.0.0.1:{mask}"
    return [sys.executable, "-m", "mtproxy", "run", "--listen", f"127.0.0.1:{port}",
            "--secret", SECRET.hex(), "--tls-domain", DOMAIN, *dcs,
            "--mask", mask, "--dc", f"2=127.0.0.1:{dc_port}",
            "--public-host", "127.0.0.1", "--data-dir", str(workdir / f"proxy-data-{port}"),
            "--stats", "off", "--log-level", "info", *extra]  # fmt: skip


# -- probes ------------------------------------------------------------------------------------


async def measure(
    port: int, data: bytes, *, eof: bool = False, listen: float = 3.0, stop_after: int = 1 << 20
) -> Seen:
    """Connect, send ``data`` (then FIN if ``eof``), and watch the answer for ``listen`` s."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    started = time.monotonic()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    if data:
        await loop.sock_sendall(sock, data)
    if eof:
        sock.shutdown(socket.SHUT_WR)
    got = bytearray()
    ttfb = closed = None
    close = "open"
    try:
        async with asyncio.timeout(listen):
            while len(got) < stop_after:
                try:
                    chunk = await loop.sock_recv(sock, 65536)
                except ConnectionResetError:
                    closed, close = time.monotonic() - started, "rst"
                    break
                if not chunk:
                    closed, close = time.monotonic() - started, "fin"
                    break
                if ttfb is None:
                    ttfb = time.monotonic() - started
                got += chunk
    except TimeoutError:
        pass
    finally:
        sock.close()
    return Seen(got.hex(), ttfb, closed, close)


async def both(data: bytes, **kw: Any) -> dict[str, Any]:
    site = await measure(NGINX_PORT, data, **kw)
    proxy = await measure(PROXY_PORT, data, **kw)
    return {"site": asdict(site), "proxy": asdict(proxy)}


def record_shape(hex_data: str) -> list[tuple[int, int]]:
    """(type, length) of the whole TLS records in an answer."""
    records, _ = split_records(bytes.fromhex(hex_data))
    return [(r.kind, len(r.payload)) for r in records]


async def server_hello_shapes() -> dict[str, Any]:
    """The site's answer to a browser-like hello; the proxy's to a valid fake-TLS hello."""
    site = await measure(NGINX_PORT, build_probe_hello(DOMAIN), listen=1.0)
    profile = parse_flight(bytes.fromhex(site.data))
    proxy = await measure(PROXY_PORT, build_client_hello(SECRET, DOMAIN), listen=1.0)
    fake = parse_flight(bytes.fromhex(proxy.data))
    return {
        "site": {"order": profile.extension_order, "records": profile.records,
                 "wire": len(site.data) // 2, "group": profile.key_share_group},
        "proxy": {"order": fake.extension_order, "records": fake.records,
                  "wire": len(proxy.data) // 2, "group": fake.key_share_group},
    }  # fmt: skip


async def valid_hello_then_fin() -> dict[str, Any]:
    seen = await measure(PROXY_PORT, build_client_hello(SECRET, DOMAIN), eof=True, listen=5.0)
    return {"seen": asdict(seen), "records": record_shape(seen.data)}


async def site_down(kind: str) -> str:
    """What a client of the site itself gets when the site is down in this way."""
    if kind == "unresolvable":
        try:
            await asyncio.get_running_loop().getaddrinfo(*UNRESOLVABLE.split(":"))
        except OSError:
            return "unresolvable"
        return "resolved"
    try:
        async with asyncio.timeout(3):
            _, writer = await asyncio.open_connection("127.0.0.1", DOWN[kind][1])
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "no_synack"
    writer.close()
    return "connected"


@contextlib.contextmanager
def black_hole() -> Any:
    """A port whose accept queue is full: Linux drops further SYNs, as a firewall would."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", DOWN["black_holed"][1]))
        listener.listen(0)
        filler.connect(listener.getsockname())
        yield


async def mask_down(workdir: Path, dc_port: int, env: dict[str, str]) -> dict[str, Any]:
    """A site that is down refuses the connection or never answers it; a proxy in front
    of it has accepted it already. What a prober sees then, and the warning."""
    with black_hole():
        async with contextlib.AsyncExitStack() as procs:
            for kind, (port, mask) in DOWN.items():
                target = UNRESOLVABLE if kind == "unresolvable" else mask
                log = workdir / f"proxy-down-{kind}.log"
                await procs.enter_async_context(process(
                    proxy_cmd(workdir, dc_port, *DOWN_TIMERS, port=port, mask=target), log,
                    env=env,
                ))  # fmt: skip
            for port, _ in DOWN.values():
                await wait_port(port)
            kinds = list(DOWN)
            sites = await asyncio.gather(*(site_down(kind) for kind in kinds))
            probes = await asyncio.gather(
                *(measure(DOWN[kind][0], data, listen=6.0)
                  for kind in kinds for data in (HTTP_GET, b""))
            )  # fmt: skip
    out: dict[str, Any] = {}
    for i, kind in enumerate(kinds):
        text = (workdir / f"proxy-down-{kind}.log").read_text(errors="replace")
        warning = next((line for line in text.splitlines() if "is unreachable" in line), "")
        out[kind] = {
            "site": sites[i], "http_get": asdict(probes[2 * i]),
            "nothing": asdict(probes[2 * i + 1]), "warning": warning,
        }  # fmt: skip
    return out


# -- record sizes after the handshake ---------------------------------------------------------


async def source_handler(conn: DcConn) -> None:
    """The fake DC of the record-size probes: a burst of small writes (a DC answering
    several short messages at once, each its own write), or a bulk stream.

    The proxy holds a write under 18 bytes for about 1 ms waiting for more (the issue's
    bound), so small writes that follow each other within it leave in records a TLS 1.3
    server could send; a write that stays alone longer still goes out on its own, and
    tests/integration/test_records.py shows that it does, within the bound."""
    first = await conn.read(1)  # the client's "go" (1 = small writes, 2 = bulk)
    if first == b"\x01":
        for size in SMALL_WRITES:  # separate writes, sent at once (no await between them)
            conn.write(bytes(size))
        await conn.drain()
    else:
        data = random.Random(2).randbytes(BULK)
        for start in range(0, BULK, 1 << 16):
            conn.write(data[start : start + (1 << 16)])
            await conn.drain()
    conn.write_eof()


class RecordLog:
    """Wraps a fake-TLS stream's record reader to note every record's length."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sizes: list[int] = []
        self._buf = bytearray()
        self.pending = 0

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        while len(self._buf) >= 5 and len(self._buf) >= 5 + int.from_bytes(self._buf[3:5], "big"):
            size = int.from_bytes(self._buf[3:5], "big")
            if self._buf[0] == 0x17:
                self.sizes.append(size)
            del self._buf[: 5 + size]
        out: bytes = self.inner.feed(data)
        self.pending = self.inner.pending
        return out


async def proxy_records(go: bytes, want: int) -> list[int]:
    stream = await open_faketls("127.0.0.1", PROXY_PORT, SECRET, DOMAIN, TAG_PADDED, 3)
    log = RecordLog(stream._tls_in)
    stream._tls_in = log  # type: ignore[assignment]
    async with stream:
        stream.write(go)
        await stream.drain()
        got = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(20):
                while got < want:
                    chunk = await stream.read(1 << 16)
                    if not chunk:
                        break
                    got += len(chunk)
    return log.sizes


async def site_records() -> list[int]:
    """A real TLS 1.3 client downloading the file from nginx; the sizes of what it read."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=DOMAIN)
    reader, writer = await asyncio.open_connection("127.0.0.1", NGINX_PORT)
    log = RecordLog(_Passthrough())
    request = f"GET /big.bin HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n"
    sent = False
    async with asyncio.timeout(20):
        while True:
            try:
                if not sent:
                    tls.do_handshake()
                    tls.write(request.encode())
                    sent = True
                while tls.read(1 << 16):
                    pass
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
            if outgoing.pending:
                writer.write(outgoing.read())
            raw = await reader.read(1 << 16)
            if not raw:
                break
            log.feed(raw)
            incoming.write(raw)
    writer.close()
    return log.sizes[4:]  # after the handshake's own encrypted records


class _Passthrough:
    pending = 0

    def feed(self, data: bytes) -> bytes:
        return data


async def record_sizes() -> dict[str, Any]:
    return {
        "site_bulk": await site_records(),
        "proxy_bulk": await proxy_records(b"\x02", BULK),
        "proxy_small": await proxy_records(b"\x01", sum(SMALL_WRITES)),
    }


# -- TDLib, and what it accepts ------------------------------------------------------------------


async def interposer(
    upstream: int, mode: str, secret: bytes
) -> tuple[asyncio.Server, int]:
    """Between TDLib and the proxy; rewrites what the proxy sends, re-signed where needed.

    ``one``: the proxy's flight re-signed unchanged (the control); ``split``: its one
    application-data record cut into two; ``big16384`` / ``big16401``: the first record
    after the handshake grown to that length with packets the client skips.
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
        head = await reader.readexactly(5)
        hello = head + await reader.readexactly(int.from_bytes(head[3:5], "big"))
        up_writer.write(hello)
        flight = []
        for _ in range(3):
            rhead = await up_reader.readexactly(5)
            flight.append(rhead + await up_reader.readexactly(int.from_bytes(rhead[3:5], "big")))
        sh, ccs, app = flight
        if mode == "split":
            body = app[5:]
            cut = len(body) // 2
            first = b"\x17\x03\x03" + cut.to_bytes(2, "big") + body[:cut]
            rest = b"\x17\x03\x03" + (len(body) - cut).to_bytes(2, "big") + body[cut:]
        else:
            first, rest = app, b""
        zeroed = sh[:11] + bytes(32) + sh[43:]
        digest = hmac.new(secret, hello[11:43] + zeroed + ccs + first, hashlib.sha256).digest()
        writer.write(sh[:11] + digest + sh[43:] + ccs + first + rest)

        header: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def client_to_proxy() -> None:
            # The client's obfuscated2 header opens its first application-data record.
            pending = bytearray()
            while chunk := await reader.read(65536):
                up_writer.write(chunk)
                if not header.done():
                    pending += chunk
                    records, _ = split_records(bytes(pending))
                    inner = b"".join(r.payload for r in records if r.kind == 0x17)
                    if len(inner) >= 64:
                        header.set_result(inner[:64])
            up_writer.write_eof()

        async def proxy_to_client() -> None:
            grow = mode.startswith("big")
            while True:
                try:
                    rhead = await up_reader.readexactly(5)
                except asyncio.IncompleteReadError:
                    break
                body = await up_reader.readexactly(int.from_bytes(rhead[3:5], "big"))
                if grow:
                    # Fill the record up to the size with quick-ack packets (4 bytes, high
                    # bit set), which the client's framing skips: re-encrypted, so the
                    # stream stays valid and only the record size changes.
                    grow = False
                    size = int(mode[3:])
                    key, iv = proxy_to_client_key(await header, secret)
                    decrypt, encrypt = aes_ctr(key, iv), aes_ctr(key, iv)
                    plain = decrypt.update(body)
                    encrypt.update(plain)
                    filler = b"".join(
                        (0x80000000 | i).to_bytes(4, "little")
                        for i in range((size - len(body)) // 4)
                    )
                    body += encrypt.update(filler)
                    rhead = rhead[:3] + len(body).to_bytes(2, "big")
                    writer.write(rhead + body)
                    recrypt = (decrypt, encrypt)
                    continue
                if mode.startswith("big") and not grow:
                    body = recrypt[1].update(recrypt[0].update(body))
                writer.write(rhead + body)
            writer.close()

        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await asyncio.gather(client_to_proxy(), proxy_to_client())
        writer.close()
        up_writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def proxy_to_client_key(header: bytes, secret: bytes) -> tuple[bytes, bytes]:
    """The key and IV of the proxy -> client stream, from the client's header."""
    rev = header[8:56][::-1]
    return hashlib.sha256(rev[:32] + secret).digest(), rev[32:48]


def aes_ctr(key: bytes, iv: bytes) -> Any:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    return Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()


async def tdlib_through(port: int, responder: TelethonAuthResponder) -> dict[str, Any]:
    before = responder.dh_params_ok
    secret = "ee" + SECRET.hex() + DOMAIN.encode().hex()
    result = await asyncio.to_thread(tdlib.test_proxy, "127.0.0.1", port, secret, 2, 5.0)
    return {"message": result.message, "dh_params_ok": responder.dh_params_ok - before}


async def tdlib_checks(responder: TelethonAuthResponder) -> dict[str, Any]:
    out: dict[str, Any] = {"direct": await tdlib_through(PROXY_PORT, responder)}
    for mode in ("one", "split", "big16384", "big16401"):
        server, port = await interposer(PROXY_PORT, mode, SECRET)
        async with server:
            out[mode] = await tdlib_through(port, responder)
    return out


# -- the whole run -------------------------------------------------------------------------------


async def run(workdir: Path) -> dict[str, Any]:
    bring_loopback_up()
    responder = TelethonAuthResponder(fingerprints=(TDLIB_KEY_FINGERPRINT,))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    conf = nginx_config(workdir)
    env = dict(os.environ, PYTHONPATH=str(PROXY_SRC))
    async with (
        FakeDC(responder) as dc,
        FakeDC(source_handler) as source,
        process([nginx, "-c", str(conf), "-p", str(workdir)], workdir / "nginx.log"),
        process(proxy_cmd(workdir, dc.port, source_port=source.port), workdir / "proxy.log",
                env=env),
    ):
        await wait_port(NGINX_PORT)
        await wait_port(PROXY_PORT)
        # The proxy measures nginx at start-up; give that a moment to land.
        for _ in range(100):
            if (workdir / f"proxy-data-{PROXY_PORT}" / "mask-profile.json").exists():
                break
            await asyncio.sleep(0.05)
        results: dict[str, Any] = {
            "http_get": await both(HTTP_GET, listen=LISTEN),
            # Seeded random bytes that do not start like a ClientHello (fake TLS alone).
            "random16": await both(random.Random(16).randbytes(16), listen=LISTEN),
            "tls_alert": await both(b"\x15\x03\x01\x00\x02\x02\x28", listen=LISTEN),
            "probe_hello": await both(build_probe_hello(DOMAIN), listen=1.0),
            "server_hello": await server_hello_shapes(),
            "valid_hello_then_fin": await valid_hello_then_fin(),
            "tdlib": await tdlib_checks(responder) if tdlib.available() else None,
        }
        results["mask_down"] = await mask_down(workdir, dc.port, env)
        results["records"] = await record_sizes()
        results["proxy_log"] = (workdir / "proxy.log").read_text(errors="replace")[-4000:]
        return results


# -- the slow rows: timers and keep-alive ------------------------------------------------------

#: nginx's timers in the timers run: its defaults (client_header_timeout 60 s, keepalive_timeout
#: 75 s) shortened so the run takes seconds, and different, so each row shows which one ended
#: it. ``--default-timers`` keeps nginx's own.
SHORT_TIMERS = {"client_header_timeout": 3, "keepalive_timeout": 5}
#: The proxy's keep-alive idle time in the timers run: a probe from it would show within 1 s.
KEEPALIVE = 1
#: A proxy that sends its ServerHello flight in segments of at most SEGMENT bytes.
SEGMENTED_PORT, SEGMENT = 447, 100
#: tcpi_state of a connection that was reset (Linux include/net/tcp_states.h).
TCP_CLOSE = 7


def tcp_frames(pcap: bytes) -> Iterator[tuple[float, bytes, int]]:
    """(time, TCP header, payload length) of the IPv4 TCP segments in a pcap file from
    ``tcpdump -i lo -s SNAPLEN`` (Ethernet link type; payloads cut off, lengths from
    the IP header)."""
    magic = pcap[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    scale = 1e-9 if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e-6
    pos = 24
    while pos + 16 <= len(pcap):
        sec, frac, incl = struct.unpack(endian + "III", pcap[pos : pos + 12])
        frame = pcap[pos + 16 : pos + 16 + incl]
        pos += 16 + incl
        if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        tcp = ip[ihl:]
        header = (tcp[12] >> 4) * 4
        yield sec + frac * scale, tcp[:header], int.from_bytes(ip[2:4], "big") - ihl - header


def tcp_segments(pcap: bytes) -> list[tuple[float, int, int, int, int, int]]:
    """(time, source port, destination port, seq, flags, payload length) of each segment."""
    out = []
    for when, tcp, size in tcp_frames(pcap):
        sport, dport, seq = struct.unpack(">HHI", tcp[:8])
        out.append((when, sport, dport, seq, tcp[13], size))
    return out


def syn_ack_mss(pcap: bytes, server: int, client: int) -> int | None:
    """The MSS option of the server's SYN-ACK (what a port scan sees of it)."""
    for _, tcp, _ in tcp_frames(pcap):
        if struct.unpack(">HH", tcp[:4]) != (server, client) or tcp[13] & 0x12 != 0x12:
            continue
        options, i = tcp[20 : (tcp[12] >> 4) * 4], 0
        while i < len(options) and options[i] != 0:
            if options[i] == 1:
                i += 1
                continue
            if options[i] == 2:
                return int.from_bytes(options[i + 2 : i + 4], "big")
            i += max(2, options[i + 1])
    return None


def keepalives(segments: list[tuple[float, int, int, int, int, int]], server: int,
               client: int) -> list[float]:
    """Times of keep-alive probes from ``server`` to ``client``: an empty ACK one byte
    below what the server already sent."""
    times = []
    next_seq = None
    for when, sport, dport, seq, flags, size in segments:
        if (sport, dport) != (server, client):
            continue
        if next_seq is not None and size == 0 and flags == 0x10 and seq == (next_seq - 1) % 2**32:
            times.append(when)
        end = seq + size + (1 if flags & 0x03 else 0)  # SYN and FIN count one
        next_seq = end if next_seq is None else max(next_seq, end)
    return times


async def watch_close(
    sock: socket.socket, started: float, listen: float, got: bytearray
) -> tuple[float | None, str]:
    """Read until the peer ends the connection: (seconds since ``started``, how)."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(listen):
            while True:
                try:
                    chunk = await loop.sock_recv(sock, 65536)
                except ConnectionResetError:
                    return time.monotonic() - started, "rst"
                if not chunk:
                    return time.monotonic() - started, "fin"
                got += chunk
    return None, "open"


async def timed(
    port: int, data: bytes, listen: float, *, fin_after: float | None = None,
    poke: bool = False,
) -> tuple[int, Seen]:
    """Like :func:`measure`, and the client port (to find its packets in the capture).

    ``fin_after``: half-close that many seconds after connecting. ``poke``: once the
    peer has closed, send one more byte and note whether a reset answers it within 1 s
    (``Seen.after``: "rst" or "nothing"; a socket the site closed resets, one it only
    half-closed does not)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    started = time.monotonic()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    local = sock.getsockname()[1]
    if data:
        await loop.sock_sendall(sock, data)
    if fin_after is not None:
        await asyncio.sleep(fin_after)
        sock.shutdown(socket.SHUT_WR)
    got = bytearray()
    closed, close = await watch_close(sock, started, listen, got)
    after = None
    if poke and close == "fin":
        after = "nothing"
        with contextlib.suppress(OSError):
            sock.send(b"x")
            for _ in range(100):
                await asyncio.sleep(0.01)
                if sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == TCP_CLOSE:
                    after = "rst"
                    break
    sock.close()
    return local, Seen(got.hex(), None, closed, close, after)


async def tls_then_idle(port: int, listen: float, *, request: bool) -> tuple[int, Seen]:
    """A real TLS 1.3 handshake with the site (straight, or masked through the proxy),
    one ``GET /`` if ``request``, then silence until the site ends the connection.
    ``Seen.ttfb`` is when the silence began; ``Seen.data`` what came during it."""
    import ssl

    loop = asyncio.get_running_loop()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=DOMAIN)
    sock = socket.socket()
    sock.setblocking(False)
    started = time.monotonic()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    local = sock.getsockname()[1]
    answer = bytearray()
    sent = False
    async with asyncio.timeout(10):
        while True:
            try:
                tls.do_handshake()
                if not request:
                    break
                if not sent:
                    tls.write(f"GET / HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode())
                    sent = True
                answer += tls.read(65536)
                head, _, body = answer.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), None)
                if length is not None and len(body) >= length:
                    break
            except ssl.SSLWantReadError:
                pass
            if outgoing.pending:
                await loop.sock_sendall(sock, outgoing.read())
            raw = await loop.sock_recv(sock, 65536)
            if not raw:
                raise RuntimeError(f"port {port} closed the TLS session early")
            incoming.write(raw)
        if outgoing.pending:  # the client's Finished (no request) or its last ACK
            await loop.sock_sendall(sock, outgoing.read())
    idle = time.monotonic() - started
    got = bytearray()
    closed, close = await watch_close(sock, started, listen, got)
    sock.close()
    return local, Seen(got.hex(), idle, closed, close)


async def fake_tls_idle(port: int, listen: float) -> tuple[int, Seen]:
    """A client of ours: a fake-TLS session through to the DC, then silence."""
    stream = await open_faketls("127.0.0.1", port, SECRET, DOMAIN, TAG_PADDED, 2)
    local = stream.writer.get_extra_info("sockname")[1]
    await asyncio.sleep(listen)
    stream.writer.close()
    return local, Seen("", 0.0, None, "open")


#: Bytes of each packet tcpdump keeps: Ethernet + IP + TCP headers with options. The
#: payloads are not needed, and writing the bulk downloads' 64 KiB loopback segments
#: whole made tcpdump fall behind on a loaded machine and lose segments. Immediate mode
#: hands each packet over at once (not a buffer block at a time, up to a second late),
#: so that what the file holds when it stops growing is all there is.
SNAPLEN = 160


async def start_capture(pcap: Path) -> subprocess.Popen[bytes] | None:
    """tcpdump on the namespace's loopback, once it says it is listening (or None)."""
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        return None
    capture = subprocess.Popen(
        [tcpdump, "-i", "lo", "--immediate-mode", "-U", "-s", str(SNAPLEN), "-w", str(pcap),
         "tcp"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert capture.stderr is not None
    line = await asyncio.wait_for(asyncio.to_thread(capture.stderr.readline), 20)
    if b"listening on" not in line:
        raise RuntimeError(f"tcpdump did not start: {line!r}")
    return capture


async def stop_capture(capture: subprocess.Popen[bytes] | None, pcap: Path) -> None:
    """Stop tcpdump once it has written what it captured: an interrupt drops what it
    has not read yet, so wait (up to 10 s) for the file to stop growing."""
    if capture is None:
        return
    size, deadline = -1, time.monotonic() + 10
    while time.monotonic() < deadline:
        now = pcap.stat().st_size if pcap.exists() else 0
        if now == size:
            break
        size = now
        await asyncio.sleep(0.3)
    capture.send_signal(signal.SIGINT)
    capture.wait(10)


async def flight_then_bulk(port: int, want: int) -> tuple[int, int]:
    """A fake-TLS client through to the bulk source: (its port, the flight's length)."""
    stream = await open_faketls("127.0.0.1", port, SECRET, DOMAIN, TAG_PADDED, 3)
    assert stream.handshake is not None
    local = stream.writer.get_extra_info("sockname")[1]
    async with stream:
        stream.write(b"\x02")
        await stream.drain()
        got = 0
        async with asyncio.timeout(20):
            while got < want:
                chunk = await stream.read(1 << 16)
                if not chunk:
                    break
                got += len(chunk)
    return local, len(stream.handshake.response)


def segment_sizes(
    segments: list[tuple[float, int, int, int, int, int]], server: int, client: int, flight: int
) -> dict[str, list[int]]:
    """Sizes of the server's data segments carrying the flight (its first ``flight``
    bytes) and of those after it, from the capture."""
    isn = next(seq for _, sp, dp, seq, flags, _ in segments
               if (sp, dp) == (server, client) and flags & 0x02)  # fmt: skip
    sizes: dict[str, list[int]] = {"flight": [], "after": []}
    seen: set[int] = set()
    for _, sp, dp, seq, _, size in segments:
        offset = (seq - isn - 1) % 2**32
        if (sp, dp) != (server, client) or not size or offset in seen:
            continue  # not the server's data, or a retransmission
        seen.add(offset)
        sizes["flight" if offset < flight else "after"].append(size)
    return sizes


async def run_timers(workdir: Path, listen: float, timers: dict[str, int] | None) -> dict[str, Any]:
    """When each side ends an undecided or idle connection, and which side sends
    keep-alives; and the segments of the fake ServerHello with --server-hello-segment
    (a tcpdump capture of the namespace's loopback)."""
    bring_loopback_up(whole_segments=True)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    conf = nginx_config(workdir, timers)
    env = dict(os.environ, PYTHONPATH=str(PROXY_SRC))
    pcap = workdir / "lo.pcap"
    hello = build_client_hello(SECRET, DOMAIN)
    probes = {
        "nothing": lambda port: timed(port, b"", listen),
        "one_byte_0x16": lambda port: timed(port, b"\x16", listen),
        "half_hello": lambda port: timed(port, hello[:100], listen),
        # One byte, and a FIN after the mirror's moment: the site closes at once.
        "fin_after_1s": lambda port: timed(port, b"\x16", listen, fin_after=1.0),
        # After the site's close, one more byte: the site's closed socket resets.
        "byte_after_close": lambda port: timed(port, b"\x16", listen, poke=True),
        "tls_idle": lambda port: tls_then_idle(port, listen, request=False),
        "tls_request_idle": lambda port: tls_then_idle(port, listen, request=True),
    }
    segmented = ("--server-hello-segment", str(SEGMENT))
    async with (
        FakeDC(TelethonAuthResponder()) as dc,
        FakeDC(source_handler) as source,
        process([nginx, "-c", str(conf), "-p", str(workdir)], workdir / "nginx.log"),
        process(proxy_cmd(workdir, dc.port, "--keepalive", str(KEEPALIVE),
                          source_port=source.port),
                workdir / "proxy.log", env=env),
        process(proxy_cmd(workdir, dc.port, *segmented, port=SEGMENTED_PORT,
                          source_port=source.port),
                workdir / "proxy-segmented.log", env=env) as segmented_proxy,
    ):  # fmt: skip
        await wait_port(NGINX_PORT)
        await wait_port(PROXY_PORT)
        # An older proxy (MTPROXY_LAB_SRC) may not know the option: then no segments.
        ports = [PROXY_PORT]
        if await wait_port(SEGMENTED_PORT, proc=segmented_proxy):
            ports.append(SEGMENTED_PORT)
        capture = await start_capture(pcap)
        try:
            jobs = [(name, side, port) for name in probes
                    for side, port in (("site", NGINX_PORT), ("proxy", PROXY_PORT))]  # fmt: skip
            done = await asyncio.gather(
                *(probes[name](port) for name, _, port in jobs),
                fake_tls_idle(PROXY_PORT, min(listen, 4 * KEEPALIVE + 0.5)),
            )
            flights = {port: await flight_then_bulk(port, BULK) for port in ports}
            await asyncio.sleep(0.2)
        finally:
            await stop_capture(capture, pcap)
    raw = pcap.read_bytes() if capture is not None else b""
    segments = tcp_segments(raw)

    def probes_at(port: int, client: int) -> list[float] | None:
        first = next((t for t, sp, dp, *_ in segments if dp == port and sp == client), None)
        if first is None:
            return None
        return [round(t - first, 2) for t in keepalives(segments, port, client)]

    rows: dict[str, Any] = {}
    for (name, side, port), (client, seen) in zip(jobs, done, strict=False):
        rows.setdefault(name, {})[side] = {
            "close": seen.close, "closed": seen.closed, "idle_from": seen.ttfb,
            "bytes": len(seen.data) // 2, "keepalives_at": probes_at(port, client),
            "after": seen.after,
        }  # fmt: skip
    client, _ = done[-1]
    rows["fake_tls_session"] = {"proxy": {"keepalives_at": probes_at(PROXY_PORT, client)}}
    shapes: dict[str, Any] = {}
    for name, port in (("default", PROXY_PORT), ("segmented", SEGMENTED_PORT)):
        if port not in flights:
            continue
        client, flight = flights[port]
        shapes[name] = {
            "flight_bytes": flight, "syn_ack_mss": syn_ack_mss(raw, port, client),
            **(segment_sizes(segments, port, client, flight) if segments else {}),
        }  # fmt: skip
    return {"listen": listen, "nginx_timers": timers, "proxy_keepalive": KEEPALIVE,
            "tcpdump": capture is not None, "rows": rows, "server_hello_segments": shapes,
            "segment": SEGMENT}  # fmt: skip


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    workdir = Path(args[0] if args else "/tmp/mtproxy-lab")
    workdir.mkdir(parents=True, exist_ok=True)
    if "--timers" in sys.argv:
        default = "--default-timers" in sys.argv
        listen = next((float(a[9:]) for a in sys.argv if a.startswith("--listen=")), None)
        listen = listen or (90.0 if default else 12.0)
        result = asyncio.run(run_timers(workdir, listen, None if default else SHORT_TIMERS))
        print(json.dumps(result, indent=1))
    else:
        print(json.dumps(asyncio.run(run(workdir))))


if __name__ == "__main__":
    main()
