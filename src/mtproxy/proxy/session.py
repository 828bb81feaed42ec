"""A client session's life as a state machine over events, with no I/O.

The asyncio driver (:class:`~mtproxy.proxy.client.ClientConnection`) feeds it what
happens — bytes before the handshake is decided, end of input, timer expiry, the
upstream connecting, failing, ending — and carries out the actions it returns. The
session decides everything about the *lifecycle*: which phase it is in, when its
deadline falls, whether a rejected client goes to the mask host, is read and ignored,
or is closed, and why a session ended. Moving bytes once relaying (decrypt, forward,
encrypt) stays in the driver: that is the hot path and takes no decisions.

Phases::

    PROXY_HEADER --> HANDSHAKE --accepted--> CONNECTING --upstream ready--> RELAYING
                        |
                        +--rejected--> MASKING (to the mask host) | DISCARDING | CLOSED

Every phase can end in CLOSED; nothing leaves CLOSED. Like aioquic's connection, the
session owns its timers: the driver arms one timer at :attr:`Session.deadline` and
calls :meth:`Session.timer` when it fires.

**Undecided clients follow the site's timers.** A prober that sends nothing, or half
a hello, must see the connection end when the mask site would end it, not at our
handshake timeout. So a client still undecided ``mirror_after`` seconds after accept
is *mirrored*: the mask connection is opened, gets every byte read so far and every
byte that follows, and what the site answers (bytes, FIN, reset) decides: the
session commits to the mask and the prober sees the site's own timing from then on,
offset by ``mirror_after``. A client whose opening completes after all (a slow
network) drops the mirror and is served; a real app sends its opening in its first
packet, so the mirror costs nothing for the clients that matter, and one mask
connection for each undecided one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mtproxy.protocol.handshake import (
    Accepted,
    HandshakePolicy,
    Rejected,
    Reply,
    ServerHandshake,
)
from mtproxy.protocol.proxy_protocol import ProxyProtocolError, parse_proxy_header
from mtproxy.proxy.stats import ProxyStats


class Phase(enum.Enum):
    #: Waiting for the load balancer's PROXY protocol header.
    PROXY_HEADER = "proxy_header"
    #: Reading the client's opening (obfuscated2 header or fake-TLS hello), perhaps
    #: mirroring it to the mask host already.
    HANDSHAKE = "handshake"
    #: Accepted; the upstream is being opened and the client's bytes are held.
    CONNECTING = "connecting"
    #: Both sides connected; bytes flow.
    RELAYING = "relaying"
    #: Rejected; relayed byte for byte to the mask host (connecting, then connected).
    MASKING = "masking"
    #: Rejected with no mask host: read and ignored until the client leaves.
    DISCARDING = "discarding"
    CLOSED = "closed"


# -- actions the driver carries out ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendToClient:
    data: bytes


@dataclass(frozen=True, slots=True)
class SetAddresses:
    """A PROXY header named the real client (and the address it reached)."""

    peer: tuple[str, int]
    local: tuple[str, int] | None


@dataclass(frozen=True, slots=True)
class StartSession:
    """Admit the client (user limits) and open its upstream."""

    accepted: Accepted


@dataclass(frozen=True, slots=True)
class StartMask:
    """Open the mask host and send it ``first`` (everything the client sent so far)."""

    first: bytes


@dataclass(frozen=True, slots=True)
class ToMask:
    """More undecided client bytes for the mask connection (sent once it is open)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class DropMask:
    """The mirrored client turned out to be ours: abort the mask connection."""


@dataclass(frozen=True, slots=True)
class EofToUpstream:
    pass


@dataclass(frozen=True, slots=True)
class EofToClient:
    pass


@dataclass(frozen=True, slots=True)
class Close:
    """End the connection (reset it with ``abort``); ``reason`` is the session's: the
    first thing that decided its end (a rejected client keeps its rejection's)."""

    reason: str
    abort: bool = False
    #: Send a TCP reset: the mask site reset its connection, so the prober sees one too.
    reset: bool = False


Action = (
    SendToClient | SetAddresses | StartSession | StartMask | ToMask | DropMask
    | EofToUpstream | EofToClient | Close
)  # fmt: skip

_EOF_TO_UPSTREAM = EofToUpstream()
_EOF_TO_CLIENT = EofToClient()
_DROP_MASK = DropMask()


