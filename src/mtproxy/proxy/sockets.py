"""Socket options and listening sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

from mtproxy.protocol.dc import Endpoint, format_endpoint


class ListenError(Exception):
    """A listening address could not be bound; the message says why and what to do."""


def listen_error(endpoint: Endpoint, exc: OSError) -> ListenError:
    where = format_endpoint(endpoint)
    if isinstance(exc, PermissionError):
        return ListenError(
            f"cannot listen on {where}: permission denied; run as root, grant "
            "CAP_NET_BIND_SERVICE, or use --listen with a port above 1023"
        )
    return ListenError(
        f"cannot listen on {where}: {exc.strerror or exc}; choose another address with --listen"
    )


def keepalive_timing(sock: socket.socket, idle: int) -> None:
    """Keepalive timing on a listener, without turning keepalive on.

    Linux copies these to accepted sockets, so :func:`enable_keepalive` later costs one
    system call. Keepalive itself waits for the client's handshake: a probe from the
    server on a connection a prober left idle is a tell the mask site does not have.
    """
    if idle <= 0 or not hasattr(socket, "TCP_KEEPIDLE"):
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, min(idle, 30)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)


def enable_keepalive(sock: socket.socket | None) -> None:
    """Turn keepalive on for an accepted client (timing comes from the listener)."""
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


_LINGER_NONE = struct.pack("ii", 1, 0)
#: Seconds a closing socket may take to hand its queued bytes to a peer that stopped
#: reading, before it is reset: nothing outlives its session by more than this.
FLUSH_DEADLINE = 5.0
_TCP_CLOSE = 7  # tcpi_state after a reset (Linux include/net/tcp_states.h)


def close_soon(transport: asyncio.Transport) -> None:
    """Close after sending what is queued, but no later than :data:`FLUSH_DEADLINE`."""
    transport.close()
    if transport.get_write_buffer_size():
        asyncio.get_running_loop().call_later(FLUSH_DEADLINE, reset_now, transport)


def reset_now(transport: asyncio.Transport) -> None:
    """Drop the connection with a reset: a plain close would leave the kernel holding the
    unsent bytes (and the connection) for as long as the peer keeps its window shut."""
    reset_on_close(transport.get_extra_info("socket"))
    transport.abort()


def was_reset(sock: socket.socket | None) -> bool:
    """The peer reset this connection (seen even while we do not read from it: a socket
    whose reading is paused is not watched by the event loop, so nothing else tells)."""
    if sock is None or not hasattr(socket, "TCP_INFO"):
        return False
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == _TCP_CLOSE
    except OSError:
        return True


def reset_on_close(sock: socket.socket | None) -> None:
    """Make the next close send a TCP reset, as a server that aborts a connection does
    (a plain close sends FIN even when asyncio calls it an abort)."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_NONE)


def write_segmented(transport: asyncio.Transport, data: bytes, size: int) -> None:
    """Write ``data`` as TCP segments of at most ``size`` bytes; later writes go on in
    full ones.

    Linux cannot lower a connection's MSS for a while: TCP_MAXSEG set on an accepted
    socket changes nothing, and set on the listener it is advertised in the SYN-ACK and
    holds both ways for the connection's life. What works: each piece sent on its own
    with MSG_EOR, which forbids the kernel to append later bytes to that buffer, while
    TCP_NODELAY (asyncio and uvloop set it) sends it at once. The pieces still count
    against the initial congestion window (ten segments): more than ten cost a round
    trip each ten. Only while nothing else is queued (order), and on a non-blocking
    socket: what the kernel does not take at once is left to the transport.
    """
    sock = transport.get_extra_info("socket")
    if sock is None or transport.get_write_buffer_size() or not hasattr(socket, "MSG_EOR"):
        transport.write(data)
        return
    # The transport's own socket object does not send; a second one on its descriptor
    # does, and is detached (not closed) afterwards.
    raw = socket.socket(fileno=sock.fileno())
    sent = 0
    try:
        while sent < len(data):
            sent += raw.send(data[sent : sent + size], socket.MSG_EOR)
    except (BlockingIOError, InterruptedError):
        pass
    except OSError:
        pass  # the transport meets the same error on its next write and reports it
    finally:
        raw.detach()
    if sent < len(data):
        transport.write(data[sent:])


def set_keepalive(sock: socket.socket, idle: int, *, probes: bool = True) -> None:
    """TCP keepalive so dead peers (NAT timeouts, vanished phones) get noticed.

    ``probes`` also tightens the probe interval and count; the DC leg keeps the
    kernel's defaults for those and saves two system calls per session.
    """
    if idle <= 0:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        if probes:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, min(idle, 30)))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)


def listening_socket(
    endpoint: Endpoint, *, backlog: int, keepalive: int, reuse_port: bool = False
) -> socket.socket:
    """A bound, listening, non-blocking socket (with the keepalive timing clients get
    once they complete a handshake; see :func:`keepalive_timing`)."""
    host, port = endpoint
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        keepalive_timing(sock, keepalive)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
