"""Self-test of the fake middle-end: a minimal proxy-side client built from the
sans-I/O modules talks to it over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from ipaddress import IPv4Address, ip_address

import pytest
from fakes.middle_end import FakeMiddleEnd, quickack_token

from mtproxy.protocol.rpc import (
    ClientFraming,
    CloseConn,
    CloseExt,
    Ping,
    Pong,
    ProxyAns,
    ProxyReq,
    RpcClient,
    RpcMessage,
    SimpleAck,
    proxy_req_flags,
)
from mtproxy.protocol.rpc.constants import FLAG_HAS_AD_TAG, FLAG_NOT_ENCRYPTED, FLAG_QUICKACK

SECRET = bytes.fromhex("c4f9faca") + bytes(range(1, 125))
AD_TAG = bytes.fromhex("0123456789abcdef0123456789abcdef")


class MiniClient:
    """The proxy side of one ME connection: RpcClient over asyncio streams."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rpc: RpcClient
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.rpc = rpc
        self.inbox: asyncio.Queue[RpcMessage | None] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls,
        me: FakeMiddleEnd,
        *,
        secret: bytes = SECRET,
        public_ip: str | None = None,
        request_crc32c: bool = False,
    ) -> MiniClient:
        reader, writer = await asyncio.open_connection(*me.address)
        local = writer.get_extra_info("sockname")
        peer = writer.get_extra_info("peername")
        rpc = RpcClient(
            secret=secret,
            local=(local[0], local[1]),
            remote=(peer[0], peer[1]),
            public_ip=public_ip,
            now=int(time.time()),
            request_crc32c=request_crc32c,
        )
        return cls(reader, writer, rpc)

    async def handshake(self, timeout: float = 5.0) -> None:
        """Run the handshake; raise ConnectionError if the ME hangs up first."""
        self.writer.write(self.rpc.initiate())
        async with asyncio.timeout(timeout):
            while not self.rpc.ready:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("ME closed the connection during the handshake")
                assert self.rpc.receive(data) == []
                self.writer.write(self.rpc.data_to_send())
        self._pump = asyncio.create_task(self._read_loop())

    async def _read_loop(self) -> None:
        try:
            while data := await self.reader.read(65536):
                for message in self.rpc.receive(data):
                    await self.inbox.put(message)
                self.writer.write(self.rpc.data_to_send())  # pongs
        except ConnectionError:
            pass
        await self.inbox.put(None)

    async def send(self, *messages: RpcMessage) -> None:
        self.rpc.send(*messages)
        self.writer.write(self.rpc.data_to_send())
        await self.writer.drain()

    async def receive(self, count: int, timeout: float = 5.0) -> list[RpcMessage]:
        got: list[RpcMessage] = []
        async with asyncio.timeout(timeout):
            while len(got) < count:
                message = await self.inbox.get()
                if message is None:
                    raise ConnectionError(f"ME closed after {len(got)} of {count} messages")
                got.append(message)
        return got

    async def wait_closed_by_peer(self, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while (message := await self.inbox.get()) is not None:
                del message

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def make_req(
    conn_id: int,
    payload: bytes,
    *,
    framing: ClientFraming,
    quickack: bool = False,
    ad_tag: bytes | None = None,
) -> ProxyReq:
    flags = proxy_req_flags(
        framing,
        auth_key_id=int.from_bytes(payload[:8], "little"),
        quickack=quickack,
        has_ad_tag=ad_tag is not None,
    )
    return ProxyReq(
        flags=flags,
        conn_id=conn_id,
        remote_ip=ip_address("198.51.100.20"),
        remote_port=40000 + conn_id % 1000,
        our_ip=ip_address("192.0.2.1"),
        our_port=443,
        payload=payload,
        ad_tag=ad_tag,
    )


@pytest.mark.timeout_s(20)
@pytest.mark.parametrize("crc32c", [False, True])
async def test_proxy_reqs_are_recorded_echoed_and_acked(crc32c: bool) -> None:
    async with FakeMiddleEnd(SECRET) as me:
        client = await MiniClient.connect(me, request_crc32c=crc32c)
        await client.handshake()
        assert client.rpc.crc32c is crc32c
        await me.wait_ready_connections(1)
        assert me.connections[0].crc32c is crc32c

        encrypted = os.urandom(8) + os.urandom(56)
        plain = bytes(8) + os.urandom(40)
        reqs = [
            make_req(0x1111, encrypted, framing=ClientFraming.ABRIDGED, quickack=True),
            make_req(0x2222, os.urandom(96), framing=ClientFraming.INTERMEDIATE, ad_tag=AD_TAG),
            make_req(0xFFFF_FFFF_FFFF_FFF3, plain, framing=ClientFraming.PADDED),
        ]
        await client.send(*reqs)
        messages = await client.receive(4)

        recorded = await me.wait_requests(3)
        assert [r.ext_conn_id for r in recorded] == [r.conn_id for r in reqs]
        for rec, req in zip(recorded, reqs, strict=True):
            assert (rec.flags, rec.payload, rec.ad_tag) == (req.flags, req.payload, req.ad_tag)
            assert rec.remote_ip == IPv4Address("198.51.100.20")
            assert (rec.remote_port, rec.our_ip, rec.our_port) == (
                req.remote_port,
                IPv4Address("192.0.2.1"),
                443,
            )
        assert recorded[0].flags & FLAG_QUICKACK
        assert recorded[1].flags & FLAG_HAS_AD_TAG and recorded[1].ad_tag == AD_TAG
        assert recorded[2].flags & FLAG_NOT_ENCRYPTED

        acks = [m for m in messages if isinstance(m, SimpleAck)]
        answers = [m for m in messages if isinstance(m, ProxyAns)]
        assert acks == [SimpleAck(conn_id=0x1111, confirm=quickack_token(encrypted))]
        assert [(a.conn_id, a.payload) for a in answers] == [(r.conn_id, r.payload) for r in reqs]
        # The ack for a request arrives before its answer.
        assert messages.index(acks[0]) < messages.index(answers[0])
        await client.close()


@pytest.mark.timeout_s(20)
async def test_close_ext_ping_and_close_conn() -> None:
    async with FakeMiddleEnd(SECRET) as me:
        client = await MiniClient.connect(me)
        await client.handshake()
        for conn_id in (1, 2, 3):
            await client.send(make_req(conn_id, os.urandom(32), framing=ClientFraming.ABRIDGED))
        await client.receive(3)

        await me.send_close_ext(2)
        assert await client.receive(1) == [CloseExt(2)]

        await me.send_proxy_ans(3, b"push" * 4, flags=8)
        assert await client.receive(1) == [ProxyAns(flags=8, conn_id=3, payload=b"push" * 4)]

        # The ME pings; the client answers on its own (RpcClient queues the pong).
        ping_id = await me.ping(timeout=3)
        [seen] = await client.receive(1)
        assert seen == Ping(ping_id)

        await client.send(Ping(77))
        assert await client.receive(1) == [Pong(77)]

        await client.send(CloseConn(1))
        await me.wait_until(lambda: me.close_conns == [1])
        with pytest.raises(KeyError):
            me.connection_for(1)
        assert me.failures == []
        await client.close()


@pytest.mark.timeout_s(20)
async def test_nat_public_ip_must_be_used_for_keys() -> None:
    async with FakeMiddleEnd(SECRET, public_client_ip="203.0.113.7") as me:
        good = await MiniClient.connect(me, public_ip="203.0.113.7")
        await good.handshake()
        await good.send(make_req(5, b"abcd" * 8, framing=ClientFraming.INTERMEDIATE))
        [answer] = await good.receive(1)
        assert answer == ProxyAns(flags=0, conn_id=5, payload=b"abcd" * 8)

        bad = await MiniClient.connect(me)  # uses its socket address 127.0.0.1
        with pytest.raises(ConnectionError):
            await bad.handshake()
        [failure] = await me.wait_failures(1)
        assert "keys differ" in failure
        assert not bad.rpc.ready
        await good.close()
        await bad.close()


@pytest.mark.timeout_s(20)
async def test_wrong_secret_and_clock_skew_are_refused() -> None:
    async with FakeMiddleEnd(SECRET) as me:
        other = bytes.fromhex("01020304") + SECRET[4:]
        client = await MiniClient.connect(me, secret=other)
        with pytest.raises(ConnectionError):
            await client.handshake()
        [failure] = await me.wait_failures(1)
        assert "key_select" in failure
        await client.close()

    async with FakeMiddleEnd(SECRET, clock=lambda: time.time() + 120) as me:
        client = await MiniClient.connect(me)
        with pytest.raises(ConnectionError):
            await client.handshake()
        [failure] = await me.wait_failures(1)
        assert "crypto_ts" in failure
        await client.close()


@pytest.mark.timeout_s(20)
async def test_kill_connection_and_stop() -> None:
    me = FakeMiddleEnd(SECRET)
    address = await me.start()
    try:
        client = await MiniClient.connect(me)
        await client.handshake()
        await me.wait_ready_connections(1)
        await me.kill_connection()
        await client.wait_closed_by_peer()
        await client.close()

        second = await MiniClient.connect(me)
        await second.handshake()
        await me.wait_ready_connections(1)
        assert len(me.connections) == 2
    finally:
        await me.stop()
    await second.wait_closed_by_peer()
    await second.close()
    with pytest.raises(OSError):
        await asyncio.open_connection(*address)


@pytest.mark.timeout_s(20)
async def test_ipv6_connection_uses_ipv6_key_variant() -> None:
    async with FakeMiddleEnd(SECRET, host="::1") as me:
        client = await MiniClient.connect(me)
        await client.handshake()
        await client.send(make_req(9, b"v6v6" * 4, framing=ClientFraming.ABRIDGED))
        assert await client.receive(1) == [ProxyAns(flags=0, conn_id=9, payload=b"v6v6" * 4)]
        await client.close()
