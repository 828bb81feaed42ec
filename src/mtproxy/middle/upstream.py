"""Middle-proxy mode for client sessions: the per-client upstream and the strategy object.

A client's decrypted obfuscated2 stream is cut into MTProto packets in its framing;
each packet goes to the middle-proxy as RPC_PROXY_REQ (flags for the framing,
quick-ack and unencrypted auth packets, the client's and our addresses, the ad tag)
over a connection shared with other clients. Answers come back as RPC_PROXY_ANS /
RPC_SIMPLE_ACK for the client's connection id and are framed for the client again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from ipaddress import IPv4Address
from typing import Final

from mtproxy.config.settings import Settings
from mtproxy.middle.addresses import AddressMap, parse_ip
from mtproxy.middle.config_source import ConfigSource, MiddleConfig, MiddleConfigError
from mtproxy.middle.fallback import DirectFallback
from mtproxy.middle.link import MeLink
from mtproxy.middle.options import MiddleOptions
from mtproxy.middle.pool import MePools, NoRouteError
from mtproxy.protocol.bufferpool import BufferPool
from mtproxy.protocol.errors import FramingError
from mtproxy.protocol.framing import (
    Framing,
    PacketSplitter,
    encode_packet,
    encode_quickack,
)
from mtproxy.protocol.handshake import Accepted
from mtproxy.protocol.rpc import (
    ClientFraming,
    IPAddress,
    encode_ip16,
    encode_tl_string,
    proxy_req_flags,
    unencrypted_packet_allowed,
)
from mtproxy.protocol.rpc.constants import (
    FLAG_NOT_ENCRYPTED,
    FLAG_QUICKACK,
    MAX_CLIENT_PACKET,
    RPC_PROXY_REQ,
    TL_PROXY_TAG,
)
from mtproxy.proxy.direct import DirectUpstreams
from mtproxy.proxy.stats import ProxyStats
from mtproxy.proxy.upstream import SessionPort, UpstreamHost

log = logging.getLogger("mtproxy.middle")

_REQ_HEAD: Final = struct.Struct("<II")
_REQ_ADDRESSES: Final = struct.Struct("<Q16si16si")
_ZERO_KEY: Final = bytes(8)
#: Smallest packets the official proxy forwards (mtproto-proxy.c:1709, 1666): an
#: unencrypted message header, and an encrypted one up to its first message.
MIN_PLAIN_PACKET: Final = 28
MIN_ENCRYPTED_PACKET: Final = 56
_QUICKACK_BIT: Final = 0x80000000
_UNSPECIFIED_V4: Final = IPv4Address(0)

_CLIENT_FRAMING: Final = {
    Framing.ABRIDGED: ClientFraming.ABRIDGED,
    Framing.INTERMEDIATE: ClientFraming.INTERMEDIATE,
    Framing.PADDED: ClientFraming.PADDED,
}


def request_tail(
    conn_id: int,
    remote: tuple[IPAddress, int],
    ours: tuple[IPAddress, int],
    ad_tag: bytes | None,
) -> bytes:
    """The part of every RPC_PROXY_REQ of one client after its flags, before the packet."""
    tail = _REQ_ADDRESSES.pack(
        conn_id, encode_ip16(remote[0]), remote[1], encode_ip16(ours[0]), ours[1]
    )
    if ad_tag is None:
        return tail
    extra = struct.pack("<I", TL_PROXY_TAG) + encode_tl_string(ad_tag)
    return tail + struct.pack("<i", len(extra)) + extra


class AnswerBuffer:
    """Frames answers for their clients where they lie, in the decrypted RPC frame.

    The client's length header goes into the 16 bytes of RPC_PROXY_ANS head before the
    data, and the padding of dd clients into the frame's CRC after it (checked
    already), so an answer reaches the client's cipher without a copy: a fresh buffer
    per big answer would cost more in page faults than the crypto does.
    """

    __slots__ = ("length", "rng")

    def __init__(self) -> None:
        import random

        #: Padding needs no secrecy: it is encrypted with the rest of the client's
        #: stream (the official server takes it from lrand48).
        self.rng = random.Random()
        self.length = struct.Struct("<I")

    def frame(self, framing: Framing, frame: memoryview) -> memoryview:
        """The packet framed for the client: a view into ``frame`` (an RPC frame holding
        an RPC_PROXY_ANS, the data at ``frame[24:-4]``), or a copy if it is read-only."""
        size = len(frame) - 28
        if frame.readonly:
            return memoryview(encode_packet(framing, frame[24 : 24 + size]))
        end = 24 + size
        if framing is Framing.INTERMEDIATE:
            self.length.pack_into(frame, 20, size)
            return frame[20:end]
        if framing is Framing.ABRIDGED:
            words = size >> 2
            if words < 0x7F:
                frame[23] = words
                return frame[23:end]
            self.length.pack_into(frame, 20, words << 8 | 0x7F)
            return frame[20:end]
        pad = self.rng.getrandbits(2)
        self.length.pack_into(frame, 20, size + pad)
        if pad:
            frame[end : end + pad] = self.rng.randbytes(pad)
        return frame[20 : end + pad]


def _address(name: tuple[str, int], fallback: IPAddress) -> tuple[IPAddress, int]:
    ip = parse_ip(str(name[0]))
    port = name[1] if isinstance(name[1], int) and 0 <= name[1] <= 0xFFFF else 0
    return (ip if ip is not None else fallback), port


class MiddleUpstream:
    """One client's half of a shared middle-proxy connection (the core's ``Upstream``)."""

    #: The connection is shared: a rate limit holds back the client's requests instead.
    pausable = False

    __slots__ = (
        "answers",
        "base_flags",
        "client",
        "client_blocked",
        "conn_id",
        "eof",
        "framing",
        "link",
        "queue_limit",
        "reader",
        "stats",
        "tail",
    )

    def __init__(
        self,
        client: SessionPort,
        link: MeLink,
        *,
        framing: Framing,
        tail: bytes,
        conn_id: int,
        has_ad_tag: bool,
        forward_pad: bool,
        queue_limit: int,
        stats: ProxyStats,
        answers: AnswerBuffer,
        buffer_pool: BufferPool | None = None,
    ) -> None:
        self.client = client
        self.answers = answers
        self.link: MeLink | None = link
        self.conn_id = conn_id
        self.framing = framing
        self.reader = PacketSplitter(framing, MAX_CLIENT_PACKET, buffer_pool)
        self.tail = tail
        # auth_key_id 1 stands for "encrypted": NOT_ENCRYPTED and QUICKACK vary per packet.
        self.base_flags = proxy_req_flags(
            _CLIENT_FRAMING[framing], auth_key_id=1, has_ad_tag=has_ad_tag, forward_pad=forward_pad
        )
        self.queue_limit = queue_limit
        self.stats = stats
        self.eof = False
        self.client_blocked = False

    # -- client -> middle-proxy (the core's Upstream protocol) -----------------------------

    def send(self, data: memoryview) -> None:
        link = self.link
        if link is None:
            return
        try:
            packets = self.reader.feed(data)
        except FramingError as exc:
            log.debug("client %s: bad framing: %s", self.client.peername, exc)
            self.client.close(abort=True)
            return
        if not packets:
            return
        base, tail, send_request = self.base_flags, self.tail, link.send_request
        sent = 0
        for payload, quickack in packets:
            size = len(payload)
            if size < MIN_PLAIN_PACKET or size & 3:
                continue
            if payload[:8] == _ZERO_KEY:
                if not unencrypted_packet_allowed(bytes(payload)):
                    continue
                flags = base | FLAG_NOT_ENCRYPTED
            elif size < MIN_ENCRYPTED_PACKET:
                continue
            else:
                flags = base
            if quickack:
                flags |= FLAG_QUICKACK
            # The packet is copied into the link's queue here, so it may be a view.
            send_request((_REQ_HEAD.pack(RPC_PROXY_REQ, flags), tail, payload))
            sent += 1
        self.reader.release()
        if sent:
            link.flush()
        stats = self.stats
        stats.me_requests += sent
        if sent < len(packets):
            stats.me_packets_dropped += len(packets) - sent

    def pause_reading(self) -> None:
        """The client's socket is full: its answers now count against the queue limit."""
        self.client_blocked = True

    def resume_reading(self) -> None:
        self.client_blocked = False

    def cut_reads(self, size: int) -> None:
        """The shared link reads for every client; a rate limit holds requests instead."""

    def was_reset(self) -> bool:
        """The shared link keeps reading whatever one client does; it reports its own loss."""
        return False

    def write_eof(self) -> None:
        # A client that stops sending is done: the RPC protocol has no half-close.
        self.eof = True
        self.client.close()

    def close(self, abort: bool = False) -> None:
        """The client is gone: RPC_CLOSE_CONN, unless the middle-proxy ended it first."""
        link, self.link = self.link, None
        if link is not None:
            link.unregister(self.conn_id)

    # -- middle-proxy -> client (the link's LinkClient protocol) ---------------------------

    def answer(self, frame: memoryview) -> None:
        if self.client_blocked and self._over_limit():
            return
        if len(frame) <= 28:  # no data
            return
        self.stats.me_answers += 1
        self.client.send_plain(self.answers.frame(self.framing, frame))

    def quickack(self, confirm: bytes) -> None:
        if self.client_blocked and self._over_limit():
            return
        # Telegram's confirm has its top bit set already; make sure, so an abridged
        # client can tell it from a packet length.
        value = int.from_bytes(confirm, "little") | _QUICKACK_BIT
        self.stats.me_quickacks += 1
        self.client.send_plain(encode_quickack(self.framing, value.to_bytes(4, "little")))

    def closed_by_telegram(self) -> None:
        self.link = None
        self.stats.me_closed_by_telegram += 1
        self.client.close()

    def link_lost(self) -> None:
        self.link = None
        self.client.peer_lost(None)

    def pause_client(self) -> None:
        self.client.pause_reading()

    def resume_client(self) -> None:
        self.client.resume_reading()

    def _over_limit(self) -> bool:
        client = self.client
        queued = client.write_buffer_size()
        if queued <= self.queue_limit:
            return False
        if not client.is_closing():
            self.stats.me_slow_clients_dropped += 1
            log.info("client %s dropped: %d bytes of answers unread", client.peername, queued)
            client.close(abort=True)
        return True


