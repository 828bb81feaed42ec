"""The "running it for years" rows, reproduced at their sizes, with the figures they quote.

1. the descriptor flood: more idle clients than the proxy's hard limit (400) allows,
   while a few sessions keep echoing;
2. a soft limit of 1024 and 800 sessions;
3. 200 clients reset mid-upload into a DC that stopped reading;
4. clients that send FIN to a DC that never answers;
5. a DC outage under 4 000 clients.

Run ``python bench/ops_rows.py`` (a few minutes); ``--src DIR`` runs another
checkout's ``src`` (an older commit, for the figures before a change), ``--rows``
picks rows, ``--event-loop`` the proxy's loop. The proxy and the fake DC
(bench/dc_server.py) are separate processes; the proxy's CPU, descriptors and RSS
are read from /proc, its log lines counted from its stderr. Not part of the test
suite: the figures depend on the machine (2 shared cores here).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import ROOT, SECRET, cpu_seconds, free_port, rss_bytes, stop, wait_port

from mtproxy.protocol.framing import Framing
from mtproxy.protocol.obfuscated2 import build_client_header

DC_ECHO, DC_HOLD, DC_STALLED, DC_SILENT, DC_DOWN = 1, 4, 5, 6, 7
PACKET = struct.pack("<I", 60) + bytes(60)


# -- processes -----------------------------------------------------------------------------


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


@dataclass
class Proxy:
    proc: subprocess.Popen[bytes]
    port: int
    stats_port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()


@contextlib.contextmanager
def proxy(
    src: Path, loop: str, dcs: tuple[int, int], tmp: Path, *extra: str,
    nofile: tuple[int, int] | None = None,
) -> Iterator[Proxy]:
    """``dcs``: the fake DC's port, and the port of the one with a small window."""
    port, stats_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "mtproxy", "run", "--listen", f"127.0.0.1:{port}",
           "--event-loop", loop, "--secret", SECRET.hex(), "--mask", "off",
           "--modes", "classic,secure",  # its clients are classic (not the default)
           "--public-host", "127.0.0.1", "--stats", f"127.0.0.1:{stats_port}",
           "--data-dir", str(tmp / "data"), "--log-level", "info"]  # fmt: skip
    for dc in (DC_ECHO, DC_HOLD, DC_SILENT):
        cmd += ["--dc", f"{dc}=127.0.0.1:{dcs[0]}"]
    cmd += ["--dc", f"{DC_STALLED}=127.0.0.1:{dcs[1]}"]
    cmd += ["--dc", f"{DC_DOWN}=127.0.0.1:{free_port()}"]  # nobody listens there
    cmd += list(extra)
    log = tmp / f"proxy-{port}.log"

    def limits() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

    env = dict(os.environ, PYTHONPATH=str(src))
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env,
                                preexec_fn=limits)  # fmt: skip
    try:
        wait_port(port, proc)
        time.sleep(0.3)
        yield Proxy(proc, port, stats_port, log)
    finally:
        stop(proc, grace=30)


@contextlib.contextmanager
def fake_dc(*extra: str) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "dc_server.py"),
                             "--port", str(port), *extra], stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_port(port, proc)
        yield port
    finally:
        proc.kill()
        proc.wait()


# -- clients -------------------------------------------------------------------------------


def header(dc: int) -> bytes:
    return build_client_header(SECRET, Framing.INTERMEDIATE, dc).header


