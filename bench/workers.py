"""Workers side by side: aggregate throughput and connection rate with 1 and 2 workers.

Run with ``make bench`` (after the main table) or ``python bench/workers.py``.
Parallel clients (threads of this process) download from the fake DC through the
proxy, then open, use and close connections as fast as they can. With N workers
the kernel spreads connections over them (SO_REUSEPORT). On a machine whose cores
are also busy with the load generator and the fake DC, the gain is bounded by the
cores left for the proxy; the table says how many cores there are.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (
    DC_ECHO,
    DC_SOURCE,
    ROOT,
    Client,
    cpu_seconds,
    free_port,
    process,
    proxy_command,
)

#: Seconds to wait after the port opens: the other workers are still importing.
SETTLE = 2.0


def parallel(count: int, job: Callable[[int], int]) -> tuple[int, float]:
    """Run ``job(i)`` in ``count`` threads; (sum of results, wall seconds)."""
    results = [0] * count
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = job(i)
        except BaseException as exc:  # reported after the join
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} clients failed: {errors[0]!r}")
    return sum(results), wall


def download(port: int, expected: int) -> int:
    client = Client(port, DC_SOURCE, tls=False)
    buf = memoryview(bytearray(1 << 20))
    got = client.drain(buf)
    client.close()
    if got < expected:
        raise RuntimeError(f"download short: {got} of {expected}")
    return got


def handshakes(port: int, deadline: float) -> int:
    packet = struct.pack("<I", 4) + b"ping"
    done = 0
    while time.perf_counter() < deadline:
        client = Client(port, DC_ECHO, tls=False)
        client.send(packet)
        client.recv_some(len(packet))
        client.close()
        done += 1
    return done


def family(pid: int) -> list[int]:
    """A process and its children (the supervisor and its workers)."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        kids = []
    return [pid, *map(int, kids)]


def busy_cores() -> tuple[float, float]:
    """(busy, total) jiffies over all cores, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def measure(pid: int, port: int, clients: int, size: int, seconds: float) -> list[float]:
    """Download MiB/s over all clients, proxy CPU and machine load during it, connections/s."""
    procs = family(pid)
    cpu0, (busy0, all0) = sum(cpu_seconds(p) for p in procs), busy_cores()
    total, wall = parallel(clients, lambda _i: download(port, size))
    cpu1, (busy1, all1) = sum(cpu_seconds(p) for p in procs), busy_cores()
    deadline = time.perf_counter() + seconds
    count, wall2 = parallel(clients, lambda _i: handshakes(port, deadline))
    machine = (busy1 - busy0) / max(1, all1 - all0) * 100
    return [total / wall / (1 << 20), (cpu1 - cpu0) / wall * 100, machine, count / wall2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bytes", type=int, default=256 << 20, help="bytes per download")
    parser.add_argument("--clients", type=int, default=4, help="parallel clients")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the handshake run")
    parser.add_argument("--runs", type=int, default=2, help="runs per row; the best is shown")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args, _ = parser.parse_known_args()
    if args.quick:
        args.bytes, args.seconds = 32 << 20, 1.5
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    dc_port = free_port()
    dc_cmd = [sys.executable, str(ROOT / "bench" / "dc_server.py"), "--port", str(dc_port),
              "--source-bytes", str(args.bytes)]  # fmt: skip
    rows: list[tuple[float, ...]] = []
    with process(dc_cmd, dc_port):
        for workers in (1, 2):
            port = free_port()
            extra = ["--workers", str(workers)]
            with process(proxy_command(port, dc_port, extra), port) as proxy:
                time.sleep(SETTLE)  # every worker started, imports done
                runs = [
                    measure(proxy.pid, port, args.clients, args.bytes, args.seconds)
                    for _ in range(args.runs)
                ]
                best = max(runs, key=lambda r: r[0])
                rows.append((workers, best[0], best[1], best[2], max(r[3] for r in runs)))
    print(f"\nworkers: {args.clients} parallel clients, {args.bytes >> 20} MiB each, best of "
          f"{args.runs} runs, "
          f"{os.cpu_count()} cores shared with the load generator and the fake DC")  # fmt: skip
    print(f"{'workers':<8} {'download MiB/s':>15} {'proxy CPU %':>12} {'machine busy %':>15} "
          f"{'connections/s':>14}")  # fmt: skip
    print("-" * 68)
    for count, mib_s, cpu, machine, rate in rows:
        print(f"{count:<8.0f} {mib_s:>15.0f} {cpu:>12.0f} {machine:>15.0f} {rate:>14.0f}")
    base = rows[0]
    for count, mib_s, _cpu, _machine, rate in rows[1:]:
        print(f"{count:.0f} vs 1: throughput x{mib_s / base[1]:.2f}, "
              f"connections x{rate / base[4]:.2f}")
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    sys.exit(main())
