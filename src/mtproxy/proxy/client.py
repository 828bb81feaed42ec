"""One client connection: its handshake, then its half of the relay.

The handshake is the sans-I/O :class:`ServerHandshake`; this class only moves bytes
and timers. After the handshake the client's bytes go TLS-unwrap -> decrypt (in the
shared buffer, in place) -> upstream, and the upstream's bytes come back through
:meth:`send_plain` (encrypt, wrap) or :meth:`send_obfs` (already encrypted).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, cast

from mtproxy.protocol import faketls
from mtproxy.protocol.crypto import CTR_SLACK, CipherContext
from mtproxy.protocol.errors import TlsError
from mtproxy.protocol.handshake import Accepted, Rejected, Reply, ServerHandshake
from mtproxy.protocol.proxy_protocol import ProxyProtocolError, parse_proxy_header
from mtproxy.proxy.buffers import SharedBuffers
from mtproxy.proxy.stats import UserStats

if TYPE_CHECKING:
    from mtproxy.proxy.server import ProxyServer

log = logging.getLogger("mtproxy.client")

_RECORD = struct.Struct(">BHH")
_APPDATA = faketls.TYPE_APPDATA
_TLS12 = 0x0303
_MAX_RECORD = faketls.MAX_RECORD_OUT
#: Client bytes held while the upstream connection is being opened.
EARLY_LIMIT = 256 * 1024


class Upstream(Protocol):
    """What a session relays to after the handshake: a DC, a middle-end link, the mask."""

    eof: bool

    def send(self, data: memoryview) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def write_eof(self) -> None: ...
    def close(self, abort: bool = False) -> None: ...


class ClientConnection(asyncio.BufferedProtocol):
    __slots__ = (
        "_sockname",
        "accepted",
        "active",
        "buffers",
        "closed",
        "connect_task",
        "decryptor",
        "early",
        "encryptor",
        "eof",
        "handshake",
        "idle_ticks",
        "on_data",
        "peername",
        "proxy_header",
        "reading_paused",
        "records",
        "relaying",
        "server",
        "stats",
        "timer",
        "transport",
        "upstream",
        "user",
        "write_paused",
    )

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.stats = server.stats
        self.buffers: SharedBuffers = server.buffers
        self.transport: asyncio.Transport | None = None
        #: The client's address and the local address it reached (a PROXY protocol
        #: header from a load balancer replaces both with the real ones).
        self.peername: tuple[str, int] = ("?", 0)
        self._sockname: tuple[str, int] | None = None
        self.handshake: ServerHandshake | None = ServerHandshake(server.policy)
        self.on_data: Callable[[memoryview], None] = self._handshake_data
        #: Bytes of a PROXY protocol header received so far; None when none is expected
        #: (or once it has been read).
        self.proxy_header: bytearray | None = None
        if server.settings.proxy_protocol:
            self.proxy_header = bytearray()
            self.on_data = self._proxy_header_data
        self.timer: asyncio.TimerHandle | None = None
        self.connect_task: asyncio.Task[None] | None = None
        self.upstream: Upstream | None = None
        self.accepted: Accepted | None = None
        self.decryptor: CipherContext | None = None
        self.encryptor: CipherContext | None = None
        self.records: faketls.RecordReader | None = None
        self.early = b""
        self.user: UserStats | None = None
        self.active = True
        self.idle_ticks = 0
        self.eof = False
        self.closed = False
        self.reading_paused = False
        self.write_paused = False
        #: Counted in stats.sessions_active (handshake done, upstream connected).
        self.relaying = False

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peername = (peer[0], peer[1])
        self.stats.connections_active += 1
        self.stats.connections_total += 1
        self.server.sessions.add(self)
        self.timer = self.server.loop.call_later(
            self.server.settings.handshake_timeout, self._handshake_timeout
        )

    @property
    def sockname(self) -> tuple[str, int]:
        """The local address the client reached (looked up only when someone asks)."""
        if self._sockname is None:
            local = self.transport.get_extra_info("sockname") if self.transport else None
            self._sockname = (local[0], local[1]) if local else ("?", 0)
        return self._sockname

    @sockname.setter
    def sockname(self, value: tuple[str, int]) -> None:
        self._sockname = value

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffers.recv_view

    def buffer_updated(self, nbytes: int) -> None:
        self.active = True
        self.on_data(self.buffers.inview[:nbytes])

    def eof_received(self) -> bool:
        self.eof = True
        if self.proxy_header is not None:
            self.close()
        elif self.handshake is not None:
            self._reject(self.handshake.abort("eof"))
        elif self.upstream is not None:
            self.upstream.write_eof()
            if self.upstream.eof:
                self.close()
        elif self.connect_task is None:
            self.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.stats.connections_active -= 1
        if self.relaying:
            self.stats.sessions_active -= 1
        if self.user is not None:
            self.user.connections_active -= 1
        self.server.sessions.discard(self)
        self._cancel_timer()
        if self.connect_task is not None and not self.connect_task.done():
            self.connect_task.cancel()
        if self.upstream is not None:
            self.upstream.close(abort=exc is not None)
        self.server.session_closed(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.upstream is not None:
            self.upstream.resume_reading()

    # -- flow control used by upstreams ---------------------------------------------------

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    # -- PROXY protocol header (behind a load balancer) -----------------------------------

    def _proxy_header_data(self, view: memoryview) -> None:
        buf = self.proxy_header
        assert buf is not None
        buf += view
        try:
            header = parse_proxy_header(bytes(buf))
        except ProxyProtocolError as exc:
            self.stats.proxy_protocol_errors += 1
            log.debug("client %s: bad PROXY header: %s", self.peername, exc)
            self.proxy_header = None
            self.close(abort=True)
            return
        if header is None:
            return
        self.proxy_header = None
        if header.source is not None and header.family in ("INET", "INET6"):
            self.peername = header.source
            if header.destination is not None:
                self.sockname = header.destination
        self.on_data = self._handshake_data
        rest = buf[header.header_length :]
        if rest:
            self._handshake_data(memoryview(rest))

    # -- handshake -----------------------------------------------------------------------

    def _handshake_data(self, view: memoryview) -> None:
        assert self.handshake is not None and self.transport is not None
        event = self.handshake.feed(view, time.time())
        if event is None:
            return
        if isinstance(event, Reply):
            self.transport.write(event.data)
        elif isinstance(event, Rejected):
            self._reject(event)
        else:
            self._accept(event)

    def _handshake_timeout(self) -> None:
        self.timer = None
        if self.proxy_header is not None:
            self.stats.proxy_protocol_errors += 1
            self.close(abort=True)
        elif self.handshake is not None and not self.closed:
            self._reject(self.handshake.abort("timeout"))

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _accept(self, accepted: Accepted) -> None:
        self._cancel_timer()
        policy = self.handshake.policy if self.handshake is not None else None
        self.handshake = None
        server = self.server
        self.accepted = accepted
        client = accepted.client
        self.decryptor = client.decryptor
        if not server.passthrough:
            self.encryptor = client.encrypt_key.cipher()
        self.records = accepted.records
        self.early = client.decryptor.update(accepted.leftover) if accepted.leftover else b""
        self.stats.handshakes[(accepted.mode.value, "ok")] += 1
        user = server.user_for(client.secret_index, policy)
        if not server.admit(self, user):
            self.stats.handshakes[(accepted.mode.value, "refused")] += 1
            self.close()
            return
        self.user = user
        user.connections_active += 1
        user.connections_total += 1
        self.stats.bytes_from_clients += len(self.early)
        user.bytes_from_client += len(self.early)
        self.on_data = self._relay_data
        self.connect_task = server.open_upstream(self, accepted)

    def _reject(self, event: Rejected) -> None:
        self._cancel_timer()
        handshake = self.handshake
        self.handshake = None
        self.stats.handshakes[("-", event.reason)] += 1
        log.debug("client %s rejected: %s", self.peername, event.reason)
        mask = self.server.settings.mask
        if not event.maskable:
            self.close()
            return
        raw = bytes(handshake.raw) if handshake is not None else b""
        if self.peername in self.server.mask_sources:
            log.warning(
                "the mask host %s leads back to this proxy; set --mask to another host",
                mask,
            )
            self.close(abort=True)
            return
        if mask is None:
            # Like the official server's skip mode: read and discard until the client
            # gives up; a closed socket would tell a prober more.
            self.on_data = _discard
            if self.eof:
                self.close()
            return
        self.stats.masked += 1
        self.on_data = self._mask_data
        self.pause_reading()
        self.connect_task = self.server.open_mask(self, raw)

    # -- relay ---------------------------------------------------------------------------

    def peer_ready(self, peer: Upstream) -> None:
        """The upstream (or mask) socket is connected; start relaying."""
        if self.closed:
            peer.close()
            return
        self.upstream = peer
        self.connect_task = None
        if self.accepted is not None and not self.relaying:
            self.relaying = True
            self.stats.sessions_active += 1
        if self.early:
            early = memoryview(bytearray(self.early))
            self.early = b""
            peer.send(early)
        if self.eof:
            peer.write_eof()
        if self.write_paused:
            peer.pause_reading()
        self.resume_reading()

    def upstream_failed(self, reason: str) -> None:
        self.stats.upstream_failures += 1
        log.info("client %s: upstream failed: %s", self.peername, reason)
        self.close()

    def peer_eof(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()
        if self.eof:
            self.close()

    def peer_lost(self, exc: Exception | None) -> None:
        self.upstream = None
        if self.transport is not None and not self.closed:
            if exc is None:
                self.transport.close()
            else:
                self.transport.abort()

    def _relay_data(self, view: memoryview) -> None:
        records = self.records
        if records is not None:
            try:
                n = records.unwrap(view, len(view))
            except TlsError:
                self.close(abort=True)
                return
            if not n:
                return
            view = view[:n]
        assert self.decryptor is not None
        n = len(view)
        self.decryptor.update_into(view, self.buffers.inview[: n + CTR_SLACK])
        self.stats.bytes_from_clients += n
        user = self.user
        if user is not None:
            user.bytes_from_client += n
            if user.bytes_from_client + user.bytes_to_client > user.bytes_limit:
                self._over_quota(user)
                return
        upstream = self.upstream
        if upstream is not None:
            upstream.send(view)
        else:
            # Still connecting upstream: hold a little, then stop reading.
            self.early += bytes(view)
            if len(self.early) >= EARLY_LIMIT:
                self.pause_reading()

    def _over_quota(self, user: UserStats) -> None:
        """The user's data quota ran out mid-session: stop relaying at once."""
        user.quota_closed += 1
        self.stats.quota_closed += 1
        log.info("client %s: user %s is over quota; closing", self.peername, user.name)
        self.close()

    def _mask_data(self, view: memoryview) -> None:
        if self.upstream is not None:
            self.upstream.send(view)

    def send_plain(self, data: memoryview | bytes) -> None:
        """Upstream plaintext -> encrypt (and wrap in TLS records) -> client."""
        self._emit(data, self.encryptor)

    def send_obfs(self, data: memoryview | bytes) -> None:
        """Bytes already in the client's keystream (pass-through or mask) -> client."""
        self._emit(data, None)

    def send_raw(self, data: memoryview | bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if isinstance(data, memoryview):
                self.buffers.write_in(transport, data)
            else:
                transport.write(data)

    def _emit(self, data: memoryview | bytes, cipher: CipherContext | None) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        n = len(data)
        self.stats.bytes_to_clients += n
        user = self.user
        if user is not None:
            user.bytes_to_client += n
            if user.bytes_from_client + user.bytes_to_client > user.bytes_limit:
                self._over_quota(user)
                return
        buffers = self.buffers
        if isinstance(data, memoryview) and data.obj is buffers.inbuf:
            # A prefix of the shared receive buffer: encrypt in place and write it out,
            # as TLS records cut out of it (uvloop sends the pieces with one writev).
            if cipher is not None:
                cipher.update_into(data, buffers.inview[: n + CTR_SLACK])
            if self.records is None:
                buffers.write_in(transport, data)
            else:
                buffers.writelines_in(transport, _record_pieces(data, n))
            return
        # Immutable bytes (middle-end answers): encrypt into the shared send buffer.
        out = buffers.outview
        pos = start = 0
        header = 0 if self.records is None else faketls.RECORD_HEADER_LEN
        step = _MAX_RECORD if header else len(out)
        while start < n:
            m = min(step, n - start)
            if pos + header + m > len(out):
                buffers.write_out(transport, out[:pos])
                out = buffers.outview
                pos = 0
            if header:
                _RECORD.pack_into(out, pos, _APPDATA, _TLS12, m)
                pos += header
            if cipher is not None:
                cipher.update_into(data[start : start + m], out[pos : pos + m + CTR_SLACK])
            else:
                out[pos : pos + m] = data[start : start + m]
            pos += m
            start += m
        buffers.write_out(transport, out[:pos])

    # -- closing -------------------------------------------------------------------------

    def close(self, abort: bool = False) -> None:
        transport = self.transport
        if transport is not None and not self.closed:
            if abort:
                transport.abort()
            else:
                transport.close()


def _discard(view: memoryview) -> None:
    return None


_FULL_RECORD_HEADER = faketls.record_header(_MAX_RECORD)


def _record_pieces(data: memoryview, n: int) -> list[bytes | memoryview]:
    """Record headers interleaved with slices of ``data``, for ``writelines``."""
    if n <= _MAX_RECORD:
        return [faketls.record_header(n), data]
    pieces: list[bytes | memoryview] = []
    for start in range(0, n, _MAX_RECORD):
        chunk = data[start : start + _MAX_RECORD]
        size = len(chunk)
        pieces.append(_FULL_RECORD_HEADER if size == _MAX_RECORD else faketls.record_header(size))
        pieces.append(chunk)
    return pieces