async def session(port: int, dc: int, timeout: float = 5.0) -> tuple[str, socket.socket | None]:
    """Connect, handshake, one echoed packet: ("served", the socket) or why not."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.sock_sendall(sock, header(dc) + PACKET)
            got = 0
            while got < len(PACKET):
                chunk = await loop.sock_recv(sock, 4096)
                if not chunk:
                    sock.close()
                    return "closed", None
                got += len(chunk)
    except TimeoutError:
        sock.close()
        return "timed out", None
    except OSError:
        sock.close()
        return "closed", None
    return "served", sock


async def stats(proxy: Proxy, timeout: float = 5.0) -> tuple[dict[str, str], float]:
    """/stats as a dict ({} when it did not answer in time) and how long it took."""
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.stats_port)
            writer.write(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
            data = await reader.read()
            writer.close()
    except (OSError, TimeoutError):
        return {}, time.perf_counter() - start
    body = data.partition(b"\r\n\r\n")[2].decode()
    out = dict(line.split("\t", 1) for line in body.splitlines() if "\t" in line)
    return out, time.perf_counter() - start


@dataclass
class Prober:
    """A few live sessions echoing a packet every 20 ms each; round trips recorded."""

    port: int
    count: int = 4
    samples: list[tuple[float, float]] = field(default_factory=list)
    failures: int = 0
    socks: list[socket.socket] = field(default_factory=list)

    async def start(self) -> None:
        for _ in range(self.count):
            verdict, sock = await session(self.port, DC_ECHO)
            if sock is None:
                raise RuntimeError(f"probe session not served: {verdict}")
            self.socks.append(sock)
        self.tasks = [asyncio.create_task(self._run(s)) for s in self.socks]

    async def _run(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = time.perf_counter()
            try:
                async with asyncio.timeout(5):
                    await loop.sock_sendall(sock, PACKET)
                    got = 0
                    while got < len(PACKET):
                        chunk = await loop.sock_recv(sock, 4096)
                        if not chunk:
                            raise ConnectionError("closed")
                        got += len(chunk)
            except (OSError, TimeoutError):
                self.failures += 1
                return
            now = time.perf_counter()
            self.samples.append((now, (now - start) * 1e6))
            await asyncio.sleep(0.02)

    def window(self, start: float, end: float) -> str:
        rtts = sorted(r for t, r in self.samples if start <= t < end)
        if not rtts:
            return "no samples"
        p99 = rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]
        return f"p50 {statistics.median(rtts):.0f} us, p99 {p99:.0f} us ({len(rtts)} round trips)"

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for sock in self.socks:
            sock.close()


async def silent(port: int, timeout: float = 3.0) -> tuple[str, socket.socket | None]:
    """Connect and say nothing (the cheapest client to hold: one descriptor)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, ("127.0.0.1", port))
    except (OSError, TimeoutError):
        sock.close()
        return "not connected", None
    return "connected", sock


async def crowd(port: int, dc: int, count: int, parallel: int = 200,
                timeout: float = 5.0, quiet: bool = False,
                ) -> tuple[Counter[str], list[socket.socket]]:
    gate = asyncio.Semaphore(parallel)

    async def one() -> tuple[str, socket.socket | None]:
        async with gate:
            if quiet:
                return await silent(port, timeout)
            return await session(port, dc, timeout)

    results = await asyncio.gather(*(one() for _ in range(count)))
    verdicts = Counter(v for v, _ in results)
    return verdicts, [s for _, s in results if s is not None]


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


# -- rows ----------------------------------------------------------------------------------


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)

    def add(self, row: str, figure: str) -> None:
        text = f"{row:<44} {figure}"
        self.lines.append(text)
        print(text, flush=True)


def log_summary(lines: list[str]) -> str:
    kinds: Counter[str] = Counter()
    for line in lines:
        if "Traceback" in line:
            kinds["tracebacks"] += 1
        elif "upstream failed" in line:
            kinds["'upstream failed'"] += 1
        elif "out of file descriptors" in line or "client connections open" in line:
            kinds["fd/cap lines"] += 1
    detail = ", ".join(f"{n} {k}" for k, n in kinds.most_common())
    return f"{len(lines)} log lines" + (f" ({detail})" if detail else "")


async def row_flood(args: argparse.Namespace, loop: str, dcs: tuple[int, int], tmp: Path,
                    report: Report, extra: list[str], label: str, quiet: bool = False) -> None:
    """More idle clients than the hard limit allows, a few sessions echoing throughout
    (``quiet``: clients that connect and never speak, one descriptor each)."""
    hard = args.flood_hard
    with proxy(args.src, loop, dcs, tmp, *extra, nofile=(hard, hard)) as p:
        start_lines = len(p.lines())
        prober = Prober(p.port)
        await prober.start()
        await asyncio.sleep(args.flood_calm)
        t_flood = time.perf_counter()
        cpu0 = cpu_seconds(p.pid)
        flood_task = asyncio.create_task(
            crowd(p.port, DC_ECHO, args.flood, parallel=300, timeout=3.0, quiet=quiet)
        )
        answered, slowest, asked = 0, 0.0, 0
        while time.perf_counter() - t_flood < args.flood_window:
            await asyncio.sleep(1.0)
            asked += 1
            page, took = await stats(p, timeout=3.0)
            if page:
                answered += 1
                slowest = max(slowest, took)
        verdicts, held = await flood_task
        t_end = time.perf_counter()
        cpu = cpu_seconds(p.pid) - cpu0
        fds = fd_count(p.pid)
        page, _ = await stats(p)
        close_all(held)
        await asyncio.sleep(1.0)
        after, _ = await session(p.port, DC_ECHO)
        await prober.stop()
        lines = p.lines()[start_lines:]
        kind = "silent clients" if quiet else "sessions"
        name = f"1. {args.flood} {kind} > hard {hard}, {loop}{label}"
        report.add(name, ", ".join(f"{n} {v}" for v, n in verdicts.most_common())
                   + f"; proxy CPU {cpu / (t_end - t_flood) * 100:.0f} % over "
                   f"{t_end - t_flood:.0f} s; {fds} fds open")  # fmt: skip
        report.add("", f"echo while calm: {prober.window(t_flood - args.flood_calm, t_flood)}")
        report.add("", f"echo during flood: {prober.window(t_flood, t_end)}; "
                   f"probe failures {prober.failures}")  # fmt: skip
        report.add("", f"/stats answered {answered}/{asked} (slowest {slowest * 1000:.0f} ms); "
                   f"{log_summary(lines)}; a new client afterwards: {after}")  # fmt: skip
        if page:
            report.add("", "stats: " + ", ".join(
                f"{k} {page[k]}" for k in ("total_special_connections",
                                           "total_max_special_connections",
                                           "accept_connection_limit_failed", "fd_exhausted",
                                           "open_fds", "fd_limit") if k in page))


