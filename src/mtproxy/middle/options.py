"""Tunables of middle-proxy mode that are not user settings (tests shorten them)."""

from __future__ import annotations

from dataclasses import dataclass

from mtproxy.config.settings import Settings
from mtproxy.protocol.crc32c import HAVE_FAST_CRC32C


@dataclass(frozen=True)
class MiddleOptions:
    #: Seconds between our RPC_PING frames on an idle-or-not connection (OFF: 5 s).
    ping_interval: float = 5.0
    #: A connection that sent nothing (not even a pong) for this long is dead.
    silence_timeout: float = 20.0
    #: Seconds to connect and finish the RPC handshake.
    connect_timeout: float = 10.0
    #: Reconnect delay after the first failure, doubled per failure up to the maximum,
    #: then multiplied by a random factor in [1 - jitter, 1 + jitter].
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    backoff_jitter: float = 0.5
    #: A pool opens another connection (up to its maximum) once its least loaded one
    #: carries this many clients, or when every ready one is write-blocked.
    clients_per_connection: int = 64
    #: Answer bytes a client may leave unread in its socket buffer before it alone is
    #: dropped; a slow client must never stall the connection it shares. Answers are
    #: replies to the client's own requests (file parts of up to 1 MiB, several in
    #: flight), so this is a few MiB; the official server allows 32 MiB.
    client_queue_limit: int = 4 * 1024 * 1024
    #: Ask the middle-proxy for CRC32C frames, as the official server does, when it runs
    #: in C here (the optional crc32c package); zlib's CRC32 otherwise.
    request_crc32c: bool = HAVE_FAST_CRC32C
    #: Send PAD for dd clients (ALX, ERL, TMT do; the official server strips it).
    forward_pad: bool = True
    #: Seconds between attempts to load the proxy list while there is none (the
    #: clients are served directly meanwhile); the usual refresh period once there is.
    config_retry: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> MiddleOptions:
        return cls(
            connect_timeout=settings.connect_timeout,
            client_queue_limit=settings.middle_client_queue,
        )
