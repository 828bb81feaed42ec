"""Clients through the proxy to a fake middle-end: framings, flags, tag, acks, closes, pings."""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import cast

import pytest
from fakes.middle_end import FakeMiddleEnd, quickack_token
from fakes.obfs import (
    TAG_ABRIDGED,
    TAG_INTERMEDIATE,
    TAG_PADDED,
    TAGS,
    ObfsStream,
    encode_quickack_confirm,
)
from fakes.telethon_dc import plain_message, req_pq_multi

from mtproxy.protocol.rpc import ProxyAns, SimpleAck
from mtproxy.protocol.rpc.constants import (
    FLAG_ABRIDGED,
    FLAG_EXTMODE2,
    FLAG_HAS_AD_TAG,
    FLAG_INTERMEDIATE,
    FLAG_MAGIC,
    FLAG_NOT_ENCRYPTED,
    FLAG_PAD,
    FLAG_QUICKACK,
)
from mtproxy.protocol.tlsrecords import FULL_RECORD, MIN_RECORD

from .harness import (
    AD_TAG,
    FAST,
    PROXY_SECRET,
    closes,
    middle_settings,
    open_client,
    packet,
    port_of,
    running_proxy,
    wait_for,
    write_inputs,
)

FRAMING_FLAGS = {
    TAG_ABRIDGED: FLAG_ABRIDGED,
    TAG_INTERMEDIATE: FLAG_INTERMEDIATE,
    TAG_PADDED: FLAG_INTERMEDIATE | FLAG_PAD,
}


def local_port(stream: ObfsStream) -> int:
    port: int = stream.writer.get_extra_info("sockname")[1]
    return port


async def echo(stream: ObfsStream, size: int = 64, quickack: bool = False) -> bytes:
    data = packet(size)
    stream.send_packet(data, quickack)
    await stream.drain()
    got = await stream.recv_packet_ex()
    if quickack:
        assert got.quickack, "quick ack expected before the answer"
        assert got.payload == encode_quickack_confirm(stream.tag, quickack_token(data))
        got = await stream.recv_packet_ex()
    assert not got.quickack
    assert got.payload == data
    return data


@pytest.mark.parametrize("tls", [False, True], ids=["obfs2", "faketls"])
@pytest.mark.parametrize("tag", TAGS, ids=["abridged", "intermediate", "padded"])
async def test_every_framing_with_ad_tag(tmp_path: Path, tag: bytes, tls: bool) -> None:
    async with FakeMiddleEnd(PROXY_SECRET) as me:
        config, secret = write_inputs(tmp_path / "in", {2: [me.address]})
        cli = middle_settings(tmp_path / "data", config, secret, tag=AD_TAG.hex())
        async with running_proxy(cli) as server:
            client = await open_client(server, tag, tls=tls)
            sent = [await echo(client, size) for size in (56, 64, 1024, 600_000)]
            sent.append(await echo(client, 128, quickack=True))
            requests = await me.wait_requests(len(sent))
            assert [r.payload for r in requests] == sent
            want = FLAG_MAGIC | FLAG_EXTMODE2 | FLAG_HAS_AD_TAG | FRAMING_FLAGS[tag]
            assert [r.flags for r in requests] == [want] * 4 + [want | FLAG_QUICKACK]
            first = requests[0]
            assert {r.ext_conn_id for r in requests} == {first.ext_conn_id}
            assert first.ad_tag == AD_TAG
            assert first.remote_ip == IPv4Address("127.0.0.1")
            assert first.remote_port == local_port(client)
            assert first.our_ip == IPv4Address("127.0.0.1")
            assert first.our_port == port_of(server)
            assert server.stats.me_quickacks == 1
            client.close()
            await me.wait_until(lambda: first.ext_conn_id in me.close_conns)


async def test_no_tag_no_flag(tmp_path: Path, loop_impl: str) -> None:
    async with FakeMiddleEnd(PROXY_SECRET) as me:
        config, secret = write_inputs(tmp_path / "in", {2: [me.address]})
        async with running_proxy(middle_settings(tmp_path / "data", config, secret)) as server:
            client = await open_client(server, TAG_INTERMEDIATE)
            await echo(client)
            (request,) = await me.wait_requests(1)
            assert request.ad_tag is None
            assert request.flags == FLAG_MAGIC | FLAG_EXTMODE2 | FLAG_INTERMEDIATE
            client.close()