class MiddleUpstreams:
    """The server's upstream strategy in middle-proxy mode."""

    #: Answers are re-framed per client, so the download pass-through cannot apply.
    supports_passthrough = False

    def __init__(
        self,
        server: UpstreamHost,
        *,
        options: MiddleOptions | None = None,
        source: ConfigSource | None = None,
    ) -> None:
        self.server = server
        settings = server.settings
        self.settings = settings
        self.options = options or MiddleOptions.from_settings(settings)
        self.source = source or ConfigSource.from_settings(settings, server.stats)
        self.addresses = AddressMap(settings.nat_info)
        self.ad_tag = settings.ad_tag
        #: Big packets and frames split across reads are assembled in these, shared by
        #: every client and connection of this server.
        self.buffer_pool = BufferPool()
        self.pools = MePools(
            options=self.options,
            stats=server.stats,
            addresses=self.addresses,
            ip_services=settings.ip_services,
            prefer_ipv6=settings.prefer_ipv6,
            min_connections=settings.middle_min_connections,
            max_connections=settings.middle_max_connections,
            keepalive=settings.keepalive,
            buffer_pool=self.buffer_pool,
        )
        self._refresher: asyncio.Task[None] | None = None
        self.answers = AnswerBuffer()
        # Direct mode for DCs whose middle-proxies cannot be had (see middle/fallback.py).
        self.fallback = DirectFallback(
            self.pools, enabled=settings.middle_fallback, after=settings.middle_fallback_after
        )
        self.direct = DirectUpstreams(server)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the proxy list and secret; without any, MiddleConfigError unless the
        fallback serves clients directly meanwhile."""
        try:
            config = await self.source.load()
        except MiddleConfigError as exc:
            if not self.fallback.enabled:
                raise
            log.warning("%s; serving clients directly, without the ad tag, until it can be "
                        "had (--no-middle-fallback fails instead)", exc)
        else:
            self._apply_first(config)
        self._refresher = self.server.loop.create_task(self._refresh_loop())

    def _apply_first(self, config: MiddleConfig) -> None:
        self.pools.apply(config)
        table = config.config
        log.info(
            "middle-proxy mode%s: %d addresses for %d DCs (default DC %d)",
            " with ad tag" if self.ad_tag else "",
            len(self.pools.pools), len(table.dcs), table.default_dc,
        )

    def health(self) -> dict[str, object]:
        """Per middle-proxy address and per DC, for /stats and /metrics."""
        return {"targets": self.pools.health(), **self.fallback.health()}

    async def refresh(self) -> bool:
        """Fetch again now; apply a changed list. True if something changed."""
        config = await self.source.load()
        self.pools.forget_detection()
        if config == self.pools.config:
            return False
        old = self.pools.config
        if old is None:
            self._apply_first(config)
            log.info("Telegram's proxy list is here: new clients go through middle-proxies")
            return True
        self.pools.apply(config)
        if old is not None and old.secret != config.secret:
            log.info("Telegram's proxy secret changed; new connections use the new one")
        log.info("proxy list updated: %d middle-proxy addresses", len(self.pools.pools))
        return True

    async def _refresh_loop(self) -> None:
        while True:
            delay = self.settings.proxy_config_refresh
            if self.pools.config is None:  # serving directly: try sooner
                delay = min(delay, self.options.config_retry)
            await asyncio.sleep(delay)
            try:
                await self.refresh()
            except MiddleConfigError as exc:  # only if nothing was ever loaded
                log.warning("%s", exc)
            except Exception:  # a refresh must never stop the next one
                log.exception("refreshing the proxy list failed")

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        await self.pools.close()

    # -- sessions ----------------------------------------------------------------------------

    def reconfigure(self, settings: Settings) -> None:
        """The proxy list has its own refresh; a reload only reaches the direct fallback."""
        self.direct.reconfigure(settings)

    def open(
        self, session: SessionPort, accepted: Accepted, passthrough: bool
    ) -> asyncio.Task[None]:
        return self.server.loop.create_task(self._attach(session, accepted))

    async def _attach(self, client: SessionPort, accepted: Accepted) -> None:
        hello = accepted.client
        stats = self.server.stats
        fallback = self.fallback
        if fallback.bypass(hello.dc_id):
            fallback.served_directly(hello.dc_id)
            await self.direct.open(client, accepted, False)
            return
        try:
            link = await self.pools.acquire(hello.dc_id, self.options.connect_timeout)
        except (NoRouteError, TimeoutError) as exc:
            if not client.closed and fallback.bypass(hello.dc_id):
                fallback.served_directly(hello.dc_id)
                await self.direct.open(client, accepted, False)
                return
            client.upstream_failed(str(exc))
            return
        if client.closed:
            return
        stats.upstream_connects += 1
        remote = _address(client.peername, _UNSPECIFIED_V4)
        ours = _address(client.sockname, _UNSPECIFIED_V4)
        ours = (self.addresses.public(ours[0]), ours[1])
        conn_id = link.new_conn_id()
        upstream = MiddleUpstream(
            client,
            link,
            framing=hello.framing,
            tail=request_tail(conn_id, remote, ours, self.ad_tag),
            conn_id=conn_id,
            has_ad_tag=self.ad_tag is not None,
            forward_pad=self.options.forward_pad,
            queue_limit=self.options.client_queue_limit,
            stats=stats,
            answers=self.answers,
            buffer_pool=self.buffer_pool,
        )
        link.register(upstream)
        client.peer_ready(upstream)
        if link.write_paused and upstream.link is not None:
            client.pause_reading()