async def row_soft_limit(args: argparse.Namespace, loop: str, dcs: tuple[int, int], tmp: Path,
                         report: Report) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    with proxy(args.src, loop, dcs, tmp, nofile=(1024, hard)) as p:
        verdicts, held = await crowd(p.port, DC_ECHO, args.sessions, parallel=200)
        page, _ = await stats(p)
        close_all(held)
        lines = p.lines()
        emfile = sum("Too many open files" in line for line in lines)
        report.add(f"2. soft 1024, {args.sessions} sessions, {loop}",
                   ", ".join(f"{n} {v}" for v, n in verdicts.most_common())
                   + f"; {emfile} lines say 'Too many open files'; "
                   f"limit seen by /stats: {page.get('fd_limit', '?')}")  # fmt: skip


async def row_stalled(args: argparse.Namespace, loop: str, dcs: tuple[int, int], tmp: Path,
                      report: Report) -> None:
    """Clients reset mid-upload into a DC that stopped reading: what stays behind."""
    with proxy(args.src, loop, dcs, tmp, "--idle-timeout", str(args.idle)) as p:
        base_fds, base_rss = fd_count(p.pid), rss_bytes(p.pid)
        loop_ = asyncio.get_running_loop()
        socks = []
        for _ in range(args.stalled):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            sock.setblocking(False)
            await loop_.sock_connect(sock, ("127.0.0.1", p.port))
            await loop_.sock_sendall(sock, header(DC_STALLED))
            socks.append(sock)
        block = bytes(64 * 1024)

        async def upload(sock: socket.socket) -> int:
            sent = 0
            with contextlib.suppress(TimeoutError, OSError):
                async with asyncio.timeout(3.0):
                    while sent < args.upload:
                        await loop_.sock_sendall(sock, block)
                        sent += len(block)
            return sent

        sent = sum(await asyncio.gather(*(upload(s) for s in socks)))
        peak_fds, peak_rss = fd_count(p.pid), rss_bytes(p.pid)
        for sock in socks:  # reset: SO_LINGER 0
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        t0 = time.perf_counter()
        await asyncio.sleep(1.0)
        page, _ = await stats(p)
        held_fds, held_rss = fd_count(p.pid), rss_bytes(p.pid)
        released = None
        while time.perf_counter() - t0 < args.patience:
            if fd_count(p.pid) <= base_fds + 2:
                released = time.perf_counter() - t0
                break
            await asyncio.sleep(0.5)
        mib = 1 << 20
        report.add(f"3. {args.stalled} resets mid-upload, stalled DC, {loop}",
                   f"{sent / mib:.0f} MiB sent; 1 s after the resets: {held_fds - base_fds} fds "
                   f"and {(held_rss - base_rss) / mib:.0f} MiB RSS held (peak "
                   f"{peak_fds - base_fds} fds, {(peak_rss - base_rss) / mib:.0f} MiB), "
                   f"{page.get('total_special_connections', '?')} connections in /stats")
        rss_now = (rss_bytes(p.pid) - base_rss) / mib
        report.add("", "all released after " + (
            f"{released:.1f} s ({rss_now:.0f} MiB RSS above the start still)"
            if released is not None else f"more than {args.patience:.0f} s (still "
            f"{fd_count(p.pid) - base_fds} fds, {rss_now:.0f} MiB)"
        ) + f" (--idle-timeout {args.idle:g})")  # fmt: skip


