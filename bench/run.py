"""The performance table: proxy CPU per byte against the AES floor, latency, handshakes, RSS.

Direct mode runs against a fake DC (bench/dc_server.py); middle-proxy mode against a
fake middle-proxy (bench/me_server.py), and the two are compared per proxy CPU-second
and per idle client.

Run with ``make bench`` (or ``python bench/run.py --help``). It starts the fake DC
and the proxies as separate processes and reads the proxies' CPU time from /proc,
so the load generator's own work never counts. Absolute numbers vary from machine
to machine; the ratios against the AES floor, measured in the same run, are what
to compare.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from mtproxy.protocol import faketls  # noqa: E402
from mtproxy.protocol.framing import Framing  # noqa: E402
from mtproxy.protocol.obfuscated2 import build_client_header, build_dc_header  # noqa: E402

SECRET = bytes.fromhex("0123456789abcdef0123456789abcdef")
DOMAIN = "bench.example.com"
CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
DC_ECHO, DC_SOURCE, DC_SINK, DC_IDLE = 1, 2, 3, 4
#: Middle-proxy mode: the proxy secret shared with bench/me_server.py, an ad tag, and the
#: packet kinds the fake middle-proxy understands (see its docstring).
ME_SECRET = bytes.fromhex("c4f9faca") + bytes(range(124))
AD_TAG = "0123456789abcdef0123456789abcdef"
ME_ECHO, ME_SOURCE, ME_SINK, ME_END = b"BENCHECH", b"BENCHSRC", b"BENCHSNK", b"BENCHEND"
ME_CHUNK = 128 * 1024
ME_PART, ME_WINDOW = 1 << 20, 4
MIB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """CPU time of the process, all its threads: from schedstat (nanoseconds) where the
    kernel has it, else from stat (clock ticks, 10 ms: too coarse for short runs)."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK


def ratio(value: float, floor: float) -> str:
    """``value`` over ``floor`` as ``1.23x``, or ``n/a`` when the floor measured 0."""
    return f"{value / floor:.2f}x" if floor > 0 else "n/a"


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


@contextmanager
def process(args: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port, proc)
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``grace`` seconds."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


EVENT_LOOP = "auto"


def proxy_command(port: int, dc_port: int, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "mtproxy", "run", "--listen", f"127.0.0.1:{port}",
           "--event-loop", EVENT_LOOP,
           "--secret", SECRET.hex(), "--tls-domain", DOMAIN, "--mask", "off",
           "--modes", "classic,secure,tls",
           "--public-host", "127.0.0.1", "--log-level", "warning", "--idle-timeout", "3600",
           "--stats", "off"]
    for dc in (DC_ECHO, DC_SOURCE, DC_SINK, DC_IDLE):
        cmd += ["--dc", f"{dc}=127.0.0.1:{dc_port}"]
    return cmd + extra


# -- client side ---------------------------------------------------------------------------


