#!/usr/bin/env python3
"""Which tests send anything off the machine (tests may talk to loopback only).

    .venv/bin/python scripts/loopback_audit.py [PYTEST ARGS]    (as root)

Runs pytest in a private network namespace whose one way out is a veth pair that leads
nowhere: a default route (IPv4 and IPv6) points into it, so whatever a test, or a
program it starts, sends towards another machine (a DNS query included) leaves by that
interface, where tcpdump records it and nothing answers. Each packet is matched to the
test running when it left (this file is also the pytest plugin that notes the times),
and one line per offending test is printed: where it sent, and the names it asked DNS
for. Exit status 1 if any test sent something. Tests that start their own namespace
(``unshare -n``) are isolated further and never show. Needs root, ip (iproute2) and
tcpdump.

With no network a test that tries to leave waits for its timeouts, so such tests may
also fail or run slowly here; that is a finding too.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
INSIDE = "LOOPBACK_AUDIT_LOG"  # set in the namespace: where the plugin notes test times


# -- the pytest plugin (loaded with -p loopback_audit) -----------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: Any, nextitem: Any) -> Iterator[None]:
    start = time.time()
    yield
    with open(os.environ[INSIDE], "a") as out:
        out.write(json.dumps({"test": item.nodeid, "start": start, "end": time.time()}) + "\n")


# -- the run -------------------------------------------------------------------------------


def setup_namespace() -> None:
    """lo, and a veth pair with routes into it and static neighbours (no ARP to wait for)."""

    def ip(*args: str) -> str:
        return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout

    ip("link", "set", "lo", "up")
    ip("link", "add", "audit0", "type", "veth", "peer", "name", "sink0")
    ip("link", "set", "sink0", "up")
    ip("addr", "add", "192.0.2.2/24", "dev", "audit0")
    ip("-6", "addr", "add", "2001:db8::2/64", "dev", "audit0", "nodad")
    ip("link", "set", "audit0", "up")
    mac = ip("-br", "link", "show", "sink0").split()[2]
    ip("neigh", "add", "192.0.2.1", "lladdr", mac, "dev", "audit0")
    ip("-6", "neigh", "add", "2001:db8::1", "lladdr", mac, "dev", "audit0")
    ip("route", "add", "default", "via", "192.0.2.1", "dev", "audit0")
    ip("-6", "route", "add", "default", "via", "2001:db8::1", "dev", "audit0")


def packets(pcap: bytes) -> Iterator[tuple[float, str, str, int, bytes]]:
    """(time, protocol, destination, destination port, payload) of IPv4/IPv6 TCP and UDP
    packets (and others by protocol number), leaving out the interface's own IPv6
    link-local chatter (neighbour discovery, multicast listener reports)."""
    endian = "<" if pcap[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    scale = 1e-9 if pcap[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e-6
    pos = 24
    while pos + 16 <= len(pcap):
        sec, frac, incl = struct.unpack(endian + "III", pcap[pos : pos + 12])
        frame = pcap[pos + 16 : pos + 16 + incl]
        pos += 16 + incl
        kind = frame[12:14]
        if kind == b"\x08\x00":
            ihl = (frame[14] & 0x0F) * 4
            proto, dst, rest = frame[23], ipaddress.ip_address(frame[30:34]), frame[14 + ihl :]
        elif kind == b"\x86\xdd":
            proto, dst, rest = frame[20], ipaddress.ip_address(frame[38:54]), frame[54:]
            if dst.is_multicast or ipaddress.ip_address(frame[22:38]).is_link_local or (
                ipaddress.ip_address(frame[22:38]).is_unspecified
            ):
                continue
        else:
            continue  # ARP and the like: the link's own business
        name = {6: "tcp", 17: "udp"}.get(proto, f"ip proto {proto}")
        port = int.from_bytes(rest[2:4], "big") if proto in (6, 17) else 0
        payload = rest[8:] if proto == 17 else b""
        yield sec + frac * scale, name, str(dst), port, payload


def dns_name(payload: bytes) -> str | None:
    """The first question's name of a DNS query."""
    labels, i = [], 12
    while i < len(payload) and payload[i]:
        labels.append(payload[i + 1 : i + 1 + payload[i]].decode(errors="replace"))
        i += 1 + payload[i]
    return ".".join(labels) or None


def report(pcap: bytes, times: list[dict[str, Any]]) -> dict[str, dict[str, set[str]]]:
    found: dict[str, dict[str, set[str]]] = {}
    for when, proto, dst, port, payload in packets(pcap):
        owner = next((t["test"] for t in times if t["start"] <= when <= t["end"]), None)
        if owner is None:  # after its test: a program it started, still going
            ended = [t for t in times if t["end"] < when]
            owner = f"{ended[-1]['test']} (after it ended)" if ended else "(before any test)"
        entry = found.setdefault(owner, {"to": set(), "dns": set()})
        entry["to"].add(f"{proto} {dst}:{port}" if port else f"{proto} {dst}")
        if proto == "udp" and port == 53 and (name := dns_name(payload)):
            entry["dns"].add(name)
    return found


def audit(pytest_args: list[str]) -> int:
    setup_namespace()
    with tempfile.TemporaryDirectory(prefix="loopback-audit-") as tmp:
        pcap, log = Path(tmp) / "out.pcap", Path(tmp) / "tests.jsonl"
        capture = subprocess.Popen(["tcpdump", "-i", "audit0", "-U", "-w", str(pcap)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        assert capture.stderr is not None
        if b"listening on" not in capture.stderr.readline():
            print("tcpdump did not start", file=sys.stderr)
            return 2
        env = dict(os.environ, **{INSIDE: str(log)})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
        result = subprocess.run([sys.executable, "-m", "pytest", "-p", "loopback_audit",
                                 *pytest_args], env=env, check=False)  # fmt: skip
        time.sleep(1)
        capture.send_signal(signal.SIGINT)
        capture.wait(30)
        times = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        found = report(pcap.read_bytes(), times)
    print(f"\nloopback audit: {len(times)} tests run (pytest exit {result.returncode}); "
          f"{len(found)} sent packets off the machine")  # fmt: skip
    for test, entry in sorted(found.items()):
        dns = f"; DNS: {', '.join(sorted(entry['dns']))}" if entry["dns"] else ""
        print(f"  {test}: {', '.join(sorted(entry['to']))}{dns}")
    return 1 if found else 0


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("loopback_audit: needs root (a network namespace, a veth pair, tcpdump)")
    if INSIDE in os.environ:
        sys.exit(audit(sys.argv[1:]))
    # Into a private network namespace first; INSIDE marks the second start.
    env = dict(os.environ, **{INSIDE: ""})
    os.execvpe("unshare", ["unshare", "-n", sys.executable, __file__, *sys.argv[1:]], env)


if __name__ == "__main__":
    main()
