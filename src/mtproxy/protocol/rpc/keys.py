"""AES-256-CBC keys of an RPC connection (OFF ``aes_create_keys``, net-crypto-aes.c:232-300).

::

    s = nonce_srv | nonce_clt | clt_ts:u32 | srv_ip:u32 | clt_port:u16 | "CLIENT"/"SERVER"
        | clt_ip:u32 | srv_port:u16 | secret | nonce_srv | [clt_ipv6 | srv_ipv6] | nonce_clt
    key = MD5(s[1:])[:12] | SHA1(s)      iv = MD5(s[2:])

IPv4 addresses are host-order integers stored little-endian (``*(unsigned *)``),
ports little-endian u16. Over IPv6 both IPv4 fields are zero and the two raw
16-byte addresses are inserted. The writer of the connection's client side uses
"CLIENT", its reader "SERVER"; the server side the other way round.

``clt_ip`` must be the proxy's address as the middle-end sees it (its public IP
behind NAT, OFF ``--nat-info``); ``srv_ip`` the middle-end address the proxy
connected to. ``clt_ts`` is the *client's* ``crypto_ts`` on both sides.

Prose and context: docs/protocol.md §8.4.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from mtproxy.protocol.rpc.messages import IPAddress


@dataclass(frozen=True, slots=True)
class RpcKeys:
    """Keys and IVs for one side of a connection: what it writes with, what it reads with."""

    write_key: bytes
    write_iv: bytes
    read_key: bytes
    read_iv: bytes


def _as_ip(value: IPAddress | str) -> IPAddress:
    return ip_address(value) if isinstance(value, str) else value


def key_material(
    *,
    purpose: bytes,
    nonce_srv: bytes,
    nonce_clt: bytes,
    clt_ts: int,
    srv_ip: IPAddress | str,
    srv_port: int,
    clt_ip: IPAddress | str,
    clt_port: int,
    secret: bytes,
) -> bytes:
    """The string ``s`` hashed into one key/IV pair; ``purpose`` is b"CLIENT" or b"SERVER"."""
    if purpose not in (b"CLIENT", b"SERVER"):
        raise ValueError("purpose must be b'CLIENT' or b'SERVER'")
    if len(nonce_srv) != 16 or len(nonce_clt) != 16:
        raise ValueError("nonces must be 16 bytes")
    for name, port in (("srv_port", srv_port), ("clt_port", clt_port)):
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"{name} {port} out of range")
    srv, clt = _as_ip(srv_ip), _as_ip(clt_ip)
    if isinstance(srv, IPv4Address) and isinstance(clt, IPv4Address):
        srv4, clt4, ipv6 = int(srv), int(clt), b""
    elif isinstance(srv, IPv6Address) and isinstance(clt, IPv6Address):
        srv4, clt4, ipv6 = 0, 0, clt.packed + srv.packed
    else:
        raise ValueError("client and server addresses must be of the same family")
    parts = (
        nonce_srv,
        nonce_clt,
        (clt_ts & 0xFFFFFFFF).to_bytes(4, "little"),
        srv4.to_bytes(4, "little"),
        clt_port.to_bytes(2, "little"),
        purpose,
        clt4.to_bytes(4, "little"),
        srv_port.to_bytes(2, "little"),
        secret,
        nonce_srv,
        ipv6,
        nonce_clt,
    )
    return b"".join(parts)


def _key_iv(material: bytes) -> tuple[bytes, bytes]:
    key = hashlib.md5(material[1:]).digest()[:12] + hashlib.sha1(material).digest()
    iv = hashlib.md5(material[2:]).digest()
    return key, iv


def derive_keys(
    *,
    nonce_srv: bytes,
    nonce_clt: bytes,
    clt_ts: int,
    srv_ip: IPAddress | str,
    srv_port: int,
    clt_ip: IPAddress | str,
    clt_port: int,
    secret: bytes,
    am_client: bool = True,
) -> RpcKeys:
    """Both directions' keys for the client side (default) or the server side."""
    material = functools.partial(
        key_material,
        nonce_srv=nonce_srv,
        nonce_clt=nonce_clt,
        clt_ts=clt_ts,
        srv_ip=srv_ip,
        srv_port=srv_port,
        clt_ip=clt_ip,
        clt_port=clt_port,
        secret=secret,
    )
    client_key, client_iv = _key_iv(material(purpose=b"CLIENT"))
    server_key, server_iv = _key_iv(material(purpose=b"SERVER"))
    if am_client:
        return RpcKeys(client_key, client_iv, server_key, server_iv)
    return RpcKeys(server_key, server_iv, client_key, client_iv)