class Client:
    """A blocking client that does the handshake and then moves raw bytes."""

    def __init__(
        self, port: int, dc_id: int, tls: bool, direct: bool = False, secret: bytes = SECRET
    ) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.tls = tls
        if direct:
            header = build_dc_header(Framing.INTERMEDIATE, dc_id).header
        else:
            header = build_client_header(secret, Framing.INTERMEDIATE, dc_id).header
        if tls:
            hello = faketls.build_client_hello(secret, DOMAIN, int(time.time()))
            self.sock.sendall(hello)
            self._read_server_hello()
            self.sock.sendall(faketls.CCS_RECORD + faketls.wrap_records(header))
        else:
            self.sock.sendall(header)

    def _read_server_hello(self) -> None:
        head = self._exact(5)
        self._exact(int.from_bytes(head[3:5], "big"))
        self._exact(6)
        head = self._exact(5)
        self._exact(int.from_bytes(head[3:5], "big"))

    def _exact(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("closed")
            out += chunk
        return bytes(out)

    def send(self, data: bytes) -> None:
        self.sock.sendall(faketls.wrap_records(data) if self.tls else data)

    def recv_some(self, n: int) -> int:
        """Read at least ``n`` payload bytes (record headers are skipped by length)."""
        need = faketls.wrapped_size(n) if self.tls else n
        got = 0
        while got < need:
            chunk = self.sock.recv(need - got)
            if not chunk:
                raise ConnectionError("closed")
            got += len(chunk)
        return got

    def drain(self, buf: memoryview) -> int:
        total = 0
        while True:
            n = self.sock.recv_into(buf)
            if not n:
                return total
            total += n

    def close(self) -> None:
        self.sock.close()


class MiddleClient(Client):
    """A client whose packets the proxy can parse: encrypted, intermediate framing."""

    def __init__(self, port: int, tls: bool) -> None:
        hs = build_client_header(SECRET, Framing.INTERMEDIATE, 2)
        self.encryptor = hs.encryptor
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.tls = tls
        if tls:
            self.sock.sendall(faketls.build_client_hello(SECRET, DOMAIN, int(time.time())))
            self._read_server_hello()
            self.sock.sendall(faketls.CCS_RECORD + faketls.wrap_records(hs.header))
        else:
            self.sock.sendall(hs.header)

    def send_packets(self, payload: bytes, count: int = 1) -> None:
        framed = (struct.pack("<I", len(payload)) + payload) * count
        self.send(self.encryptor.update(framed))


def me_packet(kind: bytes, size: int = 64, arg: int = 0, last: bool = False) -> bytes:
    return kind + struct.pack("<QI", arg, last) + bytes(size - 20)


def middle_files(directory: Path, me_port: int) -> tuple[Path, Path]:
    config = directory / "proxy-multi.conf"
    config.write_text("default 2;\n" + "".join(
        f"proxy_for {dc} 127.0.0.1:{me_port};\n" for dc in (1, -1, 2, -2, 3, 4, 5)
    ))
    secret = directory / "proxy-secret"
    secret.write_bytes(ME_SECRET)
    return config, secret


def middle_command(port: int, config: Path, secret: Path, data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "mtproxy", "run", "--listen", f"127.0.0.1:{port}",
            "--event-loop", EVENT_LOOP,
            "--secret", SECRET.hex(), "--tls-domain", DOMAIN, "--mask", "off",
            "--modes", "classic,secure,tls",
            "--public-host", "127.0.0.1", "--log-level", "warning", "--idle-timeout", "3600",
            "--tag", AD_TAG, "--proxy-config", str(config), "--proxy-secret", str(secret),
            "--data-dir", str(data_dir), "--middle-min-connections", "2",
            "--middle-max-connections", "4"]


def middle_download(pid: int, port: int, total: int, tls: bool) -> float:
    """Fetch ``total`` bytes as 1 MiB parts with 4 requests in flight, as apps fetch files."""
    buf = memoryview(bytearray(1 << 20))
    parts = max(1, total // ME_PART)
    before = cpu_seconds(pid)
    client = MiddleClient(port, tls)
    requested = received = 0
    while True:
        # Wire bytes over-count the payload a little, so at most WINDOW parts are unread.
        while requested < parts and received >= (requested - ME_WINDOW + 1) * ME_PART:
            requested += 1
            client.send_packets(me_packet(ME_SOURCE, arg=ME_PART, last=requested == parts))
        n = client.sock.recv_into(buf)
        if not n:
            break  # the middle-proxy closes the client after the last part
        received += n
    client.close()
    if received < parts * ME_PART:
        raise RuntimeError(f"middle-proxy download short: {received} of {parts * ME_PART}")
    return cpu_seconds(pid) - before


def middle_upload(pid: int, port: int, total: int, tls: bool) -> float:
    payload = me_packet(ME_SINK, ME_CHUNK)
    before = cpu_seconds(pid)
    client = MiddleClient(port, tls)
    sent = 0
    while sent < total:
        client.send_packets(payload, 2)
        sent += 2 * ME_CHUNK
    client.send_packets(me_packet(ME_END))
    client.recv_some(12)  # the count, once everything went through
    client.close()
    return cpu_seconds(pid) - before


def middle_echo(port: int, count: int, pid: int) -> tuple[float, float, float]:
    client = MiddleClient(port, tls=False)
    samples: list[float] = []
    for _ in range(50):  # warm-up
        client.send_packets(me_packet(ME_ECHO))
        client.recv_some(68)
    before = cpu_seconds(pid)
    for _ in range(count):
        t0 = time.perf_counter()
        client.send_packets(me_packet(ME_ECHO))
        client.recv_some(68)
        samples.append((time.perf_counter() - t0) * 1e6)
    cpu = cpu_seconds(pid) - before
    client.close()
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)], cpu / count * 1e6


