"""The server side of a client's opening bytes, as a state machine over bytes.

Feed it what the socket delivers; it answers "need more", "send this reply" (the
fake-TLS ServerHello), "accepted" or "rejected, for this reason". It enforces which
client modes are enabled, the fake-TLS checks, and replay protection. It never
touches a socket, so the asyncio layer stays a thin loop around it.

It decides as early as the bytes allow: every enabled mode is a candidate until the
bytes so far rule it out (an obfuscated2 start no client sends, bytes that cannot
begin a ClientHello), and the connection is rejected the moment none is left, so
the mask host answers a prober as quickly as it would answer it directly. Once the
fake ServerHello has gone out, no rejection is maskable any more: the client has
seen an answer the mask host never gave.

The rules it applies: docs/protocol.md §4 (fake TLS), §5 (replays), §6 (masking).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mtproxy.protocol import faketls
from mtproxy.protocol.errors import HandshakeError, TlsError
from mtproxy.protocol.framing import Framing
from mtproxy.protocol.obfuscated2 import (
    HEADER_LEN,
    ClientHandshake,
    is_forbidden_start,
    parse_client_header,
)
from mtproxy.protocol.replay import ReplayGuard
from mtproxy.protocol.secret import Mode

#: First bytes of every TLS ClientHello record a Telegram app sends.
TLS_PREFIX = b"\x16\x03\x01"

#: How many bytes of a client's opening we hold before a verdict, at most.
MAX_OPENING = faketls.RECORD_HEADER_LEN + faketls.MAX_HELLO


@dataclass(frozen=True)
class HandshakePolicy:
    secrets: Sequence[bytes]
    modes: frozenset[Mode]
    tls_domains: frozenset[str] = frozenset()
    replay: ReplayGuard | None = None
    #: Accepted fake-TLS timestamp range around our clock, in seconds.
    tls_max_past: float = 600.0
    tls_max_future: float = 120.0
    #: What the fake ServerHello copies from the mask site (see mtproxy.mask).
    server_hello: faketls.ServerHelloShape = field(default_factory=faketls.ServerHelloShape)


@dataclass(slots=True)
class Accepted:
    client: ClientHandshake
    mode: Mode
    #: obfuscated2 ciphertext that followed the header (already out of TLS records).
    leftover: bytes
    #: The record reader to keep using on the client's later bytes (fake TLS only).
    records: faketls.RecordReader | None = None
    #: Client timestamp from the fake-TLS hello, if any.
    tls_timestamp: int | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """Bytes to send to the client before feeding more."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str
    #: True while nothing but the client's own bytes has been exchanged, so the
    #: connection can still be handed to the mask host unnoticed.
    maskable: bool = True


Event = Accepted | Reply | Rejected