async def row_half_open(args: argparse.Namespace, loop: str, dcs: tuple[int, int], tmp: Path,
                        report: Report) -> None:
    with proxy(args.src, loop, dcs, tmp, "--idle-timeout", str(args.idle)) as p:
        loop_ = asyncio.get_running_loop()
        socks = []
        for _ in range(args.half_open):
            sock = socket.socket()
            sock.setblocking(False)
            await loop_.sock_connect(sock, ("127.0.0.1", p.port))
            await loop_.sock_sendall(sock, header(DC_SILENT) + PACKET)
            socks.append(sock)
        await asyncio.sleep(0.5)
        t0 = time.perf_counter()
        for sock in socks:
            sock.shutdown(socket.SHUT_WR)

        async def closed(sock: socket.socket) -> float | None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(args.patience):
                    with contextlib.suppress(OSError):
                        while await loop_.sock_recv(sock, 4096):
                            pass
                    return time.perf_counter() - t0
            return None

        times = await asyncio.gather(*(closed(s) for s in socks))
        close_all(socks)
        done = sorted(t for t in times if t is not None)
        text = (f"closed after median {statistics.median(done):.1f} s, max {done[-1]:.1f} s"
                if done else "none closed")
        if len(done) < len(times):
            text += f"; {len(times) - len(done)} still open after {args.patience:.0f} s"
        report.add(f"4. {args.half_open} client FINs, silent DC, {loop}",
                   text + f" (--idle-timeout {args.idle:g})")


async def row_outage(args: argparse.Namespace, loop: str, dcs: tuple[int, int], tmp: Path,
                     report: Report) -> None:
    with proxy(args.src, loop, dcs, tmp) as p:
        start = len(p.lines())
        cpu0, t0 = cpu_seconds(p.pid), time.perf_counter()
        verdicts, held = await crowd(p.port, DC_DOWN, args.outage, parallel=200)
        close_all(held)
        cpu, wall = cpu_seconds(p.pid) - cpu0, time.perf_counter() - t0
        await asyncio.sleep(1.0)
        lines = p.lines()[start:]
        report.add(f"5. DC outage, {args.outage} clients, {loop}",
                   ", ".join(f"{n} {v}" for v, n in verdicts.most_common())
                   + f" in {wall:.1f} s; {log_summary(lines)}; "
                   f"proxy CPU {cpu / args.outage * 1e6:.0f} us per client")  # fmt: skip


async def main_async(args: argparse.Namespace) -> None:
    report = Report()
    loops = ["uvloop", "asyncio"] if args.event_loop == "both" else [args.event_loop]
    rows = {int(r) for r in args.rows.split(",")}
    print(f"ops rows, src {args.src}, python {sys.version.split()[0]}", flush=True)
    with tempfile.TemporaryDirectory(prefix="mtproxy-ops-rows-") as name, \
            fake_dc() as dc_port, fake_dc("--rcvbuf", "4096") as small_window:
        tmp = Path(name)
        dc = (dc_port, small_window)
        for loop in loops:
            if 1 in rows:
                await row_flood(args, loop, dc, tmp, report, [], "")
                cap, label = [], ""
                if args.explicit_cap:
                    cap = ["--max-connections", str(args.explicit_cap)]
                    label = f", -C {args.explicit_cap}"
                    await row_flood(args, loop, dc, tmp, report, cap, label)
                await row_flood(args, loop, dc, tmp, report, cap, label, quiet=True)
            if 2 in rows:
                await row_soft_limit(args, loop, dc, tmp, report)
            if 3 in rows:
                await row_stalled(args, loop, dc, tmp, report)
            if 4 in rows:
                await row_half_open(args, loop, dc, tmp, report)
            if 5 in rows:
                await row_outage(args, loop, dc, tmp, report)
    print("\n" + "\n".join(report.lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=ROOT / "src",
                        help="the mtproxy sources to run (default: this checkout's)")
    parser.add_argument("--event-loop", default="both", choices=["both", "uvloop", "asyncio"])
    parser.add_argument("--rows", default="1,2,3,4,5")
    parser.add_argument("--flood", type=int, default=1200, help="row 1: idle clients")
    parser.add_argument("--flood-hard", type=int, default=400,
                        help="row 1: the proxy's hard (and soft) descriptor limit")
    parser.add_argument("--flood-window", type=float, default=20.0)
    parser.add_argument("--flood-calm", type=float, default=3.0)
    parser.add_argument("--explicit-cap", type=int, default=1000,
                        help="row 1 again with this --max-connections, past the budget, "
                        "and silent clients with it (0: silent clients without it)")
    parser.add_argument("--sessions", type=int, default=800, help="row 2")
    parser.add_argument("--stalled", type=int, default=200, help="row 3")
    parser.add_argument("--upload", type=int, default=4 << 20,
                        help="row 3: bytes each client tries to send before its reset")
    parser.add_argument("--half-open", type=int, default=50, help="row 4")
    parser.add_argument("--outage", type=int, default=4000, help="row 5")
    parser.add_argument("--idle", type=float, default=60.0,
                        help="rows 3, 4: the proxy's --idle-timeout")
    parser.add_argument("--patience", type=float, default=120.0,
                        help="rows 3, 4: how long to wait for the proxy to let go")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
