"""The listener's two accept paths and the switch between them, over loopback.

uvloop's own path serves while connections stay below ``careful_from``; ours takes
over near the cap and refuses past it without making a transport; the loop's path
comes back once the crowd has gone. With asyncio only our path is ever used.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from mtproxy.proxy.accept import Listener, careful_from


class Counting(asyncio.Protocol):
    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.policy.open.add(self)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.policy.open.discard(self)


class Policy:
    def __init__(self, cap: int, careful: int) -> None:
        self.cap = cap
        self.careful_from = careful
        self.calm_until = 0.0
        self.open: set[Counting] = set()
        self.refusals = 0
        self.shortages: list[OSError] = []

    def connection_factory(self) -> asyncio.BaseProtocol:
        return Counting(self)

    def connections(self) -> int:
        return len(self.open)

    def full(self, pending: int) -> bool:
        return len(self.open) + pending >= self.cap

    def note_refusal(self) -> None:
        self.refusals += 1

    def note_shortage(self, exc: OSError) -> None:
        self.shortages.append(exc)


async def until(check: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def dial(port: int, count: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    return [await asyncio.open_connection("127.0.0.1", port) for _ in range(count)]


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        async with asyncio.timeout(2):
            return await reader.read() == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


def listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def test_careful_from_is_a_little_below_the_limit() -> None:
    assert careful_from(0) > 10**15
    assert careful_from(100) == 84
    assert careful_from(10_000) == 10_000 - 625


@pytest.mark.parametrize("backlog", [2, 128])
async def test_paths_switch_near_the_cap_and_back(loop_impl: str, backlog: int) -> None:
    """With backlog 2 the loop's path starts in its fast zone (where a whole backlog
    cannot reach careful_from) and crosses into the counted one."""
    loop = asyncio.get_running_loop()
    policy = Policy(cap=8, careful=4)
    sock = listening()
    port = sock.getsockname()[1]
    listener = Listener(loop, sock, policy, backlog=backlog)
    await listener.start()
    native = "native" if loop_impl == "uvloop" else "ours"
    clients = []
    try:
        assert listener.mode == native
        clients += await dial(port, 3)
        await until(lambda: len(policy.open) == 3)
        assert listener.mode == native
        clients += await dial(port, 3)  # past careful_from: our path takes over
        await until(lambda: len(policy.open) == 6)
        await until(lambda: listener.mode == "ours")
        clients += await dial(port, 4)  # two fit, two are refused
        await until(lambda: policy.refusals == 2)
        assert len(policy.open) == 8
        assert [await closed_by_server(r) for r, _ in clients[-2:]] == [True, True]
        for _, writer in clients:
            writer.close()
        await until(lambda: not policy.open)
        clients = await dial(port, 1)  # the next client brings the loop's path back
        await until(lambda: len(policy.open) == 1)
        await until(lambda: listener.mode == native)
        clients += await dial(port, 1)
        await until(lambda: len(policy.open) == 2)
        assert policy.shortages == [] and policy.refusals == 2
    finally:
        for _, writer in clients:
            writer.close()
        listener.close()
        await listener.wait_closed()
    assert listener.mode == "closed"
    assert sock.fileno() == -1


async def test_a_shortage_elsewhere_sends_the_listener_to_our_path(loop_impl: str) -> None:
    loop = asyncio.get_running_loop()
    policy = Policy(cap=1000, careful=900)
    sock = listening()
    listener = Listener(loop, sock, policy, backlog=128)
    await listener.start()
    try:
        listener.be_careful()
        policy.calm_until = loop.time() + 60  # what the server does on a shortage
        await until(lambda: listener.mode == "ours")
        clients = await dial(sock.getsockname()[1], 2)
        await until(lambda: len(policy.open) == 2)
        assert listener.mode == "ours"  # not while the shortage is recent
        for _, writer in clients:
            writer.close()
    finally:
        listener.close()
        await listener.wait_closed()
