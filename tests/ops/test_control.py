"""The supervisor <-> worker channel over a real socketpair: requests and replies both
ways, notifications, a failing handler, and a peer that breaks the framing or goes."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from mtproxy.ops.control import LENGTH, MAX_MESSAGE, Channel, Message


class Peer:
    """One end's handler: records notifications, answers ``add``, fails on ``boom``."""

    def __init__(self) -> None:
        self.notes: list[Message] = []

    async def __call__(self, message: Message) -> Message | None:
        op = message.get("op")
        if op == "add":
            return {"sum": message["a"] + message["b"]}
        if op == "boom":
            raise RuntimeError("handler bug")
        if op == "mute":
            return None
        self.notes.append(message)
        return None


@asynccontextmanager
async def channel_pair() -> AsyncIterator[tuple[Channel, Channel, Peer, Peer]]:
    left_sock, right_sock = socket.socketpair()
    left_peer, right_peer = Peer(), Peer()
    left = await Channel.open(left_sock, left_peer)
    right = await Channel.open(right_sock, right_peer)
    try:
        yield left, right, left_peer, right_peer
    finally:
        await left.close()
        await right.close()


async def test_requests_both_ways_and_notifications() -> None:
    async with channel_pair() as (left, right, left_peer, right_peer):
        assert await left.ask({"op": "add", "a": 2, "b": 3}, 5) == {"sum": 5, "re": 1}
        assert (await right.ask({"op": "add", "a": 1, "b": 1}, 5))["sum"] == 2
        right.send({"op": "note", "n": 7})
        for _ in range(200):
            if left_peer.notes:
                break
            await asyncio.sleep(0.01)
        assert left_peer.notes == [{"op": "note", "n": 7}] and right_peer.notes == []


async def test_a_failing_handler_answers_error_and_keeps_the_channel(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with channel_pair() as (left, right, _, _):
        with caplog.at_level(logging.ERROR, logger="mtproxy.control"):
            assert (await left.ask({"op": "boom"}, 5))["error"] is True
        assert "control request boom failed" in caplog.text
        right.send({"op": "boom"})  # a failing notification gets no reply at all
        assert (await left.ask({"op": "add", "a": 0, "b": 4}, 5))["sum"] == 4


async def test_a_request_without_answer_times_out_and_is_forgotten() -> None:
    async with channel_pair() as (left, _, _, _):
        with pytest.raises(TimeoutError):
            await left.ask({"op": "mute"}, 0.2)
        assert left._waiting == {}


async def test_an_oversized_frame_closes_the_channel_and_fails_the_waiters() -> None:
    left_sock, right_sock = socket.socketpair()
    left = await Channel.open(left_sock, Peer())
    try:
        pending = left.request({"op": "add", "a": 1, "b": 2})
        right_sock.sendall(LENGTH.pack(MAX_MESSAGE + 1))
        with pytest.raises(ConnectionError, match="control channel closed"):
            await asyncio.wait_for(pending, 5)
        assert left.closed.is_set()
        with pytest.raises(ConnectionError):
            left.send({"op": "note"})
        with pytest.raises(ConnectionError):
            left.request({"op": "add", "a": 1, "b": 2})
        assert left._waiting == {}
    finally:
        right_sock.close()
        await left.close()


async def test_a_reply_nobody_waits_for_is_dropped() -> None:
    left_sock, right_sock = socket.socketpair()
    left = await Channel.open(left_sock, Peer())
    try:
        stray = b'{"re":99,"sum":1}'
        right_sock.sendall(LENGTH.pack(len(stray)) + stray)
        right_sock.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=right_sock)
        body = b'{"op":"add","a":5,"b":6,"id":1}'
        writer.write(LENGTH.pack(len(body)) + body)
        head = await asyncio.wait_for(reader.readexactly(LENGTH.size), 5)
        reply = await reader.readexactly(LENGTH.unpack(head)[0])
        assert reply == b'{"sum":11,"re":1}' and not left.closed.is_set()
        writer.close()
        await asyncio.wait_for(left.closed.wait(), 5)  # the peer went: closed, no error
    finally:
        await left.close()
