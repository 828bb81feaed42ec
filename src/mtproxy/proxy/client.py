"""One client connection: the asyncio driver of a :class:`~mtproxy.proxy.session.Session`.

The session (sans-I/O) decides the connection's lifecycle; this class moves bytes and
timers and carries out the session's actions. Once relaying, the client's bytes go
TLS-unwrap -> decrypt (in the shared buffer, in place) -> upstream, and the upstream's
bytes come back through :meth:`send_plain` (encrypt, wrap) or :meth:`send_obfs`
(already encrypted): that hot path takes no decisions and stays here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from typing import Protocol, cast

from mtproxy.config.settings import Settings
from mtproxy.protocol.crypto import CTR_SLACK, CipherContext, in_place
from mtproxy.protocol.dc import format_endpoint
from mtproxy.protocol.errors import TlsError
from mtproxy.protocol.faketls import RecordReader
from mtproxy.protocol.handshake import Accepted, HandshakePolicy
from mtproxy.protocol.tlsrecords import FULL_RECORD
from mtproxy.proxy.buffers import SharedBuffers, send_now, socket_fd, watch_backlog
from mtproxy.proxy.records import RecordWriter
from mtproxy.proxy.session import (
    Action,
    Close,
    DropMask,
    EofToClient,
    EofToUpstream,
    Phase,
    SendToClient,
    Session,
    SetAddresses,
    StartMask,
    StartSession,
    ToMask,
)
from mtproxy.proxy.shaping import DOWN
from mtproxy.proxy.sockets import (
    close_soon,
    enable_keepalive,
    reset_on_close,
    was_reset,
    write_segmented,
)
from mtproxy.proxy.stats import NO_LIMIT, ProxyStats, UserStats
from mtproxy.proxy.upstream import Upstream
from mtproxy.throttled_log import ThrottledLog

log = logging.getLogger("mtproxy.client")

#: Big answers are encrypted and written this much at a time (whole full records).
BIG_STEP = 8 * FULL_RECORD
#: Client bytes held while the upstream connection is being opened (reads are cut to
#: this size meanwhile, so a session waiting for its DC holds no more).
EARLY_LIMIT = 16 * 1024
#: After the mask host's FIN, when to look for its reset of bytes the client sent later:
#: first after this many seconds, then at twice the last interval, for about 1.5 s
#: (3, 9, 21, 45, 93 ... 1533 ms): a reset is passed on at most about as late again
#: as it took to come.
MASK_RESET_FIRST = 0.003
MASK_RESET_WATCH = 0.5


class ClientHost(Protocol):
    """What a client connection uses of the server that accepted it."""

    settings: Settings
    stats: ProxyStats
    buffers: SharedBuffers
    loop: asyncio.AbstractEventLoop
    policy: HandshakePolicy
    passthrough: bool
    sessions: set[ClientConnection]
    mask_sources: set[tuple[str, int]]
    #: Where upstream failures are logged (one line per kind per period, not per client).
    failures: ThrottledLog

    def user_for(
        self, secret_index: int, policy: HandshakePolicy | None = None
    ) -> UserStats: ...
    def admit(self, client: ClientConnection, user: UserStats) -> bool: ...
    def open_upstream(
        self, client: ClientConnection, accepted: Accepted
    ) -> asyncio.Task[None]: ...
    def open_mask(self, client: ClientConnection, raw: bytes) -> asyncio.Task[None]: ...
    def session_closed(self, client: ClientConnection) -> None: ...


class ClientConnection(asyncio.BufferedProtocol):
    __slots__ = (
        "_sockname",
        "accepted",
        "active",
        "buffers",
        "bytes_in",
        "bytes_out",
        "closed",
        "connect_task",
        "decryptor",
        "down_cut",
        "early",
        "encryptor",
        "fd",
        "held_in",
        "held_out",
        "idle_ticks",
        "mask_peer",
        "mask_pending",
        "mask_task",
        "mask_watch",
        "on_data",
        "peername",
        "pressed",
        "reading_paused",
        "records",
        "recv_view",
        "relay_view",
        "server",
        "session",
        "started",
        "stats",
        "timer",
        "transport",
        "upstream",
        "user",
        "write_paused",
        "writer",
    )

    def __init__(self, server: ClientHost) -> None:
        self.server = server
        self.stats = server.stats
        self.buffers: SharedBuffers = server.buffers
        #: What the socket reads into: the shared buffer, or a cut of it (EARLY_LIMIT).
        self.recv_view = server.buffers.recv_view
        #: What it reads into once relaying (cut for a rate-limited user).
        self.relay_view = self.recv_view
        self.transport: asyncio.Transport | None = None
        #: The client's address and the local address it reached (a PROXY protocol
        #: header from a load balancer replaces both with the real ones).
        self.peername: tuple[str, int] = ("?", 0)
        self._sockname: tuple[str, int] | None = None
        settings = server.settings
        self.session = Session(
            server.policy,
            server.stats,
            now=server.loop.time(),
            handshake_timeout=settings.handshake_timeout,
            mask=settings.mask is not None,
            proxy_protocol=settings.proxy_protocol,
            mirror_after=settings.mask_mirror_after,
            half_close_grace=settings.half_close_timeout,
        )
        self.started = server.loop.time()
        #: Client bytes relayed each way in this session (for its log line).
        self.bytes_in = 0
        self.bytes_out = 0
        #: The handler of received bytes for the session's phase (see _handler).
        self.on_data: Callable[[memoryview], None] = self._opening_data
        self.timer: asyncio.TimerHandle | None = None
        self.connect_task: asyncio.Task[None] | None = None
        self.upstream: Upstream | None = None
        #: The connection to the mask host (mirroring an undecided client, or masking a
        #: rejected one), the task opening it, and bytes waiting for it to open.
        self.mask_peer: Upstream | None = None
        self.mask_task: asyncio.Task[None] | None = None
        self.mask_pending = bytearray()
        #: A look for the mask host's reset after it ended its side (see _watch_mask_reset).
        self.mask_watch: asyncio.TimerHandle | None = None
        self.accepted: Accepted | None = None
        self.decryptor: CipherContext | None = None
        self.encryptor: CipherContext | None = None
        self.records: RecordReader | None = None
        #: The socket's descriptor, for direct writes (see buffers.py).
        self.fd = -1
        #: Fake TLS: what wraps the bytes to the client in records.
        self.writer: RecordWriter | None = None
        self.early = b""
        self.user: UserStats | None = None
        self.active = True
        self.idle_ticks = 0
        self.closed = False
        #: The client socket's reading is paused (by any of the reasons below).
        self.reading_paused = False
        #: The upstream (or the mask host, or the early limit) cannot take more now.
        self.pressed = False
        #: Rate limits holding this session: client reading (bits UP, and DOWN where the
        #: upstream cannot be paused for one session), upstream reading (DOWN).
        self.held_in = 0
        self.held_out = False
        #: Rate limits: the upstream's reads are cut to this length (0: not cut).
        self.down_cut = 0
        self.write_paused = False

    @property
    def handshake_pending(self) -> bool:
        """Still before a verdict on the client's opening (the idle sweep skips these)."""
        return self.session.phase in (Phase.PROXY_HEADER, Phase.HANDSHAKE)

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast.
        self.transport = cast(asyncio.Transport, transport)
        self.fd = socket_fd(transport)
        watch_backlog(self.transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peername = (peer[0], peer[1])
        self.stats.connections_active += 1
        self.stats.connections_total += 1
        self.server.sessions.add(self)
        self._arm_timer()

    @property
    def sockname(self) -> tuple[str, int]:
        """The local address the client reached (looked up only when someone asks)."""
        if self._sockname is None:
            local = self.transport.get_extra_info("sockname") if self.transport else None
            self._sockname = (local[0], local[1]) if local else ("?", 0)
        return self._sockname

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.recv_view

    def buffer_updated(self, nbytes: int) -> None:
        self.active = True
        self.on_data(self.buffers.inview[:nbytes])

    def eof_received(self) -> bool:
        self._run(self.session.eof_received(self.server.loop.time()))
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.session.closed("client_reset" if exc is not None else "client_closed")
        self.stats.connections_active -= 1
        if self.user is not None:
            self.user.connections_active -= 1
            if self.user.shaper is not None:
                self.user.shaper.leave(self)
        self.server.sessions.discard(self)
        self._cancel_timer()
        if self.mask_watch is not None:
            self.mask_watch.cancel()
        if self.writer is not None:
            self.writer.cancel()
        for task in (self.connect_task, self.mask_task):
            if task is not None and not task.done():
                task.cancel()
        if self.upstream is not None:
            self.upstream.close(abort=exc is not None)
        if self.mask_peer is not None and self.mask_peer is not self.upstream:
            self.mask_peer.close(abort=True)
        if self.accepted is not None:
            # Its early bytes, copied tails and the like are freed now: many sessions
            # ending (a burst of stalled ones, say) would leave the process that big.
            self.buffers.trim_soon()
            self._log_end()
        self.server.session_closed(self)

    def _log_end(self) -> None:
        """One line per accepted session (``--log-sessions``; by default at DEBUG)."""
        choice = self.server.settings.log_sessions
        level = logging.INFO if choice else logging.DEBUG
        if choice is False or not log.isEnabledFor(level):
            return
        accepted = self.accepted
        assert accepted is not None
        log.log(
            level, "session %s: user %s, DC %d, %s, %d B up, %d B down, %.1f s, %s",
            format_endpoint(self.peername), self.user.name if self.user else "-",
            accepted.client.dc_id,
            accepted.mode.value, self.bytes_in, self.bytes_out,
            self.server.loop.time() - self.started, self.session.reason,
        )  # fmt: skip

    def pause_writing(self) -> None:
        self.write_paused = True
        self.buffers.stalled()
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.upstream is not None and not self.held_out:
            self.upstream.resume_reading()

    # -- flow control used by upstreams ---------------------------------------------------

    def pause_reading(self) -> None:
        self.pressed = True
        self._follow_reading()

    def resume_reading(self) -> None:
        self.pressed = False
        self._follow_reading()

    def _follow_reading(self) -> None:
        paused = self.pressed or bool(self.held_in)
        if paused != self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = paused
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def cut_reads(self, up: int, down: int) -> None:
        """Rate limits: reads of this session (up) and of its upstream (down) at most
        this long (0: the whole buffer), so that the user's sessions take turns."""
        full = self.buffers.recv_view
        self.relay_view = full[:up] if up else full
        if self.upstream is not None:
            self.recv_view = self.relay_view
            self.upstream.cut_reads(down)
        self.down_cut = down

    def throttle(self, direction: int, on: bool) -> None:
        """The user's rate limit holds back (or lets go of) one direction of this session."""
        upstream = self.upstream
        if direction == DOWN and (upstream is None or upstream.pausable):
            if on == self.held_out:
                return
            self.held_out = on
            if upstream is not None and not self.closed:
                if on:
                    upstream.pause_reading()
                elif not self.write_paused:
                    upstream.resume_reading()
            return
        # Uploads; or downloads from an upstream shared with other sessions, which are
        # held back by holding back the client's requests.
        self.held_in = self.held_in | direction if on else self.held_in & ~direction
        self._follow_reading()

    def check_paused(self) -> None:
        """A socket whose reading is paused is not watched by the event loop, so a reset
        of it goes unseen until the session idles out; the idle sweep asks here."""
        transport = self.transport
        if transport is None or self.closed:
            return
        if self.reading_paused and was_reset(transport.get_extra_info("socket")):
            self.session.closed("client_reset")
            self.close(abort=True)
        elif self.write_paused and self.upstream is not None and self.upstream.was_reset():
            self.upstream.close(abort=True)

    def write_buffer_size(self) -> int:
        transport = self.transport
        return 0 if transport is None else transport.get_write_buffer_size()

    def is_closing(self) -> bool:
        transport = self.transport
        return transport is None or transport.is_closing()

    # -- the session's events and actions ---------------------------------------------------

    def _opening_data(self, view: memoryview) -> None:
        self._run(self.session.receive(view, time.time()))

    def _timer_fired(self) -> None:
        self.timer = None
        self._run(self.session.timer(self.server.loop.time()))

    def _arm_timer(self) -> None:
        deadline = self.session.deadline
        timer = self.timer
        if timer is not None:
            if deadline is not None and timer.when() == deadline:
                return
            timer.cancel()
            self.timer = None
        if deadline is not None and not self.closed:
            self.timer = self.server.loop.call_at(deadline, self._timer_fired)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _run(self, actions: list[Action]) -> None:
        """Carry out what the session decided, then follow its phase and deadline."""
        for action in actions:
            if isinstance(action, SendToClient):
                transport = self.transport
                if transport is not None and not transport.is_closing():
                    segment = self.server.settings.server_hello_segment
                    if segment:
                        write_segmented(transport, action.data, segment)
                    else:
                        transport.write(action.data)
            elif isinstance(action, StartSession):
                self._start_session(action.accepted)
            elif isinstance(action, StartMask):
                self._start_mask(action.first)
            elif isinstance(action, ToMask):
                self._mask_send(action.data)
            elif isinstance(action, DropMask):
                self._drop_mask()
            elif isinstance(action, EofToUpstream):
                self._commit_mirror()  # a mirrored client's FIN goes to the site
                if self.upstream is not None:
                    self.upstream.write_eof()
            elif isinstance(action, EofToClient):
                transport = self.transport
                if (transport is not None and not transport.is_closing()
                        and transport.can_write_eof()):  # fmt: skip
                    if self.writer is not None:
                        self.writer.flush()
                    transport.write_eof()
            elif isinstance(action, SetAddresses):
                self.peername = action.peer
                if action.local is not None:
                    self._sockname = action.local
            elif isinstance(action, Close):
                if action.reset and self.transport is not None:
                    reset_on_close(self.transport.get_extra_info("socket"))
                self.close(action.abort)
        self._commit_mirror()
        self.on_data = self._handler()
        self._arm_timer()

    def _commit_mirror(self) -> None:
        """A mirrored client committed to the mask: its connection becomes the upstream."""
        peer = self.mask_peer
        if self.upstream is None and peer is not None and self.session.phase is Phase.MASKING:
            self.upstream = peer

    def _handler(self) -> Callable[[memoryview], None]:
        """The handler of received bytes in the session's phase."""
        phase = self.session.phase
        if phase is Phase.PROXY_HEADER or phase is Phase.HANDSHAKE:
            return self._opening_data
        if phase is Phase.CONNECTING or phase is Phase.RELAYING:
            return self._relay_data
        if phase is Phase.MASKING:
            return self._mask_data
        return _discard

    def _start_session(self, accepted: Accepted) -> None:
        server = self.server
        client = accepted.client
        self.decryptor = client.decryptor
        if not server.passthrough:
            self.encryptor = client.encrypt_key.cipher()
        self.records = accepted.records
        if accepted.records is not None:
            self.writer = RecordWriter(self, server.loop)
        self.recv_view = self.buffers.recv_view[:EARLY_LIMIT]
        self.early = client.decryptor.update(accepted.leftover) if accepted.leftover else b""
        if accepted.leftover:
            # The session keeps its Accepted for its lifetime; the bytes that came with
            # the header (up to a whole read) are in ``early`` now.
            accepted = dataclasses.replace(accepted, leftover=b"")
            self.session.accepted = accepted
        self.accepted = accepted
        user = server.user_for(client.secret_index, self.session.policy)
        if not server.admit(self, user):
            self._run(self.session.refused())
            return
        if self.transport is not None and server.settings.keepalive:
            enable_keepalive(self.transport.get_extra_info("socket"))
        self.user = user
        if user.shaper is not None:
            user.shaper.join(self)
        user.connections_active += 1
        user.connections_total += 1
        self.stats.bytes_from_clients += len(self.early)
        self.bytes_in += len(self.early)
        user.bytes_from_client += len(self.early)
        self.connect_task = server.open_upstream(self, accepted)

    def _start_mask(self, raw: bytes) -> None:
        server = self.server
        if self.peername in server.mask_sources:
            log.warning(
                "the mask host %s leads back to this proxy; set --mask to another host",
                server.settings.mask,
            )
            self._run(self.session.mask_loop())
            return
        if self.session.phase is Phase.MASKING:
            self.pause_reading()  # until the mask host is there to take the bytes
        self.mask_task = server.open_mask(self, raw)

    def _mask_send(self, data: bytes | memoryview) -> None:
        peer = self.mask_peer
        if peer is not None and self.session.connected:
            peer.send(memoryview(data) if isinstance(data, bytes) else data)
        else:
            self.mask_pending += data

    def _drop_mask(self) -> None:
        peer, self.mask_peer = self.mask_peer, None
        if peer is not None:
            peer.close(abort=True)
        if self.mask_task is not None:
            self.mask_task.cancel()
            self.mask_task = None
        self.mask_pending.clear()

    def refuse(self) -> None:
        """The user's limits refused this client after all (asynchronous admission)."""
        self._run(self.session.refused())

    # -- upstream events (the SessionPort interface) --------------------------------------

    def peer_ready(self, peer: Upstream) -> None:
        """The upstream (or mask) socket is connected; start relaying."""
        if self.closed:
            peer.close()
            return
        self.upstream = peer
        self.connect_task = None
        self.recv_view = self.relay_view
        if self.down_cut:
            peer.cut_reads(self.down_cut)
        if self.held_out and not peer.pausable:
            self.held_out = False
            self.held_in |= DOWN
        actions = self.session.upstream_ready(self.server.loop.time())
        if self.early:
            early = memoryview(bytearray(self.early))
            self.early = b""
            peer.send(early)
        self._run(actions)
        if self.write_paused or self.held_out:
            peer.pause_reading()
        self.resume_reading()

    def upstream_failed(self, reason: str) -> None:
        self.server.failures.log(logging.INFO, reason, f"upstream failed: {reason}")
        log.debug("client %s: upstream failed: %s", self.peername, reason)
        self._run(self.session.upstream_failed())

    def peer_eof(self) -> None:
        self._run(self.session.upstream_eof_received(self.server.loop.time()))

    def peer_lost(self, exc: Exception | None) -> None:
        self.upstream = None
        if not self.closed:
            self._run(self.session.upstream_lost(exc is not None))

    # -- mask host events (from MaskConnection) -------------------------------------------

    def mask_ready(self, peer: Upstream) -> None:
        session = self.session
        wanted = session.phase is Phase.HANDSHAKE or session.phase is Phase.MASKING
        if self.closed or not wanted or not session.mask_opened or self.mask_peer is not None:
            peer.close(abort=True)  # dropped (or the client gone) while it connected
            return
        self.mask_peer = peer
        self.mask_task = None
        actions = session.upstream_ready(self.server.loop.time())
        if self.mask_pending:
            pending = memoryview(bytes(self.mask_pending))
            self.mask_pending.clear()
            peer.send(pending)
        self._run(actions)
        if self.write_paused:
            peer.pause_reading()
        self.resume_reading()

    def mask_failed(self) -> None:
        self.mask_task = None
        self.mask_pending.clear()
        if not self.closed:
            self._run(self.session.mask_failed())

    def mask_data(self, peer: Upstream, view: memoryview) -> None:
        if peer is not self.mask_peer:
            return
        session = self.session
        if session.phase is not Phase.MASKING:
            self._run(session.mask_spoke())
        if session.phase is Phase.MASKING:
            # The site's bytes keep a masked session alive too: a prober downloading
            # from it says nothing, and only the site's own timers may end that.
            self.active = True
            self.send_raw(view)

    def mask_eof(self, peer: Upstream) -> None:
        if peer is self.mask_peer:
            self._run(self.session.upstream_eof_received(self.server.loop.time()))

    def mask_lost(self, peer: Upstream, exc: Exception | None) -> None:
        if peer is not self.mask_peer:
            return
        self.mask_peer = None
        if self.upstream is peer:
            self.upstream = None
        if not self.closed:
            self._run(self.session.upstream_lost(exc is not None))

    # -- relay ---------------------------------------------------------------------------

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
        self.bytes_in += n
        user = self.user
        if user is not None:
            user.bytes_from_client += n
            if (user.bytes_from_client + user.bytes_to_client > user.bytes_limit
                    and self._limit_crossed(user)):  # fmt: skip
                return
        upstream = self.upstream
        if upstream is not None:
            upstream.send(view)
        else:
            # Still connecting upstream: hold a little, then stop reading.
            self.early += bytes(view)
            if len(self.early) >= EARLY_LIMIT:
                self.pause_reading()

    def _limit_crossed(self, user: UserStats) -> bool:
        """The user's byte total passed its mark: the quota (True: this session is
        closing), or the rate limits' next look (see proxy/shaping.py)."""
        if user.bytes_from_client + user.bytes_to_client > user.quota_limit:
            self._over_quota(user)
            return True
        if user.shaper is not None:
            user.shaper.charge(self)
        else:
            user.rate_mark = NO_LIMIT
            user.rearm()
        return False

    def _over_quota(self, user: UserStats) -> None:
        """The user's data quota ran out mid-session: stop relaying at once."""
        user.quota_closed += 1
        self.stats.quota_closed += 1
        log.info("client %s: user %s is over quota; closing", self.peername, user.name)
        self._run(self.session.over_quota())

    def _mask_data(self, view: memoryview) -> None:
        upstream = self.upstream
        if upstream is not None:
            upstream.send(view)
            if self.session.upstream_eof:
                self._watch_mask_reset(upstream)
        else:
            self.mask_pending += view

    def _watch_mask_reset(self, peer: Upstream, delay: float | None = None) -> None:
        """The site ended its side and the client sent more. A site that closed its
        socket answers that with a reset, and a prober talking to the site would see it;
        but a connection is no longer read after its FIN, so the reset would go
        unnoticed. Look for it at growing intervals (a site that only half-closed takes
        the bytes and says nothing)."""
        if self.mask_watch is not None or self.closed:
            return
        if delay is None:
            delay = MASK_RESET_FIRST
        self.mask_watch = self.server.loop.call_later(delay, self._mask_reset_check, peer, delay)

    def _mask_reset_check(self, peer: Upstream, delay: float) -> None:
        self.mask_watch = None
        if self.closed or peer is not self.upstream:
            return
        if peer.was_reset():
            self.upstream = self.mask_peer = None
            peer.close(abort=True)
            self._run(self.session.upstream_lost(True))
        elif delay < MASK_RESET_WATCH:
            self._watch_mask_reset(peer, delay * 2)

    def send_plain(self, data: memoryview | bytes) -> None:
        """Upstream plaintext -> encrypt (and wrap in TLS records) -> client.

        A writable memoryview is the caller's to give up: it is encrypted where it
        lies (the shared receive buffer, or a middle-proxy answer framed in its RPC
        frame) and written from there; nothing of it is kept after the call.
        """
        self._emit(data, self.encryptor)

    def send_obfs(self, data: memoryview | bytes) -> None:
        """Bytes already in the client's keystream (pass-through or mask) -> client."""
        self._emit(data, None)

    def send_raw(self, data: memoryview | bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if self.write_paused:
                transport.write(bytes(data))
            else:
                send_now(transport, self.fd, data)

    def _emit(self, data: memoryview | bytes, cipher: CipherContext | None) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        n = len(data)
        self.stats.bytes_to_clients += n
        self.bytes_out += n
        user = self.user
        if user is not None:
            user.bytes_to_client += n
            if (user.bytes_from_client + user.bytes_to_client > user.bytes_limit
                    and self._limit_crossed(user)):  # fmt: skip
                return
        if cipher is not None:
            if type(data) is memoryview and not data.readonly:
                buffers = self.buffers
                if data.obj is buffers.inbuf:
                    cipher.update_into(data, buffers.inview[: n + CTR_SLACK])
                elif n > BIG_STEP:
                    self._emit_big(data, cipher, transport)
                    return
                elif not CTR_SLACK:
                    cipher.update_into(data, data)
                else:
                    in_place(cipher, data)
            else:
                data = cipher.update(data)
        if self.writer is not None:
            self.writer.send(data, transport)
        elif self.write_paused:
            transport.write(bytes(data))
        else:
            # send_now, inline: this is every small packet's last step.
            try:
                sent = os.write(self.fd, data)
            except BlockingIOError:
                sent = 0
            except OSError:
                transport.write(bytes(data))
                return
            if sent != n:
                transport.write(bytes(data[sent:]))

    def _emit_big(
        self, data: memoryview, cipher: CipherContext, transport: asyncio.Transport
    ) -> None:
        """A big writable answer (up to 1 MiB): encrypted and sent a step at a time, so
        each step is still in the CPU's cache when the kernel copies it; once the socket
        is full, the rest is encrypted and queued in one piece."""
        n = len(data)
        for start in range(0, n, BIG_STEP):
            if self.write_paused:
                rest = data[start:]
                in_place(cipher, rest)
                if self.writer is not None:
                    self.writer.send(rest, transport)
                else:
                    transport.write(bytes(rest))
                return
            piece = data[start : start + BIG_STEP]
            in_place(cipher, piece)
            if self.writer is not None:
                self.writer.send(piece, transport)
            else:
                send_now(transport, self.fd, piece)

    # -- closing -------------------------------------------------------------------------

    def close(self, abort: bool = False) -> None:
        transport = self.transport
        if transport is not None and not self.closed:
            if abort:
                transport.abort()
            else:
                if self.writer is not None:
                    self.writer.flush()
                close_soon(transport)


def _discard(view: memoryview) -> None:
    return None
