"""The far side of a client session: a DC, the mask host, or anything byte-stream-like.

A peer reads into the loop's shared buffer, optionally decrypts in place, and hands
the bytes to its client; the client hands it bytes to (optionally) encrypt and send.
Flow control is wired crosswise: when one side's socket cannot take more, the other
side stops reading.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol, cast

from mtproxy.protocol.crypto import CTR_SLACK, CipherContext, in_place
from mtproxy.proxy.buffers import SharedBuffers, send_now, socket_fd, watch_backlog
from mtproxy.proxy.sockets import close_soon, set_keepalive, was_reset
from mtproxy.proxy.upstream import SessionPort

Deliver = Callable[[memoryview], None]


class PeerConnection(asyncio.BufferedProtocol):
    #: Pausing this connection holds back one session's data (see Upstream).
    pausable = True

    __slots__ = (
        "buffers",
        "client",
        "decryptor",
        "deliver",
        "encryptor",
        "eof",
        "fd",
        "first",
        "keepalive",
        "reading_held",
        "recv_view",
        "transport",
        "write_paused",
    )

    def __init__(
        self,
        client: SessionPort,
        deliver: Deliver,
        *,
        first: bytes = b"",
        encryptor: CipherContext | None = None,
        decryptor: CipherContext | None = None,
        keepalive: int = 0,
    ) -> None:
        self.client = client
        self.buffers: SharedBuffers = client.buffers
        self.recv_view = client.buffers.recv_view
        self.deliver = deliver
        self.first = first
        self.encryptor = encryptor
        self.decryptor = decryptor
        self.keepalive = keepalive
        self.transport: asyncio.Transport | None = None
        self.fd = -1
        #: Our side asked this connection to stop reading (flow control, rate limits).
        self.reading_held = False
        #: The transport holds unsent bytes (see buffers.py): write through it.
        self.write_paused = False
        self.eof = False

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast.
        self.transport = cast(asyncio.Transport, transport)
        self.fd = socket_fd(transport)
        watch_backlog(self.transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and self.keepalive:
            set_keepalive(sock, self.keepalive, probes=False)
        if self.first:
            self.transport.write(self.first)
        self.first = b""
        self.client.peer_ready(self)
        if self.write_paused:  # the first bytes wait: the client must not read on yet
            self.client.pause_reading()
        self._hold_after_start()

    def _hold_after_start(self) -> None:
        # uvloop starts reading after connection_made returns, whatever was asked in it.
        if self.reading_held:
            asyncio.get_running_loop().call_soon(self._hold_again)

    def _hold_again(self) -> None:
        transport = self.transport
        if self.reading_held and transport is not None and not transport.is_closing():
            transport.pause_reading()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.recv_view

    def buffer_updated(self, nbytes: int) -> None:
        full = self.buffers.inview
        view = full[:nbytes]
        if self.decryptor is not None:
            self.decryptor.update_into(view, full[: nbytes + CTR_SLACK])
        self.deliver(view)

    def eof_received(self) -> bool:
        self.eof = True
        self.client.peer_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.peer_lost(exc)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.buffers.stalled()
        self.client.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.client.resume_reading()

    # -- used by the client ------------------------------------------------------------

    def send(self, data: memoryview) -> None:
        """Client plaintext -> peer; ``data`` is ours to encrypt in place.

        It is normally a prefix of the shared receive buffer (see buffers.py).
        """
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        encryptor = self.encryptor
        if encryptor is not None:
            buffers = self.buffers
            if data.obj is buffers.inbuf:
                encryptor.update_into(data, buffers.inview[: len(data) + CTR_SLACK])
            else:
                in_place(encryptor, data)
        if self.write_paused:
            transport.write(bytes(data))
        else:
            send_now(transport, self.fd, data)

    def pause_reading(self) -> None:
        self.reading_held = True
        if self.transport is not None:
            self.transport.pause_reading()

    def cut_reads(self, size: int) -> None:
        full = self.buffers.recv_view
        self.recv_view = full[:size] if size else full

    def resume_reading(self) -> None:
        self.reading_held = False
        if self.transport is not None:
            self.transport.resume_reading()

    def write_eof(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()

    def was_reset(self) -> bool:
        transport = self.transport
        return transport is not None and was_reset(transport.get_extra_info("socket"))

    def close(self, abort: bool = False) -> None:
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                close_soon(self.transport)


class MaskClient(Protocol):
    """What the mask connection reports to (the client session it serves)."""

    buffers: SharedBuffers

    def mask_ready(self, peer: MaskConnection) -> None: ...
    def mask_data(self, peer: MaskConnection, view: memoryview) -> None: ...
    def mask_eof(self, peer: MaskConnection) -> None: ...
    def mask_lost(self, peer: MaskConnection, exc: Exception | None) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class MaskConnection(PeerConnection):
    """A connection to the mask host, which records its own address while it lives.

    Its events name the connection, because a session may drop a mask connection it
    opened to mirror an undecided client (see proxy/session.py) while that
    connection is still completing.

    If the mask host is this proxy itself (a TLS domain pointing back at us), the
    forwarded probe arrives as a new client, fails again and would be forwarded
    again, forever. The server checks rejected clients against these addresses and
    drops such a loop at its second hop.
    """

    __slots__ = ("_registry", "_source", "owner")

    def __init__(self, owner: MaskClient, first: bytes, registry: set[tuple[str, int]]) -> None:
        super().__init__(cast(SessionPort, owner), self._deliver, first=first)
        self.owner = owner
        self._registry = registry
        self._source: tuple[str, int] | None = None

    def _deliver(self, view: memoryview) -> None:
        self.owner.mask_data(self, view)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        local = transport.get_extra_info("sockname")
        if local:
            self._source = (local[0], local[1])
            self._registry.add(self._source)
        self.transport = cast(asyncio.Transport, transport)
        self.fd = socket_fd(transport)
        watch_backlog(self.transport)
        if self.first:
            self.transport.write(self.first)
        self.first = b""
        self.owner.mask_ready(self)
        if self.write_paused:
            self.owner.pause_reading()
        self._hold_after_start()

    def eof_received(self) -> bool:
        self.eof = True
        self.owner.mask_eof(self)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._source is not None:
            self._registry.discard(self._source)
        self.owner.mask_lost(self, exc)