def middle_idle_rss(pid: int, port: int, count: int) -> float:
    """RSS growth per established idle client multiplexed over the pool, in bytes."""
    before = rss_bytes(pid)
    clients = []
    try:
        for _ in range(count):
            client = MiddleClient(port, tls=False)
            client.send_packets(me_packet(ME_ECHO))
            clients.append(client)
        for client in clients:
            client.recv_some(68)
        time.sleep(0.5)
        return (rss_bytes(pid) - before) / count
    finally:
        for client in clients:
            client.close()


# -- measurements --------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    value: str
    target: str = ""
    ok: bool | None = None


def aes_floor(total: int, chunk: int) -> float:
    """CPU seconds for two AES-256-CTR passes over ``total`` bytes (the unavoidable work)."""
    buf = bytearray(chunk)
    view = memoryview(buf)
    start = time.process_time()
    for _ in range(2):
        ctx = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
        done = 0
        while done < total:
            m = min(chunk, total - done)
            ctx.update_into(view[:m], view[:m])
            done += m
    return time.process_time() - start


def middle_floor(total: int, chunk: int, upload: bool) -> float:
    """CPU seconds for the crypto middle-proxy mode cannot avoid: AES-256-CTR with the
    client plus AES-256-CBC with the middle-proxy (CBC encryption is serial, hence slow)."""
    buf = bytes(chunk)
    ctr = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
    cbc_cipher = Cipher(algorithms.AES(os.urandom(32)), modes.CBC(os.urandom(16)))
    cbc = cbc_cipher.encryptor() if upload else cbc_cipher.decryptor()
    start = time.process_time()
    done = 0
    while done < total:
        ctr.update(buf)
        cbc.update(buf)
        done += chunk
    return time.process_time() - start


def bulk_download(proxy_pid: int, port: int, total: int, tls: bool) -> float:
    buf = memoryview(bytearray(1 << 20))
    before = cpu_seconds(proxy_pid)
    client = Client(port, DC_SOURCE, tls)
    got = client.drain(buf)
    client.close()
    expected = faketls.wrapped_size(total) if tls else total
    if got < expected:
        raise RuntimeError(f"download short: {got} of {expected}")
    return cpu_seconds(proxy_pid) - before


def bulk_upload(proxy_pid: int, port: int, total: int, tls: bool) -> float:
    block = bytes(256 * 1024) if not tls else faketls.wrap_records(bytes(256 * 1024))
    payload_per_block = 256 * 1024
    before = cpu_seconds(proxy_pid)
    client = Client(port, DC_SINK, tls)
    sent = 0
    while sent < total:
        client.sock.sendall(block)
        sent += payload_per_block
    client.sock.shutdown(socket.SHUT_WR)
    buf = memoryview(bytearray(64))
    client.drain(buf)
    client.close()
    return cpu_seconds(proxy_pid) - before


