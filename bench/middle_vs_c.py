"""Middle-proxy mode side by side with the official C server, and direct mode with another
Python proxy: proxy CPU per byte and per round trip, RSS per idle client.

Every proxy runs as its own process against the same fake middle-proxy
(bench/me_server.py) or fake DC; the load comes from this process over loopback, and
the proxies' CPU time (all their processes and threads) is read from /proc, so
neither the load generator nor the fakes count. Every answer is checked byte for
byte (downloads against a pattern both ends know, uploads by the CRC32 the fake
middle-proxy computes of what it got, echoes against what was sent).

Rows (as in the issue): download (64 B requests, 128 KiB answers) and upload (the
reverse), 1 and 50 clients with 4 requests in flight each; 128 B echo with 100 clients;
RSS per idle client with 1000 clients. Each figure is the median of ``--rounds``
runs, the proxies taking turns within a round, so ratios come from one run.

The other servers are optional and never part of this repository; point at local
builds of them:

- ``MTPROXY_BENCH_C`` (or ``--c-proxy``): the official server's ``mtproto-proxy``
  binary, run as ``-M 0`` (one process) on loopback;
- ``MTPROXY_BENCH_ALX`` (or ``--alx``): alexbers' ``mtprotoproxy.py``, for the direct
  mode rows. It dials Telegram's real DC addresses, so those rows run inside a private
  network namespace (``unshare -n``, root) where DC 2's address is put on loopback and
  the fake DC listens there.

Without them the bench prints our own figures and the crypto floors (CTR with the
client plus CBC with the middle-proxy; two CTR passes in direct mode).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import resource
import shlex
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from me_server import PATTERN  # noqa: E402
from run import (  # noqa: E402
    AD_TAG,
    PAGE,
    SECRET,
    aes_floor,
    free_port,
    middle_files,
    middle_floor,
    wait_port,
)

from mtproxy.protocol.framing import Framing  # noqa: E402
from mtproxy.protocol.obfuscated2 import build_client_header  # noqa: E402

DOWN, UP, ECHO = b"BENCHDWN", b"BENCHUPL", b"BENCHECH"
SMALL, BIG, WINDOW = 64, 128 * 1024, 4
ECHO_SIZE = 128
_LEN = struct.Struct("<I")
_UP_ANSWER = struct.Struct("<8sII48x")
MB = 1e6


# -- process accounting ----------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (a supervisor's workers count too)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with contextlib.suppress(OSError):
                    text = Path(f"/proc/{current}/task/{task}/children").read_text()
                    todo += [int(c) for c in text.split()]
    return out


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of the process tree (threads included), from schedstat
    (nanoseconds; clock ticks are 10 ms, coarse next to a few microseconds per echo)."""
    total = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += sum(int((task / "schedstat").read_text().split()[0])
                         for task in Path(f"/proc/{p}/task").iterdir()) / 1e9
    return total


