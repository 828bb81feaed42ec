"""Small pieces of middle-proxy mode: NAT address choice, backoff, link back-pressure."""

from __future__ import annotations

import asyncio
import random
import struct
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from mtproxy.middle.addresses import AddressMap, needs_public_address, parse_ip
from mtproxy.middle.link import MeLink
from mtproxy.middle.options import MiddleOptions
from mtproxy.middle.pool import backoff_delay
from mtproxy.middle.upstream import request_tail
from mtproxy.protocol.rpc import ProxyReq
from mtproxy.protocol.rpc.constants import FLAG_HAS_AD_TAG, FLAG_MAGIC, RPC_PROXY_REQ
from mtproxy.proxy.stats import ProxyStats


def test_parse_ip_forms() -> None:
    assert parse_ip("127.0.0.1") == IPv4Address("127.0.0.1")
    assert parse_ip("::ffff:10.1.2.3") == IPv4Address("10.1.2.3")
    assert parse_ip("[2001:db8::1]") == IPv6Address("2001:db8::1")
    assert parse_ip("fe80::1%eth0") == IPv6Address("fe80::1")
    assert parse_ip("?") is None


def test_public_address_choice() -> None:
    addresses = AddressMap([("10.0.0.5", "203.0.113.7")])
    mapped, other_private = IPv4Address("10.0.0.5"), IPv4Address("192.168.1.2")
    loopback, public = IPv4Address("127.0.0.1"), IPv4Address("149.154.167.51")
    assert addresses.public(mapped) == IPv4Address("203.0.113.7")
    assert not addresses.wants_detection(mapped)
    # Unmapped private address: only a detected public one can help.
    assert addresses.wants_detection(other_private)
    assert addresses.public(other_private) == other_private
    addresses.detected = IPv4Address("198.51.100.1")
    assert addresses.public(other_private) == IPv4Address("198.51.100.1")
    # Loopback and public addresses are what the peer sees already.
    for ip in (loopback, public, IPv6Address("2001:db8::1")):
        assert not addresses.wants_detection(ip)
        assert addresses.public(ip) == ip
    assert needs_public_address(IPv4Address("100.64.1.1"))  # carrier-grade NAT


@given(st.integers(min_value=1, max_value=60), st.integers(min_value=0, max_value=2**32))
def test_backoff_doubles_caps_and_jitters(failures: int, seed: int) -> None:
    options = MiddleOptions(backoff_base=0.5, backoff_max=30.0, backoff_jitter=0.5)
    delay = backoff_delay(failures, options, random.Random(seed))
    nominal = min(30.0, 0.5 * 2 ** (failures - 1))
    assert nominal * 0.5 <= delay <= nominal * 1.5


def test_backoff_actually_varies() -> None:
    options = MiddleOptions()
    rng = random.Random(1)
    assert len({round(backoff_delay(3, options, rng), 6) for _ in range(20)}) > 10


@given(
    conn_id=st.integers(min_value=1, max_value=2**64 - 1),
    remote_port=st.integers(min_value=0, max_value=65535),
    our_port=st.integers(min_value=0, max_value=65535),
    v6=st.booleans(),
    tag=st.one_of(st.none(), st.binary(min_size=16, max_size=16)),
    words=st.integers(min_value=14, max_value=64),
)
def test_request_tail_matches_the_message_codec(
    conn_id: int, remote_port: int, our_port: int, v6: bool, tag: bytes | None, words: int
) -> None:
    """The hot path builds RPC_PROXY_REQ by hand; ProxyReq.decode must agree with it."""
    remote = ip_address("2001:db8::5" if v6 else "192.0.2.5")
    ours = ip_address("2001:db8::1" if v6 else "198.51.100.1")
    flags = FLAG_MAGIC | (FLAG_HAS_AD_TAG if tag is not None else 0)
    payload = bytes(range(256))[: words * 4] if words * 4 <= 256 else b"\x07" * (words * 4)
    wire = (
        struct.pack("<II", RPC_PROXY_REQ, flags)
        + request_tail(conn_id, (remote, remote_port), (ours, our_port), tag)
        + payload
    )
    decoded = ProxyReq.decode(wire)
    assert decoded == ProxyReq(
        flags=flags, conn_id=conn_id, remote_ip=remote, remote_port=remote_port,
        our_ip=ours, our_port=our_port, payload=payload, ad_tag=tag,
    )


class _Owner:
    def __init__(self) -> None:
        self.lost: list[MeLink] = []
        self.idle: list[MeLink] = []

    def link_lost(self, link: MeLink) -> None:
        self.lost.append(link)

    def link_idle(self, link: MeLink) -> None:
        self.idle.append(link)


class _Client:
    def __init__(self, conn_id: int) -> None:
        self.conn_id = conn_id
        self.events: list[str] = []

    def answer(self, payload: memoryview) -> None:
        self.events.append("answer")

    def quickack(self, confirm: bytes) -> None:
        self.events.append("ack")

    def closed_by_telegram(self) -> None:
        self.events.append("close-ext")

    def link_lost(self) -> None:
        self.events.append("lost")

    def pause_client(self) -> None:
        self.events.append("pause")

    def resume_client(self) -> None:
        self.events.append("resume")


async def test_link_back_pressure_and_loss_reach_every_client() -> None:
    owner = _Owner()
    stats = ProxyStats()
    link = MeLink(owner, options=MiddleOptions(), stats=stats)
    clients = [_Client(i + 1) for i in range(3)]
    for client in clients:
        link.register(client)
    assert stats.me_clients_active == 3
    link.pause_writing()
    assert link.write_paused
    link.resume_writing()
    assert [c.events for c in clients] == [["pause", "resume"]] * 3
    link.unregister(2)  # not ready: nothing to send, but forgotten
    assert stats.me_clients_active == 2 and 2 not in link.clients
    link.connection_lost(ConnectionResetError())
    assert [c.events[-1] for c in clients] == ["lost", "resume", "lost"]
    assert owner.lost == [link] and stats.me_clients_active == 0
    ready: Any = await asyncio.wait_for(link.ready, 1)
    assert ready is False and "handshake" in link.failure
