"""What users and their limits cost on the relay path.

One proxy, three kinds of client secret: an anonymous ``--secret``, a named user
without limits, and a named user with rate limits far above what the run moves (the
shaper's bookkeeping runs, nothing is held back). Rounds alternate between them;
each figure is the median. Rows: proxy CPU per GiB downloaded (re-encrypting,
classic) and per echoed small packet, from the proxy's schedstat.

A user without limits takes the same path as an anonymous secret: the relay compares
the user's byte total with one mark per read (the quota's, which rate limits share),
so the first two rows should agree within noise. (Under callgrind, user-space
instructions per echo on uvloop: 31.2 K anonymous, 30.9 K user without limits,
30.4 K user with limits not hit: the same within the method's noise.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from run import (  # noqa: E402
    DC_ECHO,
    DC_SOURCE,
    SECRET,
    Client,
    cpu_seconds,
    free_port,
    process,
    proxy_command,
)

FREE = bytes.fromhex("f4ee0000000000000000000000000001")
SHAPED = bytes.fromhex("54a9ed00000000000000000000000002")


def config(directory: Path) -> Path:
    path = directory / "users.toml"
    path.write_text(
        f'[[users]]\nname = "free"\nsecret = "{FREE.hex()}"\n\n'
        f'[[users]]\nname = "shaped"\nsecret = "{SHAPED.hex()}"\n'
        'rate_up = "50GB"\nrate_down = "50GB"\n'
    )
    return path


def download(pid: int, port: int, secret: bytes, total: int) -> float:
    client = Client(port, DC_SOURCE, tls=False, secret=secret)
    buf = memoryview(bytearray(1 << 20))
    before = cpu_seconds(pid)
    got = client.drain(buf)
    cpu = cpu_seconds(pid) - before
    client.close()
    if got < total:
        raise RuntimeError(f"download short: {got} of {total}")
    return cpu / (total / (1 << 30))


def echo(pid: int, port: int, secret: bytes, count: int) -> float:
    client = Client(port, DC_ECHO, tls=False, secret=secret)
    packet = struct.pack("<I", 60) + os.urandom(60)
    for _ in range(50):
        client.send(packet)
        client.recv_some(len(packet))
    before = cpu_seconds(pid)
    for _ in range(count):
        client.send(packet)
        client.recv_some(len(packet))
    cpu = cpu_seconds(pid) - before
    client.close()
    return cpu / count * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bytes", type=int, default=256 << 20)
    parser.add_argument("--echoes", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--event-loop", default="uvloop", choices=["uvloop", "asyncio"])
    args = parser.parse_args()
    kinds = {"anonymous": SECRET, "user, no limits": FREE, "user, rate limits not hit": SHAPED}
    results: dict[tuple[str, str], list[float]] = {}
    dc_port, port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="mtproxy-users-") as tmp:
        dc_cmd = [sys.executable, str(ROOT / "bench" / "dc_server.py"), "--port", str(dc_port),
                  "--source-bytes", str(args.bytes)]
        extra = ["--config", str(config(Path(tmp))), "--data-dir", tmp,
                 "--event-loop", args.event_loop]
        with process(dc_cmd, dc_port), process(proxy_command(port, dc_port, extra), port) as px:
            time.sleep(0.5)
            names = list(kinds)
            for rnd in range(args.rounds):
                for name in names if rnd % 2 == 0 else names[::-1]:
                    secret = kinds[name]
                    results.setdefault((name, "gib"), []).append(
                        download(px.pid, port, secret, args.bytes))
                    results.setdefault((name, "echo"), []).append(
                        echo(px.pid, port, secret, args.echoes))
    print(f"\nper-user cost, median of {args.rounds} alternating rounds "
          f"(event loop {args.event_loop})")
    print(f"{'secret':<28}{'CPU s per GiB down':>20}{'CPU us per echo':>18}")
    for name in kinds:
        gib = statistics.median(results[(name, "gib")])
        per = statistics.median(results[(name, "echo")])
        print(f"{name:<28}{gib:>20.3f}{per:>18.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
