"""Client side of one middle-end RPC connection as a sans-I/O state machine.

Sequence (net-tcp-rpc-client.c): we send RPC_NONCE in plaintext; the ME answers
with its own; both derive keys (:func:`derive_keys`); we send RPC_HANDSHAKE,
encrypted; the ME answers RPC_HANDSHAKE (or RPC_HANDSHAKE_ERROR). From then on
the connection carries RPC_PROXY_REQ / RPC_CLOSE_CONN out and RPC_PROXY_ANS /
RPC_SIMPLE_ACK / RPC_CLOSE_EXT in, plus pings both ways.

Usage with any transport::

    rpc = RpcClient(secret=secret, local=(local_ip, local_port),
                    remote=(me_ip, me_port), public_ip=nat_ip, now=int(time.time()))
    write(rpc.initiate())
    while not rpc.ready:
        rpc.receive(read())            # handshake messages are consumed here
        write(rpc.data_to_send())
    rpc.send(ProxyReq(...)); write(rpc.data_to_send())
    for msg in rpc.receive(read()): ...   # pings are answered automatically

A wrong ``public_ip`` (the address the ME sees us as) makes the keys differ; the
real ME then just closes the connection, so a silent close right after our
handshake usually means NAT settings are wrong.

The exchange step by step: docs/protocol.md §8.3 to §8.5.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from ipaddress import IPv4Address, ip_address

from mtproxy.protocol.bufferpool import BufferPool
from mtproxy.protocol.proxy_config import key_selector
from mtproxy.protocol.rpc.codec import RpcCodec
from mtproxy.protocol.rpc.constants import (
    DEFAULT_MAX_FRAME_LEN,
    NONCE_TIME_SKEW_MAX,
    RPC_CRYPTO_AES,
    RPCF_USE_CRC32C,
)
from mtproxy.protocol.rpc.errors import RpcError
from mtproxy.protocol.rpc.keys import RpcKeys, derive_keys
from mtproxy.protocol.rpc.messages import (
    Handshake,
    HandshakeError,
    IPAddress,
    Nonce,
    Ping,
    ProcessId,
    RpcMessage,
    parse_message,
)


class RpcClientState(enum.Enum):
    NEW = "new"
    NONCE_SENT = "nonce-sent"
    HANDSHAKE_SENT = "handshake-sent"
    READY = "ready"
    FAILED = "failed"


class RpcClient:
    """Handshake and message exchange for one connection to a middle-end.

    ``local`` is the socket's own address, ``remote`` the ME address connected to,
    ``public_ip`` the address the ME sees us as (defaults to ``local``'s IP; set it
    behind NAT). ``now`` is unix time in seconds for ``crypto_ts`` and the skew
    check. ``request_crc32c`` asks for CRC32C like the official client does; the
    ME may decline, :attr:`crc32c` tells the outcome.
    """

    def __init__(
        self,
        *,
        secret: bytes,
        local: tuple[IPAddress | str, int],
        remote: tuple[IPAddress | str, int],
        now: int,
        public_ip: IPAddress | str | None = None,
        request_crc32c: bool = False,
        nonce: bytes | None = None,
        pid: int | None = None,
        max_frame_len: int = DEFAULT_MAX_FRAME_LEN,
        buffer_pool: BufferPool | None = None,
    ) -> None:
        if len(secret) < 4:
            raise ValueError("proxy secret too short")
        self._secret = secret
        self._local_ip = ip_address(local[0]) if isinstance(local[0], str) else local[0]
        self._local_port = local[1]
        self._remote_ip = ip_address(remote[0]) if isinstance(remote[0], str) else remote[0]
        self._remote_port = remote[1]
        public = self._local_ip if public_ip is None else public_ip
        self._public_ip = ip_address(public) if isinstance(public, str) else public
        if isinstance(self._public_ip, IPv4Address) != isinstance(self._remote_ip, IPv4Address):
            raise ValueError("public and middle-end addresses must be of the same family")
        self._now = now & 0xFFFFFFFF
        self._nonce = os.urandom(16) if nonce is None else nonce
        if len(self._nonce) != 16:
            raise ValueError("nonce must be 16 bytes")
        self._request_crc32c = request_crc32c
        self._codec = RpcCodec(max_frame_len=max_frame_len, pool=buffer_pool)
        if request_crc32c:
            self._codec.hold_after_handshake()
        self._state = RpcClientState.NEW
        self._out: list[bytes] = []
        # Once ready, every message is framed as plaintext into one batch buffer and
        # encrypted at once when it is taken (see RpcCodec.append / seal).
        self._batch = bytearray()
        self._fill = 0
        self._keys: RpcKeys | None = None
        self.sender_pid = ProcessId(
            ip=ProcessId.ip_field(self._local_ip),
            port=0,
            pid=(os.getpid() if pid is None else pid) & 0xFFFF,
            utime=self._now,
        )
        self.expected_peer_pid = ProcessId(
            ip=ProcessId.ip_field(self._remote_ip), port=self._remote_port
        )
        self.server_pid: ProcessId | None = None

    # --- state -----------------------------------------------------------------

    @property
    def state(self) -> RpcClientState:
        return self._state

    @property
    def ready(self) -> bool:
        return self._state is RpcClientState.READY

    @property
    def crc32c(self) -> bool:
        return self._codec.crc32c

    @property
    def keys(self) -> RpcKeys | None:
        """The derived keys, once the ME's nonce arrived (for diagnostics)."""
        return self._keys

    @property
    def key_select(self) -> int:
        return key_selector(self._secret)

    # --- driving ----------------------------------------------------------------

    def initiate(self) -> bytes:
        """The plaintext RPC_NONCE frame to send first."""
        if self._state is not RpcClientState.NEW:
            raise ValueError("initiate() may be called once")
        self._state = RpcClientState.NONCE_SENT
        nonce = Nonce(key_select=self.key_select, crypto_ts=self._now, nonce=self._nonce)
        return self._codec.encode(nonce.encode())

    def receive(self, data: bytes) -> list[RpcMessage]:
        """Process received bytes; return the messages that follow the handshake."""
        if self._state is RpcClientState.NEW:
            raise ValueError("initiate() first")
        try:
            return self._receive(data)
        except RpcError:
            self._state = RpcClientState.FAILED
            raise

    def send(self, *messages: RpcMessage) -> None:
        """Queue messages for :meth:`data_to_send`; only once the handshake is done."""
        self.send_payloads(*(message.encode() for message in messages))

    def send_payloads(self, *payloads: bytes) -> None:
        """Queue already-encoded message payloads (the relay's hot path skips the objects)."""
        if not self.ready:
            raise ValueError(f"cannot send in state {self._state.value}")
        append, batch, fill = self._codec.append, self._batch, self._fill
        for payload in payloads:
            fill = append(batch, fill, (payload,))
        self._fill = fill

    def send_parts(self, parts: Sequence[bytes | bytearray | memoryview]) -> None:
        """Queue one message given in pieces; they are copied before this returns."""
        if self._state is not RpcClientState.READY:
            raise ValueError(f"cannot send in state {self._state.value}")
        self._fill = self._codec.append(self._batch, self._fill, parts)

    @property
    def queued(self) -> int:
        """Bytes queued for the next :meth:`output`."""
        return self._fill + sum(len(part) for part in self._out)

    def receive_raw(self, data: bytes) -> list[memoryview]:
        """Like :meth:`receive`, but returns undecoded payloads (read-only views).

        For the relay's hot path: the caller dispatches on the opcode itself and must
        answer RPC_PING (``receive`` does that automatically). Handshake frames are
        still consumed here.
        """
        if self._state is RpcClientState.READY:
            try:
                return self._codec.feed_views(data)
            except RpcError:
                self._state = RpcClientState.FAILED
                raise
        out: list[memoryview] = []
        for message in self.receive(data):
            if not isinstance(message, Ping):  # receive() already answered it
                out.append(memoryview(message.encode()))
        return out

    def receive_frames(
        self, data: bytes | bytearray | memoryview, scratch: bytearray | None = None
    ) -> list[memoryview]:
        """Like :meth:`receive_raw`, but whole frames (RpcCodec.feed_frames): the
        payload is ``frame[8:-4]``, and the frame's bytes may be overwritten. Handshake
        messages come back wrapped in dummy frames."""
        if self._state is RpcClientState.READY:
            try:
                return self._codec.feed_frames(data, scratch)
            except RpcError:
                self._state = RpcClientState.FAILED
                raise
        out: list[memoryview] = []
        for message in self.receive(bytes(data)):
            if not isinstance(message, Ping):  # receive() already answered it
                out.append(memoryview(bytearray(8) + message.encode() + bytearray(4)))
        return out

    def release(self) -> None:
        """Done with the views :meth:`receive_raw` returned (see RpcCodec.release)."""
        self._codec.release()

    def output(self) -> bytes | memoryview:
        """Everything queued so far, encrypted and padded: write it before queueing more.

        Usually a view of the batch buffer, which is reused for the next messages:
        call :meth:`renew_batch` if the transport kept a reference to it.
        """
        if self._state is RpcClientState.FAILED or not self._codec.encrypted:
            data, self._out = b"".join(self._out), []
            return data
        if self._codec.unpadded:
            self._out.append(self._codec.flush())
        end = self._codec.seal(self._batch, self._fill) if self._fill else 0
        self._fill = 0
        if not self._out:
            return memoryview(self._batch)[:end]
        data = b"".join(self._out) + self._batch[:end]
        self._out = []
        return data

    def renew_batch(self) -> None:
        """The last :meth:`output` is still referenced: queue into a new buffer."""
        self._batch = bytearray()

    def data_to_send(self) -> bytes:
        """Everything queued so far (handshake, pongs, sent messages), padded for AES."""
        out = self.output()
        if isinstance(out, memoryview):
            data = bytes(out)
            out.release()
            return data
        return out

    # --- internals -----------------------------------------------------------------

    def _receive(self, data: bytes) -> list[RpcMessage]:
        messages: list[RpcMessage] = []
        payloads = self._codec.feed(data)
        while payloads:
            payload = payloads.pop(0)
            if self._state is RpcClientState.NONCE_SENT:
                self._on_nonce(payload)
                payloads.extend(self._codec.feed(b""))
            elif self._state is RpcClientState.HANDSHAKE_SENT:
                self._on_handshake(payload)
                payloads.extend(self._codec.feed(b""))
            else:
                message = parse_message(payload)
                if isinstance(message, Ping):
                    self.send(message.pong())
                messages.append(message)
        return messages

    def _on_nonce(self, payload: bytes) -> None:
        reply = Nonce.decode(payload)
        if reply.crypto_schema != RPC_CRYPTO_AES:
            raise RpcError(f"middle-end chose crypto schema {reply.crypto_schema}, expected AES")
        if reply.key_select != self.key_select:
            raise RpcError(
                f"middle-end key_select {reply.key_select:08x} != ours {self.key_select:08x}"
                " (proxy secret out of date?)"
            )
        skew = abs(reply.crypto_ts - self._now)
        if skew > NONCE_TIME_SKEW_MAX:
            raise RpcError(f"middle-end clock differs by {skew} s (limit {NONCE_TIME_SKEW_MAX})")
        self._keys = derive_keys(
            nonce_srv=reply.nonce,
            nonce_clt=self._nonce,
            clt_ts=self._now,
            srv_ip=self._remote_ip,
            srv_port=self._remote_port,
            clt_ip=self._public_ip,
            clt_port=self._local_port,
            secret=self._secret,
        )
        self._codec.start_encryption(self._keys)
        handshake = Handshake(
            flags=RPCF_USE_CRC32C if self._request_crc32c else 0,
            sender_pid=self.sender_pid,
            peer_pid=self.expected_peer_pid,
        )
        self._out.append(self._codec.encode(handshake.encode()))
        self._state = RpcClientState.HANDSHAKE_SENT

    def _on_handshake(self, payload: bytes) -> None:
        message = parse_message(payload)
        if isinstance(message, HandshakeError):
            raise RpcError(f"middle-end refused the handshake with error {message.error_code}")
        if not isinstance(message, Handshake):
            raise RpcError(f"expected RPC_HANDSHAKE, got {type(message).__name__}")
        if message.flags & 0xFF:
            raise RpcError(f"RPC_HANDSHAKE reply has unsupported flags {message.flags:08x}")
        if message.flags & RPCF_USE_CRC32C:
            if not self._request_crc32c:
                raise RpcError("middle-end enabled CRC32C without being asked")
            self._codec.set_crc32c()
        if not self.sender_pid.matches(message.peer_pid):
            # OFF: matches_pid(&PID, &reply.peer_pid), zero fields of the reply being
            # wildcards (net-tcp-rpc-client.c:311); ALX compares the bytes.
            raise RpcError("RPC_HANDSHAKE reply names another process as its peer")
        # The reply's sender_pid is only recorded: OFF also matches it against the
        # address it dialled, ALX and TMT do not, and a middle-end behind a load
        # balancer may report an internal address.
        self.server_pid = message.sender_pid
        self._state = RpcClientState.READY