async def test_auth_packets_are_filtered_like_the_official_proxy(tmp_path: Path) -> None:
    async with FakeMiddleEnd(PROXY_SECRET) as me:
        config, secret = write_inputs(tmp_path / "in", {2: [me.address]})
        async with running_proxy(middle_settings(tmp_path / "data", config, secret)) as server:
            client = await open_client(server, TAG_ABRIDGED)
            auth = plain_message(req_pq_multi(os.urandom(16)))
            bogus_function = plain_message(b"\x78\x56\x34\x12" + bytes(16))
            too_short = packet(56)[:48]
            client.send_packet(bogus_function)
            client.send_packet(too_short)
            client.send_packet(auth, quickack=True)
            await client.drain()
            ack = await client.recv_packet_ex()
            assert ack.quickack
            assert await client.recv_packet() == auth
            (request,) = await me.wait_requests(1)
            assert request.flags & FLAG_NOT_ENCRYPTED and request.flags & FLAG_QUICKACK
            assert request.payload == auth
            assert server.stats.me_packets_dropped == 2
            await echo(client)  # the connection goes on
            client.close()


async def test_close_ext_closes_only_that_client(tmp_path: Path, loop_impl: str) -> None:
    async with FakeMiddleEnd(PROXY_SECRET) as me:
        config, secret = write_inputs(tmp_path / "in", {2: [me.address]})
        cli = middle_settings(tmp_path / "data", config, secret, middle_max_connections="1")
        async with running_proxy(cli) as server:
            victim = await open_client(server, TAG_INTERMEDIATE)
            other = await open_client(server, TAG_PADDED, tls=True)
            sent = await echo(victim)
            await echo(other)
            (conn_id,) = {r.ext_conn_id for r in me.requests if r.payload == sent}
            await me.send_proxy_ans(conn_id, b"last" * 16)
            await me.send_close_ext(conn_id)
            assert await victim.recv_packet() == b"last" * 16  # queued data still arrives
            assert await closes(victim)
            await echo(other)
            assert server.stats.me_closed_by_telegram == 1
            assert conn_id not in me.close_conns  # the ME closed it; no RPC_CLOSE_CONN back
            other.close()


async def test_client_leaving_sends_close_conn(tmp_path: Path) -> None:
    async with FakeMiddleEnd(PROXY_SECRET) as me:
        config, secret = write_inputs(tmp_path / "in", {2: [me.address]})
        async with running_proxy(middle_settings(tmp_path / "data", config, secret)) as server:
            clients = [await open_client(server, tag) for tag in TAGS]
            for client in clients:
                await echo(client)
            ids = [r.ext_conn_id for r in await me.wait_requests(3)]
            assert len(set(ids)) == 3
            assert server.stats.me_clients_active == 3
            clients[1].close()
            await me.wait_until(lambda: me.close_conns == [ids[1]])
            clients[0].write_eof()  # a half-close ends the session too
            await me.wait_until(lambda: me.close_conns == [ids[1], ids[0]])
            await wait_for(lambda: server.stats.me_clients_active == 1)
            await echo(clients[2])
            clients[2].close()


async def test_answer_for_unknown_client_is_refused(tmp_path: Path) -> None:
    async with FakeMiddleEnd(PROXY_SECRET) as me:
        config, secret = write_inputs(tmp_path / "in", {2: [me.address]})
        async with running_proxy(middle_settings(tmp_path / "data", config, secret)):
            await me.wait_ready_connections(1)
            conn = me.ready_connections()[0]
            conn.send(ProxyAns(flags=0, conn_id=0xDEAD, payload=b"zzzz").encode())
            await me.wait_until(lambda: 0xDEAD in me.close_conns)


async def test_pings_both_ways(tmp_path: Path, loop_impl: str) -> None:
    async with FakeMiddleEnd(PROXY_SECRET) as me:
        config, secret = write_inputs(tmp_path / "in", {2: [me.address]})
        async with running_proxy(middle_settings(tmp_path / "data", config, secret)):
            await me.wait_ready_connections(1)
            await me.ping()  # the proxy answers with RPC_PONG
            await me.wait_until(lambda: me.pings_received >= 2, timeout=5)  # and pings itself
            assert len(me.connections) == 1  # nothing was reconnected


async def test_silent_middle_end_fails_the_client_quickly(tmp_path: Path) -> None:
    """A server that accepts but never answers the nonce: handshake timeout, backoff."""
    accepted: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read()

    silent = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    config, secret = write_inputs(tmp_path / "in", {2: [("127.0.0.1", port)]})
    options = FAST.__class__(**{**FAST.__dict__, "connect_timeout": 0.5})
    try:
        async with running_proxy(
            middle_settings(tmp_path / "data", config, secret), options
        ) as server:
            client = await open_client(server, TAG_INTERMEDIATE)
            client.send_packet(packet())
            assert await closes(client, timeout=5)
            assert server.stats.me_connect_failures >= 1
            assert server.stats.upstream_failures == 1
            await wait_for(lambda: len(accepted) >= 2, what="a reconnect after backoff")
    finally:
        for writer in accepted:
            writer.close()
        silent.close()
        await silent.wait_closed()


async def test_unknown_dc_without_default_is_refused(tmp_path: Path) -> None:
    async with FakeMiddleEnd(PROXY_SECRET) as me:
        config, secret = write_inputs(tmp_path / "in", {2: [me.address]})
        async with running_proxy(middle_settings(tmp_path / "data", config, secret)) as server:
            client = await open_client(server, TAG_INTERMEDIATE, dc_id=4)
            assert await closes(client)
            assert server.stats.upstream_failures == 1
            assert me.requests == []


