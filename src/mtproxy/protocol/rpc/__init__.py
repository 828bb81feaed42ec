"""Middle-end RPC protocol: messages, key derivation, framing codec, client state machine.

The pieces, bottom up (each usable alone):

- :mod:`.constants` -- opcodes, flags and limits of the official server (import from there).
- :mod:`.messages` -- one frozen dataclass per message with ``encode``/``decode``,
  :func:`parse_message`, and :func:`proxy_req_flags` for client connections.
- :mod:`.keys` -- :func:`derive_keys`, the AES-256-CBC key schedule.
- :mod:`.codec` -- :class:`RpcCodec`, framing + CRC + CBC + padding for one connection.
- :mod:`.client` -- :class:`RpcClient`, the proxy's side of the handshake on top.

Every error caused by the peer's bytes is an :class:`RpcError`.

The protocol itself, layout by layout: docs/protocol.md §8.
"""

from mtproxy.protocol.rpc.client import RpcClient, RpcClientState
from mtproxy.protocol.rpc.codec import RpcCodec
from mtproxy.protocol.rpc.errors import RpcError
from mtproxy.protocol.rpc.keys import RpcKeys, derive_keys, key_material
from mtproxy.protocol.rpc.messages import (
    UNENCRYPTED_FUNCTIONS,
    ClientFraming,
    CloseConn,
    CloseExt,
    Handshake,
    HandshakeError,
    IPAddress,
    Nonce,
    Ping,
    Pong,
    ProcessId,
    ProxyAns,
    ProxyReq,
    RpcMessage,
    SimpleAck,
    UnknownMessage,
    decode_ip16,
    decode_tl_string,
    encode_ip16,
    encode_tl_string,
    packet_auth_key_id,
    parse_message,
    proxy_req_flags,
    unencrypted_packet_allowed,
)

__all__ = [
    "UNENCRYPTED_FUNCTIONS",
    "ClientFraming",
    "CloseConn",
    "CloseExt",
    "Handshake",
    "HandshakeError",
    "IPAddress",
    "Nonce",
    "Ping",
    "Pong",
    "ProcessId",
    "ProxyAns",
    "ProxyReq",
    "RpcClient",
    "RpcClientState",
    "RpcCodec",
    "RpcError",
    "RpcKeys",
    "RpcMessage",
    "SimpleAck",
    "UnknownMessage",
    "decode_ip16",
    "decode_tl_string",
    "derive_keys",
    "encode_ip16",
    "encode_tl_string",
    "key_material",
    "packet_auth_key_id",
    "parse_message",
    "proxy_req_flags",
    "unencrypted_packet_allowed",
]