def echo_latency(
    port: int, count: int, direct: bool, pid: int | None
) -> tuple[float, float, float]:
    """p50 and p99 round trip in microseconds, and proxy CPU per round trip."""
    client = Client(port, DC_ECHO, tls=False, direct=direct)
    packet = struct.pack("<I", 60) + os.urandom(60)
    samples: list[float] = []
    for _ in range(50):  # warm-up
        client.send(packet)
        client.recv_some(len(packet))
    before = cpu_seconds(pid) if pid else 0.0
    for _ in range(count):
        t0 = time.perf_counter()
        client.send(packet)
        client.recv_some(len(packet))
        samples.append((time.perf_counter() - t0) * 1e6)
    cpu = (cpu_seconds(pid) - before) if pid else 0.0
    client.close()
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)], cpu / count * 1e6


async def _handshake_worker(port: int, count: int, tls: bool, direct: bool) -> None:
    import asyncio

    packet = struct.pack("<I", 4) + b"ping"
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if direct:
            header = build_dc_header(Framing.INTERMEDIATE, DC_ECHO).header
        else:
            header = build_client_header(SECRET, Framing.INTERMEDIATE, DC_ECHO).header
        if tls:
            writer.write(faketls.build_client_hello(SECRET, DOMAIN, int(time.time())))
            for _record in range(3):
                head = await reader.readexactly(5)
                await reader.readexactly(int.from_bytes(head[3:5], "big"))
            writer.write(faketls.CCS_RECORD + faketls.wrap_records(header + packet))
            await reader.readexactly(faketls.wrapped_size(len(packet)))
        else:
            writer.write(header + packet)
            await reader.readexactly(len(packet))
        writer.close()
        await writer.wait_closed()


def handshakes(
    pid: int, port: int, count: int, tls: bool, parallel: int, direct: bool = False
) -> tuple[float, float]:
    """Handshakes per second with ``parallel`` clients, and proxy CPU per handshake.

    Each handshake is a full session: connect, handshake, the proxy's DC connect,
    one echoed packet, close.
    """
    import asyncio

    async def main() -> None:
        per = count // parallel
        await asyncio.gather(
            *(_handshake_worker(port, per, tls, direct) for _ in range(parallel))
        )

    before = cpu_seconds(pid)
    t0 = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - t0
    done = count // parallel * parallel
    return done / wall, (cpu_seconds(pid) - before) / done * 1e6


def idle_rss(pid: int, port: int, count: int) -> float:
    """RSS growth per established idle session (client + DC socket), in bytes."""
    before = rss_bytes(pid)
    packet = struct.pack("<I", 4) + b"ping"
    clients = []
    try:
        for _ in range(count):
            client = Client(port, DC_ECHO, tls=False)
            client.send(packet)
            clients.append(client)
        for client in clients:
            client.recv_some(len(packet))
        time.sleep(0.5)
        return (rss_bytes(pid) - before) / count
    finally:
        for client in clients:
            client.close()


