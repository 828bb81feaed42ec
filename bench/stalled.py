"""Memory of sessions whose peer stops reading, and what is left once they close.

Two cases, each with ``--count`` sessions at once (default 1000):

- download: clients that handshake, ask DC 2 (the fake DC's source) for data and
  never read it, so the proxy's writes to them stall;
- upload: clients that send into DC 5, which stops reading after the header, so
  the proxy's writes to the DC stall.

For each: the proxy's RSS per stalled session (growth over the RSS before, divided by
the count), then its RSS once every session has closed, against the RSS it had
before and the RSS per idle session (handshaken, nothing moving). Sockets are given
small buffers (``SO_RCVBUF``/``SO_SNDBUF`` at the load generator and the fake DC's
defaults) so that the kernel's share stays modest on a shared machine: the point is
the proxy's own memory.

``--src DIR`` runs the proxy from another checkout's ``src`` (A/B against a
baseline); ``--event-loop`` picks its loop.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from run import SECRET, free_port, process, rss_bytes  # noqa: E402

from mtproxy.protocol.framing import Framing  # noqa: E402
from mtproxy.protocol.obfuscated2 import build_client_header  # noqa: E402

DC_ECHO, DC_SOURCE, DC_STALL = 1, 2, 5
#: Bytes the fake DC sends each download client: enough to fill every buffer on the way.
SOURCE_BYTES = 4 << 20
#: Bytes each upload client pushes before it stops.
UPLOAD_BYTES = 2 << 20
KIB = 1024
#: The proxy's sweep period with --idle-timeout 3600.
SWEEP = 15.0


def proxy_command(port: int, dc_port: int, loop: str) -> list[str]:
    cmd = [sys.executable, "-m", "mtproxy", "run", "--listen", f"127.0.0.1:{port}",
           "--event-loop", loop, "--secret", SECRET.hex(), "--mask", "off",
           "--modes", "classic,secure",  # its clients are classic (not the default)
           "--public-host", "127.0.0.1", "--log-level", "warning", "--idle-timeout", "3600",
           "--stats", "off", "--max-connections", "0"]
    for dc in (DC_ECHO, DC_SOURCE, DC_STALL):
        cmd += ["--dc", f"{dc}=127.0.0.1:{dc_port}"]
    return cmd


def connect(port: int, dc: int) -> tuple[socket.socket, object]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * KIB)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * KIB)
    sock.connect(("127.0.0.1", port))
    hs = build_client_header(SECRET, Framing.INTERMEDIATE, dc)
    sock.sendall(hs.header)
    return sock, hs.encryptor


def settle(pid: int, seconds: float = 1.0, limit: float = 20.0) -> int:
    """RSS once it stops changing (the relays have stalled)."""
    last = rss_bytes(pid)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(seconds)
        now = rss_bytes(pid)
        if abs(now - last) < 64 * KIB:
            return now
        last = now
    return last


def idle(pid: int, port: int, count: int) -> float:
    before = settle(pid, 0.3)
    socks = []
    for _ in range(count):
        sock, enc = connect(port, DC_ECHO)
        sock.sendall(enc.update(struct.pack("<I", 4) + b"ping"))  # type: ignore[attr-defined]
        socks.append(sock)
    for sock in socks:
        got = 0
        while got < 8:
            got += len(sock.recv(8 - got))
    per = (settle(pid, 0.5) - before) / count
    for sock in socks:
        sock.close()
    settle(pid, 0.5)
    return per


def download(port: int, count: int) -> list[socket.socket]:
    return [connect(port, DC_SOURCE)[0] for _ in range(count)]


def upload(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock, _enc = connect(port, DC_STALL)
        sock.setblocking(False)
        socks.append(sock)
    # The bytes need not decrypt to anything: the DC never reads them.
    block = bytes(64 * KIB)
    sent = [0] * count
    # Push until the kernel refuses, a few times over, so every relay has stalled.
    for _round in range(3):
        for i, sock in enumerate(socks):
            while sent[i] < UPLOAD_BYTES:
                try:
                    n = sock.send(block)
                except BlockingIOError:
                    break
                sent[i] += n
        time.sleep(0.5)
    return socks


def case(name: str, pid: int, port: int, count: int, opener) -> list[str]:  # type: ignore[no-untyped-def]
    before = settle(pid, 0.3)
    socks = opener(port, count)
    stalled = settle(pid)
    for sock in socks:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    # A client socket whose reading is paused (the upload case) is not watched, so its
    # reset is seen by the proxy's sweep of paused sessions, every 15 s.
    time.sleep(SWEEP + 2.0 if opener is upload else 2.0)
    after = settle(pid)
    return [
        f"{name}: RSS per stalled session at {count}: {(stalled - before) / count / KIB:.1f} KiB",
        f"{name}: RSS after they closed: {after / KIB / KIB:.1f} MiB "
        f"(before: {before / KIB / KIB:.1f} MiB, stalled: {stalled / KIB / KIB:.1f} MiB)",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--event-loop", default="uvloop", choices=["uvloop", "asyncio"])
    parser.add_argument("--src", help="run the proxy from this src directory")
    parser.add_argument("--cases", default="idle,download,upload")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    env = dict(os.environ)
    if args.src:
        env["PYTHONPATH"] = str(Path(args.src).resolve())
    dc_port, port = free_port(), free_port()
    dc_cmd = [sys.executable, str(ROOT / "bench" / "dc_server.py"), "--port", str(dc_port),
              "--source-bytes", str(SOURCE_BYTES)]
    lines = [f"proxy from {args.src or ROOT / 'src'}, event loop {args.event_loop}"]
    with process(dc_cmd, dc_port):
        os.environ.update(env)
        for name in args.cases.split(","):
            # A fresh proxy per case, so one case's leftovers do not hide the next one's.
            with process(proxy_command(port, dc_port, args.event_loop), port) as proxy:
                # Warm up the code paths (imports, first allocations) before measuring.
                idle(proxy.pid, port, 20)
                if name == "idle":
                    per = idle(proxy.pid, port, args.count)
                    lines.append(f"RSS per idle session at {args.count}: {per / KIB:.1f} KiB")
                else:
                    lines += case(name, proxy.pid, port, args.count,
                                  download if name == "download" else upload)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