async def test_bad_framing_closes_the_client(tmp_path: Path) -> None:
    async with FakeMiddleEnd(PROXY_SECRET) as me:
        config, secret = write_inputs(tmp_path / "in", {2: [me.address]})
        async with running_proxy(middle_settings(tmp_path / "data", config, secret)) as server:
            client = await open_client(server, TAG_INTERMEDIATE)
            await echo(client)
            client.write((7).to_bytes(4, "little") + b"1234567")  # not a multiple of 4
            await client.drain()
            assert await closes(client)
            await me.wait_until(lambda: len(me.close_conns) == 1)


async def test_quick_ack_for_unknown_client_and_unknown_opcodes(tmp_path: Path) -> None:
    async with FakeMiddleEnd(PROXY_SECRET) as me:
        config, secret = write_inputs(tmp_path / "in", {2: [me.address]})
        async with running_proxy(middle_settings(tmp_path / "data", config, secret)) as server:
            await me.wait_ready_connections(1)
            conn = me.ready_connections()[0]
            conn.send(SimpleAck(0xBEEF, b"\x80\x00\x00\x01").encode())
            await me.wait_until(lambda: 0xBEEF in me.close_conns)
            conn.send(struct.pack("<I", 0x12345678) + bytes(8))  # ignored, not fatal
            client = await open_client(server, TAG_INTERMEDIATE)
            data = packet()
            client.send_packet(data)
            await client.drain()
            async with asyncio.timeout(5):
                assert await client.recv_packet() == data
            assert len(me.connections) == 1
            client.close()


async def test_garbage_from_a_ready_middle_end_drops_only_that_connection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with FakeMiddleEnd(PROXY_SECRET) as me:
        config, secret = write_inputs(tmp_path / "in", {2: [me.address]})
        async with running_proxy(middle_settings(tmp_path / "data", config, secret)) as server:
            await wait_for(lambda: server.stats.me_connections_active == 1, what="a link")
            with caplog.at_level(logging.WARNING, logger="mtproxy.middle"):
                me.ready_connections()[0].writer.write(os.urandom(64))
                await wait_for(lambda: server.stats.me_disconnects == 1, what="the drop")
            assert "bad stream data from the middle-proxy" in caplog.text
            await wait_for(lambda: server.stats.me_connections_active == 1, what="a new link")
            assert len(me.connections) >= 2
            client = await open_client(server, TAG_ABRIDGED)
            data = packet()
            client.send_packet(data)
            await client.drain()
            async with asyncio.timeout(5):
                assert await client.recv_packet() == data
            client.close()


async def test_a_middle_end_that_stops_answering_is_left(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    options = replace(FAST, ping_interval=0.1, silence_timeout=0.5)
    async with FakeMiddleEnd(PROXY_SECRET) as me:
        config, secret = write_inputs(tmp_path / "in", {2: [me.address]})
        async with running_proxy(
            middle_settings(tmp_path / "data", config, secret), options
        ) as server:
            await wait_for(lambda: server.stats.me_connections_active == 1, what="a link")
            first = me.ready_connections()[0]
            transport = cast(asyncio.Transport, first.writer.transport)
            with caplog.at_level(logging.WARNING, logger="mtproxy.middle"):
                transport.pause_reading()  # our pings go unanswered
                await wait_for(lambda: server.stats.me_disconnects >= 1, what="the silence")
            assert "middle-proxy silent for" in caplog.text
            await me.wait_until(lambda: any(c.ready and c is not first for c in me.connections))
async def test_faketls_records_of_answers_and_quick_acks(tmp_path: Path, loop_impl: str) -> None:
    """Answers framed in place go out in TLS 1.3-sized records (a big one in full
    records of one write); a quick ack leads its answer, or goes alone after the hold."""
    async with FakeMiddleEnd(PROXY_SECRET) as me:
        config, secret = write_inputs(tmp_path / "in", {2: [me.address]})
        cli = middle_settings(tmp_path / "data", config, secret, tag=AD_TAG.hex())
        async with running_proxy(cli) as server:
            client = await open_client(server, TAG_INTERMEDIATE, tls=True)
            for size, quickack in ((56, False), (64, True), (1024, True), (600_000, False),
                                   (1 << 19, True)):  # fmt: skip
                await echo(client, size, quickack=quickack)
            assert client._tls_in is not None
            sizes = client._tls_in.sizes
            client.close()
    assert max(sizes) == FULL_RECORD
    # A quick ack is 4 bytes in this framing: the only size that may go alone.
    assert all(s >= MIN_RECORD or s == 4 for s in sizes), sizes
    full = sum(1 for s in sizes if s == FULL_RECORD)
    assert full >= (600_000 + (1 << 19)) // FULL_RECORD - 2, sizes
