"""A fake Telegram middle-end (ME) RPC server for integration tests, on loopback only.

It plays the server side of the official RPC protocol (net-tcp-rpc-server.c):

1. reads the proxy's plaintext RPC_NONCE and checks ``key_select`` (the secret's
   first 4 bytes), the crypto schema (AES) and ``crypto_ts`` (within 30 s);
2. answers with its own nonce and derives the AES-256-CBC keys from the client
   address *it sees* -- the socket peer, or ``public_client_ip`` to emulate NAT,
   so the proxy only succeeds if it derives keys with that public address;
3. decrypts the proxy's RPC_HANDSHAKE (a key mismatch shows up here as garbage
   and the connection is dropped silently, as a real ME does), checks that the
   peer pid the proxy names is this server, and answers, agreeing to CRC32C if
   asked and allowed;
4. records every RPC_PROXY_REQ and echoes its payload back as RPC_PROXY_ANS to
   the same connection id, preceded by RPC_SIMPLE_ACK when QUICKACK was set;
   records RPC_CLOSE_CONN; answers RPC_PING.

The frame codec and message classes come from ``mtproxy.protocol.rpc`` (it is the
peer's wire format), but the keys are derived here by separate code so that a
symmetric mistake in ``derive_keys`` cannot make both sides agree on wrong keys.

``handler`` replaces the echo: it gets each recorded request and returns the payloads
to answer with (RPC_PROXY_ANS each), e.g. an MTProto auth responder.

Test API: :meth:`FakeMiddleEnd.send_close_ext`, :meth:`~FakeMiddleEnd.send_proxy_ans`,
:meth:`~FakeMiddleEnd.ping`, :meth:`~FakeMiddleEnd.kill_connection`,
:meth:`~FakeMiddleEnd.stop`, and the ``wait_*`` helpers that block (with a
timeout) until something was recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, ip_address
from types import TracebackType

from mtproxy.protocol.rpc import (
    CloseConn,
    CloseExt,
    Handshake,
    HandshakeError,
    IPAddress,
    Nonce,
    Ping,
    Pong,
    ProcessId,
    ProxyAns,
    ProxyReq,
    RpcCodec,
    RpcError,
    RpcKeys,
    SimpleAck,
    parse_message,
)
from mtproxy.protocol.rpc.constants import FLAG_QUICKACK, RPC_CRYPTO_AES, RPCF_USE_CRC32C

READ_CHUNK = 65536


def quickack_token(payload: bytes) -> bytes:
    """The 4-byte confirm this fake puts into RPC_SIMPLE_ACK for a request payload."""
    return hashlib.sha256(payload).digest()[:4]


def _ip_for_kdf(ip: str) -> tuple[bytes, bytes]:
    """(4-byte IPv4 field, 16-byte IPv6 field) as aes_create_keys stores them."""
    if ":" in ip:
        return b"\0\0\0\0", socket.inet_pton(socket.AF_INET6, ip)
    # A host-order u32 written little-endian is the network-order bytes reversed.
    return socket.inet_aton(ip)[::-1], b""


def me_side_keys(
    *,
    nonce_srv: bytes,
    nonce_clt: bytes,
    clt_ts: int,
    server: tuple[str, int],
    client: tuple[str, int],
    secret: bytes,
) -> RpcKeys:
    """Keys of the ME (server) side, built the way the C code fills its buffer.

    Independent of ``mtproxy.protocol.rpc.keys`` on purpose: fixed offsets into a
    bytearray, and the read key obtained by XOR-flipping "SERVER" into "CLIENT" in
    place (net-crypto-aes.c:295-301).
    """
    srv4, srv6 = _ip_for_kdf(server[0])
    clt4, clt6 = _ip_for_kdf(client[0])
    if bool(srv6) != bool(clt6):
        raise ValueError("mixed address families")
    buf = bytearray(70 + len(secret) + len(srv6) + len(clt6) + 16)
    buf[0:16] = nonce_srv
    buf[16:32] = nonce_clt
    buf[32:36] = (clt_ts & 0xFFFFFFFF).to_bytes(4, "little")
    buf[36:40] = srv4
    buf[40:42] = client[1].to_bytes(2, "little")
    buf[42:48] = b"SERVER"
    buf[48:52] = clt4
    buf[52:54] = server[1].to_bytes(2, "little")
    at = 54
    buf[at : at + len(secret)] = secret
    at += len(secret)
    buf[at : at + 16] = nonce_srv
    at += 16
    buf[at : at + len(clt6)] = clt6
    at += len(clt6)
    buf[at : at + len(srv6)] = srv6
    at += len(srv6)
    buf[at : at + 16] = nonce_clt

    def pair(data: bytearray) -> tuple[bytes, bytes]:
        md5_1 = hashlib.md5(bytes(data[1:])).digest()
        sha = hashlib.sha1(bytes(data)).digest()
        return md5_1[:12] + sha, hashlib.md5(bytes(data[2:])).digest()

    write_key, write_iv = pair(buf)
    for i, (a, b) in enumerate(zip(b"SERVER", b"CLIENT", strict=True)):
        buf[42 + i] ^= a ^ b
    read_key, read_iv = pair(buf)
    return RpcKeys(write_key=write_key, write_iv=write_iv, read_key=read_key, read_iv=read_iv)


@dataclass(frozen=True)
class RecordedRequest:
    """One RPC_PROXY_REQ as the fake received it."""

    connection: int
    flags: int
    ext_conn_id: int
    remote_ip: IPAddress
    remote_port: int
    our_ip: IPAddress
    our_port: int
    ad_tag: bytes | None
    payload: bytes


@dataclass
class MeConnection:
    """One accepted RPC connection (index in accept order)."""

    index: int
    peer: tuple[str, int]
    local: tuple[str, int]
    writer: asyncio.StreamWriter
    codec: RpcCodec = field(default_factory=RpcCodec)
    ready: bool = False
    crc32c: bool = False
    closed: bool = False
    client_pid: ProcessId | None = None
    conn_ids: set[int] = field(default_factory=set)
    pending_pings: dict[int, asyncio.Future[None]] = field(default_factory=dict)

    def send(self, *payloads: bytes) -> None:
        if self.closed:
            raise ConnectionError(f"ME connection {self.index} is closed")
        self.writer.write(self.codec.encode_flush(*payloads))


class FakeMiddleEnd:
    """An asyncio RPC server that behaves like one Telegram middle-end.

    ``secret`` is the proxy secret both sides share (getProxySecret). Set
    ``public_client_ip`` to the address a NATed proxy would appear from; the
    proxy must then use it as its client IP in the key derivation. ``clock``
    gives the fake's unix time (shift it to test the 30 s skew rule).
    """

    def __init__(
        self,
        secret: bytes,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        public_client_ip: str | None = None,
        allow_crc32c: bool = True,
        simple_ack: bool = True,
        echo: bool = True,
        ans_flags: int = 0,
        check_peer_pid: bool = True,
        clock: Callable[[], float] = time.time,
        handler: Callable[[RecordedRequest], Sequence[bytes]] | None = None,
    ) -> None:
        if len(secret) < 4:
            raise ValueError("secret too short")
        self.secret = secret
        self.key_select = int.from_bytes(secret[:4], "little")
        self.host = host
        self.port = port
        self.public_client_ip = public_client_ip
        self.allow_crc32c = allow_crc32c
        self.simple_ack = simple_ack
        self.echo = echo
        self.ans_flags = ans_flags
        self.check_peer_pid = check_peer_pid
        self.clock = clock
        self.handler = handler
        self.pings_received = 0
        self.started_at = int(clock())
        self.requests: list[RecordedRequest] = []
        self.close_conns: list[int] = []
        self.unknown: list[tuple[int, bytes]] = []
        self.failures: list[str] = []
        self.connections: list[MeConnection] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()

    # --- lifecycle ------------------------------------------------------------

    async def start(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        sockname = self._server.sockets[0].getsockname()
        self.port = int(sockname[1])
        return self.address

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    async def stop(self) -> None:
        """Close the listener and abort every connection."""
        if self._server is not None:
            self._server.close()
        for conn in self.connections:
            self._abort(conn)
        # Aborted transports end the handlers' reads; cancel only a straggler, because
        # asyncio logs an error for a cancelled start_server handler.
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=2.0)
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FakeMiddleEnd:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- test API ---------------------------------------------------------------

    def ready_connections(self) -> list[MeConnection]:
        return [c for c in self.connections if c.ready and not c.closed]

    def connection_for(self, conn_id: int) -> MeConnection:
        """The ME connection that last carried requests for ``conn_id``."""
        for conn in reversed(self.connections):
            if conn_id in conn.conn_ids and not conn.closed:
                return conn
        raise KeyError(f"no open ME connection carried conn_id {conn_id:#x}")

    def _pick(self, connection: MeConnection | int | None) -> MeConnection:
        if isinstance(connection, MeConnection):
            return connection
        if isinstance(connection, int):
            return self.connections[connection]
        ready = self.ready_connections()
        if not ready:
            raise ConnectionError("no ready ME connection")
        return ready[-1]

    async def send_close_ext(self, conn_id: int) -> None:
        """Tell the proxy that the DC side of ``conn_id`` closed."""
        conn = self.connection_for(conn_id)
        conn.send(CloseExt(conn_id).encode())
        await conn.writer.drain()

    async def send_proxy_ans(self, conn_id: int, payload: bytes, flags: int = 0) -> None:
        """Push DC data for ``conn_id`` without a request."""
        conn = self.connection_for(conn_id)
        conn.send(ProxyAns(flags=flags, conn_id=conn_id, payload=payload).encode())
        await conn.writer.drain()

    async def ping(
        self, connection: MeConnection | int | None = None, *, timeout: float = 5.0
    ) -> int:
        """Send RPC_PING and wait for the matching RPC_PONG; return the ping id."""
        conn = self._pick(connection)
        ping_id = int.from_bytes(os.urandom(8), "little")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        conn.pending_pings[ping_id] = waiter
        conn.send(Ping(ping_id).encode())
        await conn.writer.drain()
        try:
            await asyncio.wait_for(waiter, timeout)
        finally:
            conn.pending_pings.pop(ping_id, None)
        return ping_id

    async def kill_connection(self, connection: MeConnection | int | None = None) -> None:
        """Drop a connection abruptly (TCP reset), like a crashed ME."""
        conn = self._pick(connection)
        self._abort(conn)
        await asyncio.sleep(0)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Block until ``predicate()`` holds; TimeoutError after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def wait_requests(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        await self.wait_until(lambda: len(self.requests) >= count, timeout)
        return self.requests

    async def wait_ready_connections(self, count: int, timeout: float = 5.0) -> None:
        await self.wait_until(lambda: len(self.ready_connections()) >= count, timeout)

    async def wait_failures(self, count: int, timeout: float = 5.0) -> list[str]:
        await self.wait_until(lambda: len(self.failures) >= count, timeout)
        return self.failures

    # --- server side ------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()

    def _abort(self, conn: MeConnection) -> None:
        if not conn.closed:
            conn.closed = True
            conn.writer.transport.abort()
            for waiter in conn.pending_pings.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionError("ME connection killed"))
            self._notify()

    def _fail(self, conn: MeConnection, reason: str) -> None:
        self.failures.append(f"connection {conn.index}: {reason}")
        self._abort(conn)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")
        conn = MeConnection(
            index=len(self.connections),
            peer=(str(peer[0]), int(peer[1])),
            local=(str(local[0]), int(local[1])),
            writer=writer,
        )
        self.connections.append(conn)
        self._notify()
        try:
            while not conn.closed:
                data = await reader.read(READ_CHUNK)
                if not data:
                    break
                try:
                    payloads = conn.codec.feed(data)
                except RpcError as exc:
                    stage = "handshake" if not conn.ready else "stream"
                    self._fail(conn, f"undecodable {stage} data ({exc}); keys differ?")
                    break
                self._handle(conn, payloads)
                if not conn.closed:
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if not conn.closed:
                conn.closed = True
                writer.close()
                for waiter in conn.pending_pings.values():
                    if not waiter.done():
                        waiter.set_exception(ConnectionError("ME connection closed"))
            self._notify()
            self._tasks.discard(task)

    def _handle(self, conn: MeConnection, payloads: list[bytes]) -> None:
        while payloads and not conn.closed:
            payload = payloads.pop(0)
            if conn.codec.encrypted is False:
                self._on_nonce(conn, payload)
                if not conn.closed:
                    try:
                        payloads.extend(conn.codec.feed(b""))
                    except RpcError as exc:
                        self._fail(conn, f"undecodable handshake data ({exc}); keys differ?")
            elif not conn.ready:
                self._on_handshake(conn, payload)
                if not conn.closed:  # frames after the handshake use the agreed CRC
                    payloads.extend(conn.codec.feed(b""))
            else:
                self._on_message(conn, payload)
        self._notify()

    def _on_nonce(self, conn: MeConnection, payload: bytes) -> None:
        try:
            nonce = Nonce.decode(payload)
        except RpcError as exc:
            self._fail(conn, f"bad nonce: {exc}")
            return
        now = int(self.clock())
        if nonce.key_select != self.key_select:
            self._fail(conn, f"key_select {nonce.key_select:08x} != {self.key_select:08x}")
            return
        if nonce.crypto_schema != RPC_CRYPTO_AES:
            self._fail(conn, f"crypto schema {nonce.crypto_schema} is not AES")
            return
        if abs(nonce.crypto_ts - now) > 30:
            self._fail(conn, f"crypto_ts {nonce.crypto_ts} too far from {now}")
            return
        my_nonce = os.urandom(16)
        reply = Nonce(key_select=self.key_select, crypto_ts=now & 0xFFFFFFFF, nonce=my_nonce)
        conn.writer.write(conn.codec.encode(reply.encode()))
        client_ip = self.public_client_ip or conn.peer[0]
        keys = me_side_keys(
            nonce_srv=my_nonce,
            nonce_clt=nonce.nonce,
            clt_ts=nonce.crypto_ts,
            server=conn.local,
            client=(client_ip, conn.peer[1]),
            secret=self.secret,
        )
        conn.codec.start_encryption(keys)

    def _own_pid(self, conn: MeConnection) -> ProcessId:
        addr = ip_address(conn.local[0])
        ip = int(addr) if isinstance(addr, IPv4Address) and int(addr) != 0x7F000001 else 0
        return ProcessId(ip=ip, port=conn.local[1], pid=os.getpid() & 0xFFFF, utime=self.started_at)

    def _on_handshake(self, conn: MeConnection, payload: bytes) -> None:
        own = self._own_pid(conn)
        try:
            message = parse_message(payload)
        except RpcError as exc:
            self._fail(conn, f"bad handshake: {exc}")
            return
        if not isinstance(message, Handshake):
            self._fail(conn, f"expected RPC_HANDSHAKE, got {type(message).__name__}")
            return
        if message.flags & 0xFF:
            conn.send(HandshakeError(error_code=-7, sender_pid=own).encode())
            self._fail(conn, f"handshake flags {message.flags:#x}")
            return
        if self.check_peer_pid and not own.matches(message.peer_pid):
            conn.send(HandshakeError(error_code=-4, sender_pid=own).encode())
            self._fail(conn, f"handshake names peer {message.peer_pid}, we are {own}")
            return
        crc32c = bool(message.flags & RPCF_USE_CRC32C) and self.allow_crc32c
        reply = Handshake(
            flags=RPCF_USE_CRC32C if crc32c else 0,
            sender_pid=own,
            peer_pid=message.sender_pid,
        )
        conn.send(reply.encode())
        conn.codec.set_crc32c(crc32c)
        conn.crc32c = crc32c
        conn.client_pid = message.sender_pid
        conn.ready = True

    def _on_message(self, conn: MeConnection, payload: bytes) -> None:
        try:
            message = parse_message(payload)
        except RpcError as exc:
            self._fail(conn, f"bad message: {exc}")
            return
        if isinstance(message, ProxyReq):
            conn.conn_ids.add(message.conn_id)
            recorded = RecordedRequest(
                connection=conn.index,
                flags=message.flags,
                ext_conn_id=message.conn_id,
                remote_ip=message.remote_ip,
                remote_port=message.remote_port,
                our_ip=message.our_ip,
                our_port=message.our_port,
                ad_tag=message.ad_tag,
                payload=message.payload,
            )
            self.requests.append(recorded)
            answers = []
            if self.simple_ack and message.flags & FLAG_QUICKACK:
                ack = SimpleAck(conn_id=message.conn_id, confirm=quickack_token(message.payload))
                answers.append(ack.encode())
            if self.handler is not None:
                for reply in self.handler(recorded):
                    answers.append(ProxyAns(self.ans_flags, message.conn_id, reply).encode())
            elif self.echo:
                ans = ProxyAns(
                    flags=self.ans_flags, conn_id=message.conn_id, payload=message.payload
                )
                answers.append(ans.encode())
            if answers:
                conn.send(*answers)
        elif isinstance(message, CloseConn):
            self.close_conns.append(message.conn_id)
            conn.conn_ids.discard(message.conn_id)
        elif isinstance(message, Ping):
            self.pings_received += 1
            conn.send(message.pong().encode())
        elif isinstance(message, Pong):
            waiter = conn.pending_pings.get(message.ping_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        else:
            self.unknown.append((conn.index, payload))


__all__ = [
    "FakeMiddleEnd",
    "MeConnection",
    "RecordedRequest",
    "me_side_keys",
    "quickack_token",
]