@dataclass
class ServerHandshake:
    policy: HandshakePolicy
    #: Everything received so far, for replay to the mask host on rejection.
    raw: bytearray = field(default_factory=bytearray)
    _tls: faketls.VerifiedHello | None = None
    _records: faketls.RecordReader | None = None
    _inner: bytearray = field(default_factory=bytearray)
    _done: bool = False
    #: Candidates still open: fake TLS, and obfuscated2 (classic or dd).
    _tls_open: bool = True
    _hello_check: faketls.HelloCheck = field(default_factory=faketls.HelloCheck)
    _obfs_open: bool = True
    #: Why the opening fails once no candidate is left: (precedence, reason). Bytes
    #: that begin like a ClientHello get the fake-TLS reason; otherwise obfuscated2's
    #: reason, and with that mode off the opening is one of a disabled mode.
    _ruled_out: tuple[int, str] = (-1, "mode_disabled")

    def feed(self, data: bytes | bytearray | memoryview, now: float) -> Event | None:
        """Consume bytes; return None while more are needed."""
        if self._done:
            raise RuntimeError("handshake already finished")
        if self._records is not None:
            return self._finish(self._feed_tls_inner(data, now))
        self.raw += data
        return self._finish(self._feed_opening(now))

    def abort(self, reason: str) -> Rejected:
        """The connection ends undecided (the client's EOF, our timeout): what to do with it.

        Maskable only while the fake ServerHello has not gone out.
        """
        self._done = True
        return Rejected(reason, maskable=self._records is None)

    @property
    def replied(self) -> bool:
        """True once the fake ServerHello has been produced."""
        return self._records is not None

    def _finish(self, event: Event | None) -> Event | None:
        if isinstance(event, Accepted | Rejected):
            self._done = True
            if isinstance(event, Rejected) and event.maskable and self.replied:
                event = Rejected(event.reason, maskable=False)
        return event

    def _rule_out(self, precedence: int, reason: str) -> None:
        if precedence > self._ruled_out[0]:
            self._ruled_out = (precedence, reason)

    def _feed_opening(self, now: float) -> Event | None:
        raw = self.raw
        modes = self.policy.modes
        if self._obfs_open and (Mode.CLASSIC in modes or Mode.SECURE in modes):
            event = self._feed_obfs2(now)
            if event is not None:
                return event
        else:
            self._obfs_open = False
        if self._tls_open and Mode.TLS in modes:
            # An obfuscated2 header may start with 0x16 too: both stay candidates until
            # the bytes rule one out.
            head = bytes(raw[: len(TLS_PREFIX)])
            if head != TLS_PREFIX[: len(head)]:
                self._tls_open = False
                # With fake TLS alone, anything else is an opening of a disabled mode.
                self._rule_out(0, "mode_disabled")
            elif len(head) == len(TLS_PREFIX):
                event = self._feed_hello(now)
                if event is not None:
                    return event
        else:
            self._tls_open = False
        if not self._tls_open and not self._obfs_open:
            return Rejected(self._ruled_out[1])
        return None

    def _feed_obfs2(self, now: float) -> Event | None:
        raw = self.raw
        if is_forbidden_start(raw[:8]):
            self._obfs_open = False
            self._rule_out(1, "forbidden_start")
            return None
        if len(raw) < HEADER_LEN:
            return None
        modes = self.policy.modes
        try:
            client = parse_client_header(bytes(raw[:HEADER_LEN]), self.policy.secrets)
        except HandshakeError:
            self._obfs_open = False
            self._rule_out(1, "bad_secret")
            return None
        mode = Mode.SECURE if client.framing is Framing.PADDED else Mode.CLASSIC
        if mode not in modes:
            return Rejected("mode_disabled")
        if self._is_replay(client.nonce, now):
            return Rejected("replay")
        return Accepted(client, mode, bytes(raw[HEADER_LEN:]))

    def _feed_hello(self, now: float) -> Event | None:
        raw = self.raw
        try:
            if len(raw) < faketls.RECORD_HEADER_LEN:
                return None
            total = faketls.hello_record_length(bytes(raw[: faketls.RECORD_HEADER_LEN]))
            if len(raw) < total:
                # Checked as it arrives; a whole record is parsed (and checked) below.
                self._hello_check.check(raw)
                return None
        except TlsError:
            self._tls_open = False
            self._rule_out(2, "tls_malformed")
            return None
        if len(raw) > total:
            return Rejected("tls_extra_data")
        policy = self.policy
        try:
            verified = faketls.verify_client_hello(bytes(raw), policy.secrets)
        except faketls.TlsAuthError:
            return Rejected("tls_bad_hmac")
        except TlsError:
            return Rejected("tls_malformed")
        ts = verified.timestamp
        horizon = policy.replay.horizon if policy.replay is not None else float("-inf")
        if not now - policy.tls_max_past <= ts <= now + policy.tls_max_future or ts <= horizon:
            return Rejected("tls_bad_time")
        if not any(name in policy.tls_domains for name in verified.hello.server_names):
            return Rejected("tls_bad_sni")
        if self._is_replay(verified.hello.random[:16], now):
            return Rejected("tls_replay")
        self._tls = verified
        self._records = faketls.RecordReader()
        secret = policy.secrets[verified.secret_index]
        return Reply(
            faketls.build_server_hello(secret, verified.hello, shape=policy.server_hello)
        )

    def _feed_tls_inner(self, data: bytes | bytearray | memoryview, now: float) -> Event | None:
        assert self._records is not None and self._tls is not None
        chunk = bytearray(data)
        try:
            n = self._records.unwrap(memoryview(chunk), len(chunk))
        except TlsError:
            return Rejected("tls_inner_malformed", maskable=False)
        self._inner += chunk[:n]
        if len(self._inner) < HEADER_LEN:
            return None
        secret = self.policy.secrets[self._tls.secret_index]
        try:
            client = parse_client_header(bytes(self._inner[:HEADER_LEN]), [secret])
        except HandshakeError:
            return Rejected("tls_inner_bad_header", maskable=False)
        if self._is_replay(client.nonce, now):
            return Rejected("replay", maskable=False)
        client.secret_index = self._tls.secret_index
        return Accepted(
            client, Mode.TLS, bytes(self._inner[HEADER_LEN:]), self._records, self._tls.timestamp
        )

    def _is_replay(self, key: bytes, now: float) -> bool:
        replay = self.policy.replay
        return replay is not None and replay.seen(bytes(key[:16]), now)
