"""Independent test peers for the proxy: app clients, a fake DC and a Telethon auth responder.

Nothing here imports ``mtproxy``: the fakes re-implement obfuscated2, the framings and fake
TLS from the protocol notes so that a symmetric bug in the proxy cannot hide behind them.

Import as ``fakes`` (pytest puts tests/ on sys.path because tests/ has no __init__.py);
tests/fakes_selftest shows every piece in use, including a throwaway relay standing in for
the proxy.
"""

from .clients import (
    FakeTlsVerifyError,
    ServerHelloInfo,
    build_client_hello,
    client_hello_digest,
    faketls_exchange,
    open_dc_direct,
    open_faketls,
    open_obfs2,
    parse_server_response,
    read_server_hello_raw,
    server_response_digest,
    verify_server_response,
)
from .dc import (
    DcConn,
    FakeDC,
    SinkResult,
    StreamDigest,
    StreamVerifier,
    deterministic_bytes,
    deterministic_chunks,
    deterministic_sha256,
    echo_handler,
    endless_source_handler,
    make_duplex_handler,
    make_sink_handler,
    make_source_handler,
    packet_echo_handler,
    parse_sink_reply,
)
from .mask import RecordedConn, RecordingServer
from .obfs import (
    TAG_ABRIDGED,
    TAG_INTERMEDIATE,
    TAG_PADDED,
    TAGS,
    BadHeaderError,
    FakeTlsError,
    FakeTlsHandshakeResult,
    FramingError,
    ObfsStream,
    Packet,
    PacketDecoder,
    encode_packet,
    encode_quickack_confirm,
)
from .telethon_dc import TelethonAuthResponder, TelethonDriveError, drive_telethon

__all__ = [
    "TAGS",
    "TAG_ABRIDGED",
    "TAG_INTERMEDIATE",
    "TAG_PADDED",
    "BadHeaderError",
    "DcConn",
    "FakeDC",
    "FakeTlsError",
    "FakeTlsHandshakeResult",
    "FakeTlsVerifyError",
    "FramingError",
    "ObfsStream",
    "Packet",
    "PacketDecoder",
    "RecordedConn",
    "RecordingServer",
    "ServerHelloInfo",
    "SinkResult",
    "StreamDigest",
    "StreamVerifier",
    "TelethonAuthResponder",
    "TelethonDriveError",
    "build_client_hello",
    "client_hello_digest",
    "deterministic_bytes",
    "deterministic_chunks",
    "deterministic_sha256",
    "drive_telethon",
    "echo_handler",
    "encode_packet",
    "encode_quickack_confirm",
    "endless_source_handler",
    "faketls_exchange",
    "make_duplex_handler",
    "make_sink_handler",
    "make_source_handler",
    "open_dc_direct",
    "open_faketls",
    "open_obfs2",
    "packet_echo_handler",
    "parse_server_response",
    "parse_sink_reply",
    "read_server_hello_raw",
    "server_response_digest",
    "verify_server_response",
]
