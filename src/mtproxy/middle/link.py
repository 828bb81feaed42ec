"""One RPC connection to a middle-proxy, shared by many clients (keyed by connection id).

The handshake and framing are :class:`~mtproxy.protocol.rpc.RpcClient`; this class only
moves its bytes, routes answers to the client they belong to, pings, and spreads
back-pressure: when the connection cannot send, every client on it stops reading;
when one client cannot take its answers, only that client suffers (see
:class:`~mtproxy.middle.upstream.MiddleUpstream`).

Where the CPU goes (profiled on downloads): system calls first, then fresh memory
(page faults cost more than AES here), then CRC and AES. So a link reads into a
buffer shared by every link of the event loop and decrypts into a second shared one
(no allocation per read); answers are framed for their client inside the decrypted
frame (see MiddleUpstream.answer); and what clients send is queued as plaintext and
written, encrypted in one pass, once per event-loop iteration, so requests of many
clients share one system call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from typing import TYPE_CHECKING, Final, Protocol, cast

from mtproxy.protocol.bufferpool import BufferPool
from mtproxy.protocol.rpc import CloseConn, IPAddress, Ping, Pong, RpcClient, RpcError
from mtproxy.protocol.rpc.client import RpcClientState
from mtproxy.protocol.rpc.codec import DECRYPT_SLACK
from mtproxy.protocol.rpc.constants import (
    RPC_CLOSE_EXT,
    RPC_PING,
    RPC_PONG,
    RPC_PROXY_ANS,
    RPC_SIMPLE_ACK,
)
from mtproxy.proxy.sockets import set_keepalive

if TYPE_CHECKING:
    from mtproxy.middle.options import MiddleOptions
    from mtproxy.proxy.stats import ProxyStats

log = logging.getLogger("mtproxy.middle.link")

_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")
_ACK: Final = struct.Struct("<Q4s")
#: Bytes read from a middle-proxy connection at once.
READ_SIZE: Final = 256 * 1024


class LinkBuffers:
    """The receive buffer and the decryption buffer every link of one loop shares.

    Both are used only inside one ``buffer_updated`` call: what is left of a frame
    split across reads is copied out by the codec before the call returns.
    """

    __slots__ = ("plain", "raw", "raw_view")

    def __init__(self, size: int = READ_SIZE) -> None:
        self.raw = bytearray(size)
        self.raw_view = memoryview(self.raw)
        self.plain = bytearray(size + DECRYPT_SLACK)


class LinkClient(Protocol):
    """What a link needs from the per-client side (MiddleUpstream)."""

    conn_id: int

    def answer(self, frame: memoryview) -> None:
        """An RPC_PROXY_ANS for this client, as its whole writable frame: the answer's
        data is ``frame[24:-4]``, and the bytes around it may be overwritten."""
    def quickack(self, confirm: bytes) -> None: ...
    def closed_by_telegram(self) -> None: ...
    def link_lost(self) -> None: ...
    def pause_client(self) -> None: ...
    def resume_client(self) -> None: ...


class LinkOwner(Protocol):
    """The pool a link reports to."""

    def link_lost(self, link: MeLink) -> None: ...
    def link_idle(self, link: MeLink) -> None: ...


class MeLink(asyncio.BufferedProtocol):
    """asyncio protocol of one middle-proxy connection; call :meth:`start` once connected."""

    def __init__(
        self,
        owner: LinkOwner,
        *,
        options: MiddleOptions,
        stats: ProxyStats,
        keepalive: int = 0,
        label: str = "",
        buffers: LinkBuffers | None = None,
    ) -> None:
        self.owner = owner
        self.buffers = buffers or LinkBuffers()
        self.options = options
        self.stats = stats
        self.keepalive = keepalive
        self.label = label
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.rpc: RpcClient | None = None
        self.clients: dict[int, LinkClient] = {}
        #: True once the handshake finished, False if the connection ended before.
        self.ready: asyncio.Future[bool] = self.loop.create_future()
        self.write_paused = False
        self.closed = False
        self.failure = ""
        self.last_heard = self.loop.time()
        self._flush_handle: asyncio.Handle | None = None
        self._ping_handle: asyncio.TimerHandle | None = None
        self._ping_sent: tuple[int, float] | None = None
        #: Seconds from our last answered RPC_PING to its RPC_PONG (None before one).
        self.rtt: float | None = None

    def __repr__(self) -> str:
        return f"<MeLink {self.label} clients={len(self.clients)}>"

    @property
    def queued(self) -> int:
        """Bytes waiting to go to the middle-proxy: in the socket's buffer and ours."""
        transport = self.transport
        pending = transport.get_write_buffer_size() if transport is not None else 0
        return pending + (self.rpc.queued if self.rpc is not None else 0)

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and self.keepalive:
            set_keepalive(sock, self.keepalive)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffers.raw_view

    def buffer_updated(self, nbytes: int) -> None:
        self.last_heard = self.loop.time()
        rpc = self.rpc
        if rpc is None:
            self._fail("middle-proxy spoke before our nonce")
            return
        buffers = self.buffers
        try:
            frames = rpc.receive_frames(buffers.raw_view[:nbytes], buffers.plain)
        except RpcError as exc:
            stage = "handshake" if not self.ready.done() else "stream"
            self._fail(f"bad {stage} data from the middle-proxy: {exc}")
            return
        if not self.ready.done() and rpc.ready:
            self.ready.set_result(True)
            self._ping_handle = self.loop.call_later(self.options.ping_interval, self._ping)
        clients = self.clients
        unpack_u32, unpack_u64 = _U32.unpack_from, _U64.unpack_from
        for frame in frames:
            size = len(frame) - 12  # the message: frame[8:-4]
            (opcode,) = unpack_u32(frame, 8)
            if opcode == RPC_PROXY_ANS and size >= 16:
                (conn_id,) = unpack_u64(frame, 16)
                client = clients.get(conn_id)
                if client is not None:
                    client.answer(frame)
                else:
                    self._orphan(conn_id)
            elif opcode == RPC_SIMPLE_ACK and size == 16:
                conn_id, confirm = _ACK.unpack_from(frame, 12)
                client = clients.get(conn_id)
                if client is not None:
                    client.quickack(confirm)
                else:
                    self._orphan(conn_id)
            elif opcode == RPC_CLOSE_EXT and size == 12:
                client = clients.pop(unpack_u64(frame, 12)[0], None)
                if client is not None:
                    self.stats.me_clients_active -= 1
                    client.closed_by_telegram()
                    self._check_idle()
            elif opcode == RPC_PING and size == 12:
                rpc.send_payloads(Pong(unpack_u64(frame, 12)[0]).encode())
                self.flush()
            elif opcode == RPC_PONG and size == 12:
                self._pong(unpack_u64(frame, 12)[0])
            else:
                log.debug("%s: ignoring opcode %08x (%d bytes)", self.label, opcode, size)
        rpc.release()  # every answer has been framed for its client by now
        if rpc.queued:  # handshake frames, pongs
            self.flush()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for handle in (self._flush_handle, self._ping_handle):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._ping_handle = None
        if not self.ready.done():
            if not self.failure:
                self.failure = (
                    "the middle-proxy closed the connection during the handshake (a wrong "
                    "--nat-info or proxy secret makes it do that)"
                    if self.rpc is not None and self.rpc.state is RpcClientState.HANDSHAKE_SENT
                    else f"connection closed during the handshake ({exc or 'EOF'})"
                )
            self.ready.set_result(False)
        clients, self.clients = self.clients, {}
        self.stats.me_clients_active -= len(clients)
        for client in clients.values():
            client.link_lost()
        self.owner.link_lost(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        for client in self.clients.values():
            client.pause_client()

    def resume_writing(self) -> None:
        self.write_paused = False
        for client in list(self.clients.values()):
            client.resume_client()

    # -- driving -----------------------------------------------------------------------

    def start(
        self,
        *,
        secret: bytes,
        local: tuple[IPAddress, int],
        remote: tuple[IPAddress, int],
        public_ip: IPAddress,
        request_crc32c: bool = False,
        buffer_pool: BufferPool | None = None,
    ) -> None:
        """Begin the handshake; ``public_ip`` is our address as the middle-proxy sees it."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionError("connection closed before the handshake")
        self.rpc = RpcClient(
            secret=secret,
            local=local,
            remote=remote,
            public_ip=public_ip,
            now=int(time.time()),
            request_crc32c=request_crc32c,
            buffer_pool=buffer_pool,
        )
        transport.write(self.rpc.initiate())

    def register(self, client: LinkClient) -> None:
        self.clients[client.conn_id] = client
        self.stats.me_clients_active += 1

    def unregister(self, conn_id: int) -> None:
        """The client left: tell the middle-proxy (RPC_CLOSE_CONN) and forget it."""
        if self.clients.pop(conn_id, None) is None:
            return
        self.stats.me_clients_active -= 1
        self.send_payloads([CloseConn(conn_id).encode()])
        self._check_idle()

    def new_conn_id(self) -> int:
        while True:
            conn_id = int.from_bytes(os.urandom(8), "little")
            if conn_id and conn_id not in self.clients:
                return conn_id

    def send_request(self, parts: tuple[bytes | memoryview, ...]) -> None:
        """Queue one message given in pieces (copied right away, so they may be views
        of a buffer the caller reuses); the caller ends its batch with :meth:`flush`."""
        rpc = self.rpc
        if rpc is not None and not self.closed and rpc.ready:
            rpc.send_parts(parts)

    def flush(self) -> None:
        """Write what is queued at the end of this loop iteration, together with what
        other clients queue in the same iteration."""
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)

    def send_payloads(self, payloads: list[bytes]) -> None:
        """Queue encoded messages; they leave together at the end of this loop iteration."""
        rpc = self.rpc
        if self.closed or rpc is None or not rpc.ready:
            return
        rpc.send_payloads(*payloads)
        self.flush()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self._flush()
            self.transport.close()

    def abort(self, reason: str = "") -> None:
        if reason and not self.failure:
            self.failure = reason
        if self.transport is not None and not self.closed:
            self.transport.abort()

    # -- internals ---------------------------------------------------------------------

    def _flush(self) -> None:
        handle, self._flush_handle = self._flush_handle, None
        if handle is not None:
            handle.cancel()
        rpc, transport = self.rpc, self.transport
        if rpc is None or transport is None or transport.is_closing():
            return
        data = rpc.output()
        if data:
            transport.write(data)
            if transport.get_write_buffer_size():
                rpc.renew_batch()  # the transport holds on to the buffer

    def _orphan(self, conn_id: int) -> None:
        """An answer for a client we no longer have: tell the ME, as the official proxy does."""
        self.send_payloads([CloseConn(conn_id).encode()])

    def _check_idle(self) -> None:
        if not self.clients:
            self.owner.link_idle(self)

    def _ping(self) -> None:
        self._ping_handle = None
        if self.closed:
            return
        silent = self.loop.time() - self.last_heard
        if silent > self.options.silence_timeout:
            log.warning("%s: middle-proxy silent for %.0f s, reconnecting", self.label, silent)
            self.abort("silent")
            return
        ping_id = int.from_bytes(os.urandom(8), "little")
        self._ping_sent = (ping_id, self.loop.time())
        self.send_payloads([Ping(ping_id).encode()])
        self._ping_handle = self.loop.call_later(self.options.ping_interval, self._ping)

    def _pong(self, ping_id: int) -> None:
        sent = self._ping_sent
        if sent is not None and sent[0] == ping_id:
            self._ping_sent = None
            self.rtt = self.loop.time() - sent[1]

    def _fail(self, reason: str) -> None:
        log.warning("%s: %s", self.label, reason)
        self.abort(reason)