class Session:
    """One client connection's lifecycle; see the module docstring."""

    __slots__ = (
        "_header",
        "_linger",
        "_linger_at",
        "_mirror_at",
        "_timeout_at",
        "accepted",
        "client_eof",
        "connected",
        "handshake",
        "mask",
        "mask_opened",
        "phase",
        "policy",
        "reason",
        "stats",
        "upstream_eof",
    )

    def __init__(
        self,
        policy: HandshakePolicy,
        stats: ProxyStats,
        *,
        now: float,
        handshake_timeout: float,
        mask: bool,
        proxy_protocol: bool = False,
        mirror_after: float | None = None,
        half_close_grace: float = 10.0,
    ) -> None:
        self.stats = stats
        #: The secrets and modes this client is judged by (a reload does not change
        #: them under a handshake in progress: the accepted secret index refers to them).
        self.policy = policy
        self.handshake: ServerHandshake | None = ServerHandshake(policy)
        self.mask = mask
        self.phase = Phase.PROXY_HEADER if proxy_protocol else Phase.HANDSHAKE
        self._header: bytearray | None = bytearray() if proxy_protocol else None
        self._timeout_at: float | None = now + handshake_timeout
        self._mirror_at = now + mirror_after if mask and mirror_after is not None else None
        #: How long one side may stay half-closed while the other says nothing more.
        self._linger = half_close_grace
        self._linger_at: float | None = None
        self.accepted: Accepted | None = None
        self.client_eof = False
        self.upstream_eof = False
        #: A connection to the mask host was asked for (to mirror or to mask).
        self.mask_opened = False
        #: The upstream (or the mask host, mirrored or masked) is connected.
        self.connected = False
        #: Why the session ended (or was rejected), for logs and counters.
        self.reason: str | None = None

    @property
    def deadline(self) -> float | None:
        """When :meth:`timer` must be called (loop time), or None."""
        if self.phase is Phase.HANDSHAKE:
            mirror = self._mirror_at
            timeout = self._timeout_at
            if mirror is not None and timeout is not None:
                return mirror if mirror < timeout else timeout
            return timeout
        if self.phase is Phase.PROXY_HEADER:
            return self._timeout_at
        if self.phase is Phase.RELAYING or self.phase is Phase.MASKING:
            return self._linger_at
        return None

    @property
    def mirroring(self) -> bool:
        """Undecided, with the mask connection open to the client's bytes."""
        return self.mask_opened and self.phase is Phase.HANDSHAKE

    # -- events ----------------------------------------------------------------------------

    def receive(self, data: bytes | bytearray | memoryview, now: float) -> list[Action]:
        """Client bytes while the opening is undecided (PROXY_HEADER, HANDSHAKE)."""
        if self.phase is Phase.PROXY_HEADER:
            return self._proxy_header(data, now)
        if self.phase is Phase.HANDSHAKE:
            return self._opening(data, now)
        if self.phase is Phase.CLOSED:
            return []
        raise RuntimeError(f"receive() in phase {self.phase.value}")

    def eof_received(self, now: float) -> list[Action]:
        """The client will send nothing more."""
        self.client_eof = True
        phase = self.phase
        if phase is Phase.PROXY_HEADER:
            return self._close("eof")
        if phase is Phase.HANDSHAKE:
            assert self.handshake is not None
            return self._rejected(self.handshake.abort("eof"))
        if phase is Phase.RELAYING or (phase is Phase.MASKING and self.connected):
            if self.upstream_eof:
                return [_EOF_TO_UPSTREAM, *self._close("done")]
            self._linger_at = now + self._linger
            return [_EOF_TO_UPSTREAM]
        if phase is Phase.DISCARDING:
            return self._close("eof")
        return []  # CONNECTING, or the mask still connecting: passed on once connected

    def timer(self, now: float) -> list[Action]:
        """The driver's timer fired (it may be late or early; the session checks)."""
        deadline = self.deadline
        if deadline is None or now < deadline:
            return []
        if self.phase is Phase.PROXY_HEADER:
            self.stats.proxy_protocol_errors += 1
            return self._close("proxy_header_timeout", abort=True)
        if self.phase is not Phase.HANDSHAKE:
            # One side said it was done long ago and the other never followed.
            return self._close("half_closed")
        assert self.handshake is not None
        if self._timeout_at is not None and now >= self._timeout_at:
            self._timeout_at = None
            return self._rejected(self.handshake.abort("timeout"))
        # The mirror's moment: only before any reply (it is None after one).
        self._mirror_at = None
        if self.handshake.replied:
            return []
        self.mask_opened = True
        return [StartMask(bytes(self.handshake.raw))]

    def upstream_ready(self, now: float) -> list[Action]:
        """The upstream (or mask host) connected."""
        phase = self.phase
        if phase is Phase.CONNECTING:
            self.phase = Phase.RELAYING
            self.stats.sessions_active += 1
        elif phase is Phase.MASKING:
            self.stats.masked += 1
        elif phase is not Phase.HANDSHAKE or not self.mask_opened:
            return []
        self.connected = True
        if self.client_eof and phase is not Phase.HANDSHAKE:
            self._linger_at = now + self._linger
            return [_EOF_TO_UPSTREAM]
        return []

    def mask_spoke(self) -> list[Action]:
        """The mask host sent bytes, ended or failed: if the client was still undecided
        (mirrored), the site has answered it, so the session is the site's from now on."""
        if not self.mirroring:
            return []
        self.handshake = None
        return self._rejected(Rejected("mask_answered"))

    def refused(self) -> list[Action]:
        """The user's limits refused an accepted client."""
        if self.accepted is not None:
            self.stats.handshakes[(self.accepted.mode.value, "refused")] += 1
        return self._close("refused")

    def mask_loop(self) -> list[Action]:
        """The mask host turned out to be this proxy: cut the loop at this hop."""
        return self._close("mask_loop", abort=True)

    def upstream_failed(self) -> list[Action]:
        """No DC (or middle-proxy) could be had for an accepted client."""
        self.stats.upstream_failures += 1
        return self._close("upstream_failed")

    def mask_failed(self) -> list[Action]:
        """The mask host could not be reached."""
        if self.mirroring:
            # Still undecided (perhaps a client on a slow network): go on without the
            # mirror; a rejection later tries the mask host again.
            self.mask_opened = self.connected = False
            return []
        if self.phase is Phase.MASKING:
            # A site that is down refuses the connection (a reset to the SYN); the
            # nearest a connection we accepted can come to that is a reset, not a FIN.
            return self._close("mask_unreachable", abort=True, reset=True)
        return []

    def upstream_eof_received(self, now: float) -> list[Action]:
        """The upstream will send nothing more: pass the half-close on."""
        actions = self.mask_spoke()
        self.upstream_eof = True
        if self.phase is Phase.CLOSED:
            return actions
        if self.client_eof:
            return [*actions, _EOF_TO_CLIENT, *self._close("done")]
        self._linger_at = now + self._linger
        return [*actions, _EOF_TO_CLIENT]

    def upstream_lost(self, failed: bool) -> list[Action]:
        actions = self.mask_spoke()
        reset = failed and self.phase is Phase.MASKING
        reason = "upstream_lost" if failed else "upstream_closed"
        return [*actions, *self._close(reason, abort=failed, reset=reset)]

    def over_quota(self) -> list[Action]:
        return self._close("quota")

    def closed(self, reason: str) -> None:
        """The client's socket is gone; ``reason`` is used if nothing decided one yet."""
        self._close(reason)

    # -- internals -------------------------------------------------------------------------

    def _proxy_header(self, data: bytes | bytearray | memoryview, now: float) -> list[Action]:
        buf = self._header
        assert buf is not None
        buf += data
        try:
            header = parse_proxy_header(bytes(buf))
        except ProxyProtocolError:
            self.stats.proxy_protocol_errors += 1
            return self._close("bad_proxy_header", abort=True)
        if header is None:
            return []
        self._header = None
        self.phase = Phase.HANDSHAKE
        actions: list[Action] = []
        if header.source is not None and header.family in ("INET", "INET6"):
            actions.append(SetAddresses(header.source, header.destination))
        rest = buf[header.header_length :]
        if rest:
            actions += self._opening(rest, now)
        return actions

    def _opening(self, data: bytes | bytearray | memoryview, now: float) -> list[Action]:
        assert self.handshake is not None
        mirroring = self.mask_opened
        event = self.handshake.feed(data, now)
        if event is None:
            return [ToMask(bytes(data))] if mirroring else []
        if isinstance(event, Rejected):
            if mirroring and event.maskable:
                # The mask host has everything but this last piece.
                return [ToMask(bytes(data)), *self._rejected(event)]
            return self._rejected(event)
        # Ours: the site must never see more of this client (nor it the site).
        actions: list[Action] = [_DROP_MASK] if mirroring else []
        self._mirror_at = None
        if mirroring:
            self.mask_opened = self.connected = False
        if isinstance(event, Reply):
            return [*actions, SendToClient(event.data)]
        self.handshake = None
        self.accepted = event
        self._timeout_at = None
        self.phase = Phase.CONNECTING
        self.stats.handshakes[(event.mode.value, "ok")] += 1
        return [*actions, StartSession(event)]

    def _rejected(self, event: Rejected) -> list[Action]:
        self.reason = event.reason
        self.stats.handshakes[("-", event.reason)] += 1
        handshake, self.handshake = self.handshake, None
        if not event.maskable:
            return [_DROP_MASK, *self._close(event.reason)] if self.mask_opened else (
                self._close(event.reason)
            )
        if not self.mask:
            # Like the official server's skip mode: read and discard until the client
            # gives up; a closed socket would tell a prober more.
            self.phase = Phase.DISCARDING
            return self._close(event.reason) if self.client_eof else []
        self.phase = Phase.MASKING
        if not self.mask_opened:
            self.mask_opened = True
            return [StartMask(bytes(handshake.raw) if handshake is not None else b"")]
        # Mirrored already: the mask connection simply carries on as the session's.
        if not self.connected:
            return []
        self.stats.masked += 1
        return [_EOF_TO_UPSTREAM] if self.client_eof else []

    def _close(self, reason: str, *, abort: bool = False, reset: bool = False) -> list[Action]:
        if self.phase is Phase.CLOSED:
            return []
        if self.phase is Phase.RELAYING:
            self.stats.sessions_active -= 1
        if self.reason is None:
            self.reason = reason
        self.phase = Phase.CLOSED
        self._timeout_at = self._mirror_at = self._linger_at = None
        self.handshake = None
        return [Close(self.reason, abort, reset)]