# -- table ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bytes", type=int, default=1 << 30, help="bytes per bulk transfer")
    parser.add_argument("--echo-count", type=int, default=5000)
    parser.add_argument("--handshake-count", type=int, default=4000)
    parser.add_argument("--parallel", type=int, default=16, help="concurrent handshake clients")
    parser.add_argument("--idle", default="1000,5000", help="idle session counts for RSS")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--skip-middle", action="store_true",
                        help="leave out the middle-proxy scenarios")
    parser.add_argument("--event-loop", default="auto", choices=["auto", "uvloop", "asyncio"],
                        help="the proxies' event loop (the container image has no uvloop)")
    args = parser.parse_args()
    global EVENT_LOOP
    EVENT_LOOP = args.event_loop
    if args.quick:
        args.bytes, args.echo_count, args.handshake_count, args.idle = 64 << 20, 500, 160, "200"
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    total = args.bytes
    gib = total / (1 << 30)
    dc_port, p_plain, p_pass, p_bare = free_port(), free_port(), free_port(), free_port()
    rows: list[Row] = []
    direct_cpu: dict[tuple[str, bool], float] = {}
    direct_rss: dict[int, float] = {}
    dc_cmd = [sys.executable, str(ROOT / "bench" / "dc_server.py"), "--port", str(dc_port),
              "--source-bytes", str(total)]
    bare_cmd = [sys.executable, str(ROOT / "bench" / "bare_relay.py"), "--port", str(p_bare),
                 "--dc-port", str(dc_port)]
    with process(dc_cmd, dc_port), \
            process(proxy_command(p_plain, dc_port, []), p_plain) as plain, \
            process(proxy_command(p_pass, dc_port, ["--download-passthrough"]), p_pass) as pt, \
            process(bare_cmd, p_bare) as bare:
        floor = aes_floor(total, 128 * 1024)
        rows.append(Row("AES floor: 2 x AES-256-CTR, CPU s/GiB", f"{floor / gib:.3f}"))

        def ratio_row(name: str, seconds: float, target: float) -> float:
            ratio = seconds / floor
            rows.append(Row(name, f"{seconds / gib:.3f} s/GiB = {ratio:.2f}x floor",
                            f"<= {target:g}x", ratio <= target))
            return seconds

        ratio_row("download, pass-through, classic", bulk_download(pt.pid, p_pass, total, False), 3)
        direct_cpu[("download", False)] = ratio_row(
            "download, re-encrypting, classic", bulk_download(plain.pid, p_plain, total, False), 4)
        direct_cpu[("upload", False)] = ratio_row(
            "upload, classic", bulk_upload(plain.pid, p_plain, total, False), 4)
        ratio_row("download, pass-through, fake TLS", bulk_download(pt.pid, p_pass, total, True), 3)
        direct_cpu[("download", True)] = ratio_row(
            "download, re-encrypting, fake TLS", bulk_download(plain.pid, p_plain, total, True), 4)
        direct_cpu[("upload", True)] = ratio_row(
            "upload, fake TLS", bulk_upload(plain.pid, p_plain, total, True), 4)

        base50, base99, _ = echo_latency(dc_port, args.echo_count, True, None)
        bare50, bare99, bare_cpu = echo_latency(p_bare, args.echo_count, True, bare.pid)
        p50, p99, cpu = echo_latency(p_plain, args.echo_count, False, plain.pid)
        rows.append(Row("echo RTT without proxy p50 / p99", f"{base50:.0f} / {base99:.0f} us"))
        rows.append(Row("echo RTT through proxy p50 / p99", f"{p50:.0f} / {p99:.0f} us"))
        rows.append(Row("added latency p50 / p99", f"{p50 - base50:.0f} / {p99 - base99:.0f} us"))
        rows.append(Row("added latency, bare uvloop relay p50 / p99",
                        f"{bare50 - base50:.0f} / {bare99 - base99:.0f} us"))
        rows.append(Row("CPU per echoed packet: bare uvloop relay (floor)", f"{bare_cpu:.1f} us"))
        rows.append(Row("CPU per echoed packet: proxy",
                        f"{cpu:.1f} us = {ratio(cpu, bare_cpu)} floor", "<= 25 us", cpu <= 25))

        par = args.parallel
        rate, bare_hs = handshakes(bare.pid, p_bare, args.handshake_count, False, par, True)
        rows.append(Row(f"sessions/s, bare uvloop relay ({par} clients)", f"{rate:.0f}"))
        rows.append(Row("CPU per session: bare uvloop relay (floor)", f"{bare_hs:.0f} us"))
        for tls in (False, True):
            rate, per = handshakes(plain.pid, p_plain, args.handshake_count, tls, par)
            kind = "fake TLS" if tls else "classic"
            rows.append(Row(f"handshakes/s, {kind} ({par} clients)", f"{rate:.0f}"))
            rows.append(Row(f"CPU per handshake, {kind}",
                            f"{per:.0f} us = {ratio(per, bare_hs)} floor", "<= 250 us",
                            per <= 250))

        for count in (int(c) for c in args.idle.split(",")):
            per_conn = idle_rss(pt.pid, p_pass, count)
            rows.append(Row(f"RSS per idle session at {count} (pass-through)",
                            f"{per_conn / 1024:.1f} KiB", "<= 12 KiB", per_conn <= 12 * 1024))
            per_conn = idle_rss(plain.pid, p_plain, count)
            direct_rss[count] = per_conn
            rows.append(Row(f"RSS per idle session at {count} (re-encrypting)",
                            f"{per_conn / 1024:.1f} KiB", "<= 12 KiB", per_conn <= 12 * 1024))
    if not args.skip_middle:
        rows += middle_rows(args, total, direct_cpu, direct_rss)
    print_table(rows, total)
    return 0