def tree_rss(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
    return total


# -- load generator ------------------------------------------------------------------------


class LoadClient(asyncio.Protocol):
    """One app-like client: obfuscated2 + intermediate framing, requests kept in flight,
    every answer checked."""

    def __init__(self, dc: int = 2) -> None:
        hs = build_client_header(SECRET, Framing.INTERMEDIATE, dc)
        self.header = hs.header
        self.encryptor, self.decryptor = hs.encryptor, hs.decryptor
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.expect: list[bytes] = []  # per request in flight: the answer expected
        self.on_answer: Callable[[], None] = lambda: None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.tag = 0
        self.errors = 0
        self.bytes_in = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport.write(self.header)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    def send(self, packet: bytes) -> None:
        assert self.transport is not None
        self.transport.write(self.encryptor.update(_LEN.pack(len(packet)) + packet))

    def request(self, kind: bytes, size: int, answer: int) -> None:
        """Send a ``kind`` packet of ``size`` bytes expecting an ``answer``-byte reply."""
        self.tag += 1
        tag = struct.pack("<Q", self.tag)
        if kind == DOWN:
            self.send(DOWN + tag + struct.pack("<I", answer) + bytes(size - 20))
            self.expect.append(tag + PATTERN[16:answer])
        elif kind == UP:
            packet = UP + tag + UPLOAD_BODY[: size - 16]
            self.send(packet)
            self.expect.append(_UP_ANSWER.pack(tag, zlib.crc32(packet), len(packet)))
        else:
            packet = ECHO + tag + os.urandom(size - 16)
            self.send(packet)
            self.expect.append(packet)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += self.decryptor.update(data)
        pos, end = 0, len(buf)
        view = memoryview(buf)
        try:
            while end - pos >= 4:
                (size,) = _LEN.unpack_from(buf, pos)
                if end - pos - 4 < size:
                    break
                expected = self.expect.pop(0)
                if view[pos + 4 : pos + 4 + size] != expected:
                    self.errors += 1
                self.bytes_in += size
                pos += 4 + size
                self.on_answer()
        finally:
            view.release()
        del buf[:pos]


UPLOAD_BODY = random.Random(7).randbytes(BIG)


async def open_clients(port: int, count: int) -> list[LoadClient]:
    loop = asyncio.get_running_loop()
    clients: list[LoadClient] = []
    for start in range(0, count, 100):
        batch = await asyncio.gather(*(
            loop.create_connection(LoadClient, "127.0.0.1", port)
            for _ in range(min(100, count - start))
        ))
        clients += [proto for _, proto in batch]
    # One echo each: the proxy has attached every client upstream once this is back.
    await run_exchange(clients, ECHO, ECHO_SIZE, ECHO_SIZE, 1, 1)
    return clients


async def run_exchange(
    clients: list[LoadClient], kind: bytes, size: int, answer: int, count: int, window: int,
    timeout: float = 600.0,
) -> None:
    """Each client makes ``count`` requests, ``window`` in flight; wait for all answers."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    left = [len(clients)]

    def start(client: LoadClient) -> None:
        state = {"sent": 0, "got": 0}

        def on_answer() -> None:
            state["got"] += 1
            if state["sent"] < count:
                state["sent"] += 1
                client.request(kind, size, answer)
            if state["got"] == count:
                client.on_answer = lambda: None
                left[0] -= 1
                if not left[0] and not done.done():
                    done.set_result(None)

        client.on_answer = on_answer
        for _ in range(min(window, count)):
            state["sent"] += 1
            client.request(kind, size, answer)

    for client in clients:
        start(client)
    lost = [c.lost for c in clients]
    finished, _ = await asyncio.wait(
        [done, *lost], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
    )
    if done not in finished:
        raise RuntimeError("a client was disconnected or the exchange timed out")
    errors = sum(c.errors for c in clients)
    if errors:
        raise RuntimeError(f"{errors} answers did not match what was expected")


def close_clients(clients: list[LoadClient]) -> None:
    for client in clients:
        if client.transport is not None:
            client.transport.close()


# -- proxies ----------------------------------------------------------------------------------


@dataclass
class Proxy:
    name: str
    command: list[str]
    port: int
    cwd: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    results: dict[str, list[float]] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


@contextlib.contextmanager
def started(proxies: list[Proxy], log_dir: Path) -> Iterator[None]:
    try:
        for proxy in proxies:
            log = open(log_dir / f"{proxy.name.replace(' ', '_')}.log", "wb")  # noqa: SIM115
            proxy.proc = subprocess.Popen(
                proxy.command, stdout=log, stderr=subprocess.STDOUT, cwd=proxy.cwd
            )
            log.close()
        for proxy in proxies:
            assert proxy.proc is not None
            wait_port(proxy.port, proxy.proc, 30.0)
        yield
    finally:
        for proxy in proxies:
            if proxy.proc is not None and proxy.proc.poll() is None:
                proxy.proc.terminate()
        for proxy in proxies:
            if proxy.proc is not None:
                try:
                    proxy.proc.wait(10)
                except subprocess.TimeoutExpired:
                    proxy.proc.kill()
                    proxy.proc.wait()


def ours(name: str, loop: str, port: int, config: Path, secret: Path, data: Path) -> Proxy:
    return Proxy(name, [
        sys.executable, "-m", "mtproxy", "run", "--listen", f"127.0.0.1:{port}",
        "--event-loop", loop, "--secret", SECRET.hex(), "--mask", "off", "--modes",
        "classic,secure,tls", "--public-host", "127.0.0.1", "--log-level", "warning",
        "--idle-timeout", "3600", "--stats", "off", "--tag", AD_TAG,
        "--proxy-config", str(config), "--proxy-secret", str(secret),
        "--data-dir", str(data), "--max-connections", "0",
    ], port)


def official(binary: str, port: int, config: Path, secret: Path) -> Proxy:
    return Proxy("official C", [
        binary, "-u", "nobody", "-p", str(free_port()), "-H", str(port), "-S", SECRET.hex(),
        "-P", AD_TAG, "--aes-pwd", str(secret), "-M", "0", "-c", "16000",
        "--address", "127.0.0.1", str(config),
    ], port)


# -- the measurements ------------------------------------------------------------------------


@dataclass
class Case:
    key: str
    label: str
    clients: int
    kind: bytes
    size: int
    answer: int
    unit: str  # "MB/cpu-s" or "us/rt"


def cases() -> list[Case]:
    return [
        Case("down1", "download, 1 client, MB per proxy CPU-s", 1, DOWN, SMALL, BIG, "rate"),
        Case("down50", "download, 50 clients, MB per proxy CPU-s", 50, DOWN, SMALL, BIG, "rate"),
        Case("up1", "upload, 1 client, MB per proxy CPU-s", 1, UP, BIG, SMALL, "rate"),
        Case("up50", "upload, 50 clients, MB per proxy CPU-s", 50, UP, BIG, SMALL, "rate"),
        Case("echo100", "128 B echo, 100 clients, CPU us per round trip", 100, ECHO,
             ECHO_SIZE, ECHO_SIZE, "cost"),
    ]


async def measure(proxy: Proxy, case: Case, total: int, echoes: int) -> float:
    clients = await open_clients(proxy.port, case.clients)
    try:
        if case.unit == "rate":
            per_client = max(WINDOW, total // BIG // case.clients)
            before = tree_cpu(proxy.pid)
            await run_exchange(clients, case.kind, case.size, case.answer, per_client, WINDOW)
            cpu = tree_cpu(proxy.pid) - before
            moved = per_client * case.clients * BIG
            return moved / MB / max(cpu, 1e-6)
        per_client = max(1, echoes // case.clients)
        before = tree_cpu(proxy.pid)
        await run_exchange(clients, case.kind, case.size, case.answer, per_client, 1)
        cpu = tree_cpu(proxy.pid) - before
        return cpu / (per_client * case.clients) * 1e6
    finally:
        close_clients(clients)
        await asyncio.sleep(0.2)


async def idle_rss(proxy: Proxy, count: int) -> float:
    await asyncio.sleep(0.5)
    before = tree_rss(proxy.pid)
    clients = await open_clients(proxy.port, count)
    try:
        await asyncio.sleep(1.0)
        return (tree_rss(proxy.pid) - before) / count / 1024
    finally:
        close_clients(clients)
        await asyncio.sleep(0.5)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(title: str, proxies: list[Proxy], rows: list[tuple[str, str, bool]],
          reference: Proxy | None) -> None:
    """``rows``: (key, label, lower_is_better)."""
    print(f"\n{title}")
    names = [p.name for p in proxies]
    width = max(len(label) for _, label, _ in rows)
    head = f"{'figure':<{width}}  " + "  ".join(f"{n:>22}" for n in names)
    print(head)
    print("-" * len(head))
    for key, label, lower in rows:
        cells = []
        ref = median(reference.results.get(key, [])) if reference is not None else None
        for proxy in proxies:
            value = median(proxy.results.get(key, []))
            cell = f"{value:.2f}" if value < 100 else f"{value:.0f}"
            if ref and proxy is not reference and value == value:
                ratio = value / ref
                cell += f" ({ratio:.2f}x{' cost' if lower else ''})"
            cells.append(f"{cell:>22}")
        print(f"{label:<{width}}  " + "  ".join(cells))


def floors(total: int) -> None:
    gib = total / (1 << 30)
    down = middle_floor(total, BIG, upload=False)
    up = middle_floor(total, BIG, upload=True)
    ctr2 = aes_floor(total, BIG)
    print("\ncrypto floors in this run (this machine, cryptography's libcrypto):")
    print(f"  middle download, AES-CTR + AES-CBC decrypt: {total / MB / down:.0f} MB per CPU-s "
          f"({down / gib:.3f} s/GiB)")
    print(f"  middle upload, AES-CTR + AES-CBC encrypt:   {total / MB / up:.0f} MB per CPU-s "
          f"({up / gib:.3f} s/GiB)")
    print(f"  direct, 2 x AES-CTR:                         {total / MB / ctr2:.0f} MB per CPU-s "
          f"({ctr2 / gib:.3f} s/GiB)")


async def middle_bench(args: argparse.Namespace) -> None:
    me_port = free_port()
    with tempfile.TemporaryDirectory(prefix="mtproxy-vs-c-") as tmp_name:
        tmp = Path(tmp_name)
        config, secret = middle_files(tmp, me_port)
        proxies: list[Proxy] = []
        if args.c_proxy:
            proxies.append(official(args.c_proxy, free_port(), config, secret))
        for loop in args.loops.split(","):
            proxies.append(ours(f"ours ({loop})", loop, free_port(), config, secret,
                                tmp / f"data-{loop}"))
        me = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "me_server.py"), "--port", str(me_port),
             "--secret-file", str(secret)], stdout=subprocess.DEVNULL,
        )
        try:
            wait_port(me_port, me)
            with started(proxies, tmp):
                await asyncio.sleep(2.0)  # the RPC connections' handshakes
                selected = [c for c in cases() if c.key in args.rows.split(",")]
                for rnd in range(args.rounds):
                    for case in selected:
                        order = proxies if rnd % 2 == 0 else proxies[::-1]
                        for proxy in order:
                            value = await measure(proxy, case, args.bytes, args.echoes)
                            proxy.results.setdefault(case.key, []).append(value)
                    print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)
                if "idle" in args.rows.split(","):
                    for proxy in proxies:
                        proxy.results["idle"] = [await idle_rss(proxy, args.idle)]
        finally:
            me.terminate()
            me.wait()
    rows = [(c.key, c.label, c.unit == "cost") for c in cases()]
    rows.append(("idle", f"{args.idle} idle clients, RSS KB per client", True))
    reference = proxies[0] if args.c_proxy else None
    table(f"middle-proxy mode, median of {args.rounds} alternating runs "
          f"({args.bytes >> 20} MiB per bulk run; ratio to the official C server)",
          proxies, rows, reference)


# -- direct mode against alexbers/mtprotoproxy ----------------------------------------------

DC2_V4, DC3_V4 = "149.154.167.51", "149.154.175.100"


async def direct_bench(args: argparse.Namespace) -> None:
    """Ours and alexbers' proxy, direct mode, against bench/dc_server.py on DC 2's address."""
    with tempfile.TemporaryDirectory(prefix="mtproxy-vs-alx-") as tmp_name:
        tmp = Path(tmp_name)
        proxies: list[Proxy] = []
        if args.alx:
            port = free_port()
            conf = tmp / "config.py"
            conf.write_text(
                f"PORT = {port}\nUSERS = {{'bench': '{SECRET.hex()}'}}\n"
                "MODES = {'classic': True, 'secure': True, 'tls': False}\n"
                "LISTEN_ADDR_IPV4 = '127.0.0.1'\nLISTEN_ADDR_IPV6 = None\n"
                # FAST_MODE (its download pass-through) off: both proxies re-encrypt.
                "PREFER_IPV6 = False\nMASK = False\nFAST_MODE = False\n"
                "STATS_PRINT_PERIOD = 86400\nMETRICS_PORT = None\n"
            )
            proxies.append(Proxy("alexbers (uvloop)", [sys.executable, args.alx, str(conf)],
                                 port, cwd=str(Path(args.alx).parent)))
        for loop in args.loops.split(","):
            port = free_port()
            proxies.append(Proxy(f"ours ({loop})", [
                sys.executable, "-m", "mtproxy", "run", "--listen", f"127.0.0.1:{port}",
                "--event-loop", loop, "--secret", SECRET.hex(), "--mask", "off",
                "--modes", "classic,secure",
                "--public-host", "127.0.0.1", "--log-level", "warning", "--idle-timeout",
                "3600", "--stats", "off", "--data-dir", str(tmp / f"data-{loop}"),
                "--dc", f"2={DC2_V4}:443", "--dc", f"3={DC3_V4}:443",
            ], port))
        # alexbers' proxy does not tell the DC its id: one fake per address instead.
        fakes = [
            subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "dc_server.py"), "--host", host,
                 "--port", "443", "--source-bytes", str(args.bytes), "--force-mode", mode],
                stdout=subprocess.DEVNULL,
            )
            for host, mode in ((DC2_V4, "2"), (DC3_V4, "3"))
        ]
        try:
            time.sleep(1.0)
            with started(proxies, tmp):
                await asyncio.sleep(1.0)
                for rnd in range(args.rounds):
                    order = proxies if rnd % 2 == 0 else proxies[::-1]
                    for kind in ("download", "upload"):
                        for proxy in order:
                            # A proxy that refuses the client keeps the socket open
                            # (as a site would): fail instead of waiting for ever.
                            value = await asyncio.wait_for(
                                direct_transfer(proxy, kind, args.bytes), TRANSFER_TIMEOUT
                            )
                            proxy.results.setdefault(kind, []).append(value)
                    print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)
        finally:
            for fake in fakes:
                fake.terminate()
                fake.wait()
    reference = proxies[0] if args.alx else None
    against = "; ratio to alexbers/mtprotoproxy" if args.alx else ""
    table(f"direct mode, median of {args.rounds} alternating runs ({args.bytes >> 20} MiB per "
          f"run, 1 client{against})", proxies,
          [("download", "download, MB per proxy CPU-s", False),
           ("upload", "upload, MB per proxy CPU-s", False)], reference)


#: Seconds one direct-mode transfer may take before the run is called broken.
TRANSFER_TIMEOUT = 300.0


async def direct_transfer(proxy: Proxy, kind: str, total: int) -> float:
    """One client through ``proxy`` to the fake DC (2: source, 3: sink); MB per CPU-s."""
    # The fake DC's behaviour follows the DC id (2 source, 3 sink); both DCs' addresses
    # lead to it in the namespace.
    hs = build_client_header(SECRET, Framing.INTERMEDIATE, 2 if kind == "download" else 3)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port, limit=1 << 20)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    writer.write(hs.header)
    before = tree_cpu(proxy.pid)
    if kind == "download":
        got = 0
        while True:
            chunk = await reader.read(1 << 20)
            if not chunk:
                break
            hs.decryptor.update(chunk)
            got += len(chunk)
        if got != total:
            raise RuntimeError(f"{proxy.name}: download short: {got} of {total}")
    else:
        block = bytes(256 * 1024)
        sent = 0
        while sent < total:
            writer.write(hs.encryptor.update(block))
            await writer.drain()
            sent += len(block)
        count = hs.decryptor.update(await reader.readexactly(8))
        if struct.unpack("<Q", count)[0] != total:
            raise RuntimeError(f"{proxy.name}: upload count {count!r}, sent {total}")
    cpu = tree_cpu(proxy.pid) - before
    writer.close()
    return total / MB / max(cpu, 1e-6)


# -- main ---------------------------------------------------------------------------------------


def in_namespace(argv: list[str]) -> bool:
    """Re-run this script in a private network namespace with DC addresses on loopback."""
    script = (
        "ip link set lo up && "
        + " && ".join(f"ip addr add {ip}/32 dev lo" for ip in ALX_DC_ADDRESSES)
        + f' && exec "{sys.executable}" "{__file__}" --in-namespace '
        + " ".join(shlex.quote(a) for a in argv)
    )
    return subprocess.call(["unshare", "-n", "sh", "-c", script]) == 0


#: alexbers' DC 2 (source) and DC 3 (sink) addresses, both served by the fake DC.
ALX_DC_ADDRESSES = (DC2_V4, DC3_V4)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--c-proxy", default=os.environ.get("MTPROXY_BENCH_C"),
                        help="the official mtproto-proxy binary (env MTPROXY_BENCH_C)")
    parser.add_argument("--alx", default=os.environ.get("MTPROXY_BENCH_ALX"),
                        help="alexbers' mtprotoproxy.py (env MTPROXY_BENCH_ALX)")
    parser.add_argument("--bytes", type=int, default=256 << 20, help="bytes per bulk run")
    parser.add_argument("--echoes", type=int, default=20000, help="round trips per echo run")
    parser.add_argument("--idle", type=int, default=1000, help="idle clients for the RSS row")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loops", default="uvloop,asyncio", help="our event loops to run")
    parser.add_argument("--rows", default="down1,down50,up1,up50,echo100,idle")
    parser.add_argument("--mode", choices=["middle", "direct", "both"], default="both")
    parser.add_argument("--quick", action="store_true", help="small sizes, one round")
    parser.add_argument("--in-namespace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.bytes, args.echoes, args.idle, args.rounds = 32 << 20, 2000, 200, 1
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if args.mode in ("middle", "both") and not args.in_namespace:
        asyncio.run(middle_bench(args))
        floors(args.bytes)
    if args.mode in ("direct", "both"):
        if args.in_namespace:
            asyncio.run(direct_bench(args))
        elif args.alx or args.mode == "direct":
            # Without alexbers' proxy (asked for by --mode direct) ours run alone.
            argv = ["--mode", "direct", "--bytes", str(args.bytes),
                    "--rounds", str(args.rounds), "--loops", args.loops]
            if args.alx:
                argv += ["--alx", args.alx]
            if not in_namespace(argv):
                print("direct-mode comparison needs root for unshare -n", file=sys.stderr)
                return 1
        else:
            print("\n(direct mode: set MTPROXY_BENCH_ALX to compare with alexbers' proxy; "
                  "bench/run.py has our direct-mode figures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