def middle_rows(
    args: argparse.Namespace,
    total: int,
    direct_cpu: dict[tuple[str, bool], float],
    direct_rss: dict[int, float],
) -> list[Row]:
    """Middle-proxy mode next to direct mode: MiB moved per proxy CPU-second, RSS."""
    rows: list[Row] = []
    me_port, p_middle = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="mtproxy-bench-") as tmp:
        config, secret = middle_files(Path(tmp), me_port)
        me_cmd = [sys.executable, str(ROOT / "bench" / "me_server.py"), "--port", str(me_port),
                  "--secret-file", str(secret)]
        with process(me_cmd, me_port), \
                process(middle_command(p_middle, config, secret, Path(tmp) / "data"),
                        p_middle) as middle:
            time.sleep(0.5)  # let the pool finish its handshakes
            for kind, run in (("download", middle_download), ("upload", middle_upload)):
                floor = middle_floor(total, 128 * 1024, upload=kind == "upload")
                rows.append(Row(f"middle-proxy floor, {kind}: AES-CTR + AES-CBC, CPU s/GiB",
                                f"{floor / (total / (1 << 30)):.3f}"))
                for tls in (False, True):
                    seconds = run(middle.pid, p_middle, total, tls)
                    label = f"{kind}, {'fake TLS' if tls else 'classic'}"
                    direct = direct_cpu.get((kind, tls))
                    shown = f"middle {total / MIB / seconds:.0f}"
                    if direct:
                        shown += f" / direct {total / MIB / direct:.0f}"
                    rows.append(Row(f"MiB per proxy CPU-s, {label} (middle / direct)",
                                    f"{shown} MiB/s; middle {seconds / floor:.2f}x its floor"))
            p50, p99, cpu = middle_echo(p_middle, args.echo_count, middle.pid)
            rows.append(Row("middle-proxy echo RTT p50 / p99", f"{p50:.0f} / {p99:.0f} us"))
            rows.append(Row("middle-proxy CPU per echoed packet", f"{cpu:.1f} us"))
            for count in (int(c) for c in args.idle.split(",")):
                per_client = middle_idle_rss(middle.pid, p_middle, count)
                direct = direct_rss.get(count)
                shown = f"middle {per_client / 1024:.1f}"
                if direct is not None:
                    shown += f" / direct {direct / 1024:.1f}"
                rows.append(Row(f"RSS per idle client at {count} (middle / direct)",
                                shown + " KiB"))
    return rows


def print_table(rows: list[Row], total: int) -> None:
    width = max(len(r.name) for r in rows)
    vwidth = max(len(r.value) for r in rows)
    print(f"\nmtproxy benchmark ({total >> 20} MiB per transfer, python {sys.version.split()[0]}, "
          f"event loop {EVENT_LOOP})")
    print(f"{'measure':<{width}}  {'result':<{vwidth}}  target")
    print("-" * (width + vwidth + 20))
    for r in rows:
        mark = "" if r.ok is None else ("ok" if r.ok else "MISSED")
        print(f"{r.name:<{width}}  {r.value:<{vwidth}}  {r.target} {mark}".rstrip())

if __name__ == "__main__":
    sys.exit(main())
