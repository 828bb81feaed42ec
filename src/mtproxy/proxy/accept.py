"""Accepting connections within a budget of file descriptors.

Every listening socket gets a :class:`Listener`, which accepts in one of two ways:

- **the loop's own path** (``loop.create_server``). uvloop accepts in C, the cheapest
  way to take a client, but it cannot be told what to do when the process is out of
  file descriptors: libuv then accepts and closes every waiting client, silently.
- **ours** (``loop.add_reader`` on the socket, ``accept()``,
  ``loop.connect_accepted_socket``). A client over the cap is closed right after
  ``accept()``, without ever becoming a transport, and counted; when ``accept()``
  fails for lack of descriptors (EMFILE, ENFILE) or memory, accepting stops for a
  moment (:data:`BACKOFF_FIRST`, doubling up to :data:`BACKOFF_MAX`) and the policy
  hears of it once, instead of a retry (and a log line) per waiting client.
  asyncio's own path is Python as well, and on EMFILE it retries once per backlog
  slot and logs a traceback each time, so with asyncio ours is the only path.

With uvloop the loop's path serves while the server is comfortably below its cap
(:attr:`AcceptPolicy.careful_from` connections) and no descriptor shortage was seen
lately (:attr:`AcceptPolicy.calm_until`); ours takes over near the limits, and at once
when the owner reports a shortage elsewhere (:meth:`Listener.be_careful`). Switching
costs nothing and loses nobody: the loop's server gets a duplicate of the listening
socket, and closing the duplicate leaves the socket listening (the kernel queues
clients in the backlog meanwhile).

A listener with ``spare=True`` (the stats port) also holds one descriptor in
reserve: when ``accept()`` finds none left, it gives up the spare for the one
connection, and takes it back the moment a connection of its own ends (before the
client listeners, backing off, can have it). So the stats page answers even while
the process is out of descriptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol

log = logging.getLogger("mtproxy.accept")

#: accept() / socket() failures that mean "out of descriptors or memory, try later".
SHORTAGE = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: Connections taken per readiness callback (others wait for the next loop iteration,
#: so a flood of connections cannot starve the sessions already running).
BATCH = 64
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0
#: Below this share of ``careful_from`` connections, the loop's own path comes back.
CALM_SHARE = 0.9


def careful_from(limit: int) -> int:
    """Where our accept path takes over, for a cap (or descriptor room) of ``limit``
    connections: a little below it, so that the loop's path never meets the limit."""
    if limit <= 0:
        return NO_LIMIT
    return max(0, limit - max(16, limit // 16))


#: ``careful_from`` of a server without a cap.
NO_LIMIT = 1 << 62


def out_of_fds(exc: BaseException) -> bool:
    """An error that means this process (or the system) has no descriptor left."""
    return isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)


class AcceptPolicy(Protocol):
    """What a listener asks of whoever owns it."""

    #: From this many connections on, only our accept path is used (0: always ours).
    careful_from: int
    #: Loop time until which only our accept path is used (set after a shortage).
    calm_until: float

    def connection_factory(self) -> asyncio.BaseProtocol: ...

    def connections(self) -> int:
        """Connections open now (the cap and ``careful_from`` compare against this)."""

    def full(self, pending: int) -> bool:
        """Whether one more connection must be refused (``pending``: accepted, not yet
        counted in :meth:`connections`)."""

    def note_refusal(self) -> None:
        """A connection was closed right after accept because :meth:`full` said so."""

    def note_shortage(self, exc: OSError) -> None:
        """``accept()`` failed for lack of descriptors or memory; accepting pauses."""


class _Refused(asyncio.Protocol):
    """A client over the cap taken by the loop's own path: closed at once, nothing sent."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


def native_accept_available(loop: asyncio.AbstractEventLoop) -> bool:
    """The loop's own accept path is worth having (uvloop's; asyncio's is no faster
    than ours and mishandles EMFILE)."""
    return type(loop).__module__.split(".")[0] == "uvloop"


class Listener:
    """One listening socket, accepting for ``policy`` (see the module docstring)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        policy: AcceptPolicy,
        *,
        backlog: int,
        native: bool | None = None,
        spare: bool = False,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.policy = policy
        self.backlog = backlog
        self.native = native_accept_available(loop) if native is None else native
        #: Connections taken and not yet counted by the policy: by the loop's path in
        #: its current batch, and by ours (until their transports exist).
        self._native_pending = 0
        self._our_pending = 0
        self.closed = False
        self._server: asyncio.AbstractServer | None = None
        self._switching: asyncio.Task[None] | None = None
        self._reading = False
        self._resume: asyncio.TimerHandle | None = None
        self._backoff = 0.0
        self._batch_open = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._spare: int | None = None
        self.want_spare = spare
        if spare:
            self._take_spare()

    @property
    def pending(self) -> int:
        return self._native_pending + self._our_pending

    @property
    def mode(self) -> str:
        """``native``, ``ours``, ``paused`` (backing off) or ``closed`` (for tests, logs)."""
        if self.closed:
            return "closed"
        if self._server is not None:
            return "native"
        return "ours" if self._reading else "paused"

    async def start(self) -> None:
        if self.native and self._relaxed():
            await self._go_native()
        if self._server is None:
            self._read()

    def close(self) -> None:
        """Stop accepting and close the socket (the kernel refuses new clients)."""
        if self.closed:
            return
        self.closed = True
        self._stop_reading()
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self._switching is not None:
            self._switching.cancel()
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
        self.sock.close()

    async def wait_closed(self) -> None:
        """Until connections accepted by our path have become transports (or failed)."""
        if self._switching is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._switching
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- when to use which path -----------------------------------------------------------

    def _relaxed(self) -> bool:
        policy = self.policy
        if self.loop.time() < policy.calm_until:
            return False
        return policy.connections() + self.pending < policy.careful_from * CALM_SHARE

    # -- the loop's own path ----------------------------------------------------------------

    async def _go_native(self) -> None:
        try:
            dup = self.sock.dup()
        except OSError:
            return  # no descriptor for the duplicate: our path it is
        try:
            server = await self.loop.create_server(
                self._native_factory, sock=dup, backlog=self.backlog
            )
        except OSError:
            dup.close()
            return
        if self.closed:  # closed while the server was being made
            server.close()
            return
        self._server = server

    def _native_factory(self) -> asyncio.BaseProtocol:
        """The loop's path calls this for every client it took (the hot path)."""
        policy = self.policy
        # The loop takes every waiting client (up to a backlog's worth) before it makes
        # their transports, which the policy counts; far enough from the limits, that
        # does not matter.
        if policy.connections() + self._our_pending < policy.careful_from - self.backlog:
            return policy.connection_factory()
        return self._native_near_limits()

    def _native_near_limits(self) -> asyncio.BaseProtocol:
        policy = self.policy
        # Count this batch until its transports exist.
        if not self._batch_open:
            self._batch_open = True
            self.loop.call_soon(self._batch_done)
        pending = self._native_pending
        self._native_pending = pending + 1
        if policy.connections() + pending + self._our_pending < policy.careful_from:
            return policy.connection_factory()
        # At the limits: refuse if full, and hand over to our path either way.
        self.be_careful()
        if policy.full(pending + self._our_pending):
            self._native_pending = pending
            policy.note_refusal()
            return _Refused()
        return policy.connection_factory()

    def be_careful(self) -> None:
        """Leave the loop's path for ours (near the limits, or after a shortage)."""
        if self._server is not None and self._switching is None and not self.closed:
            self._switching = self.loop.create_task(self._leave_native())

    def _batch_done(self) -> None:
        self._batch_open = False
        self._native_pending = 0

    async def _leave_native(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # closes the duplicate only; the socket keeps listening
        self._switching = None
        if not self.closed:
            self._read()

    async def _return_native(self) -> None:
        try:
            await self._go_native()
        finally:
            self._switching = None
        if self._server is None and not self.closed:
            self._read()

    # -- our path ----------------------------------------------------------------------------

    def _read(self) -> None:
        if not self._reading and not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._ready)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading:
            self.loop.remove_reader(self.sock.fileno())
            self._reading = False

    def _ready(self) -> None:
        policy = self.policy
        sock = self.sock
        if self.want_spare and self._spare is None:
            self._take_spare()
        for _ in range(BATCH):
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                spared = self._with_spare(exc)
                if spared is None:
                    self._back_off(exc)
                    return
                conn = spared
            if policy.full(self.pending):
                conn.close()
                policy.note_refusal()
                continue
            self._backoff = 0.0
            self._our_pending += 1
            task = self.loop.create_task(self._connect(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self.native and self._switching is None and self._relaxed():
            self._stop_reading()
            self._switching = self.loop.create_task(self._return_native())

    async def _connect(self, conn: socket.socket) -> None:
        made = False

        def factory() -> asyncio.BaseProtocol:
            # The transport is made right after this and schedules connection_made
            # (where the policy counts the connection) next: uncount it just before.
            nonlocal made
            made = True
            self.loop.call_soon(self._our_started)
            return self.policy.connection_factory()

        try:
            await self.loop.connect_accepted_socket(factory, conn)
        except OSError as exc:  # the client left already (ENOTCONN), or no descriptor
            log.debug("accepted connection lost before it started: %s", exc)
            conn.close()
        finally:
            if not made:
                self._our_pending -= 1

    def _our_started(self) -> None:
        self._our_pending -= 1

    def _back_off(self, exc: OSError) -> None:
        self._stop_reading()
        self._backoff = min(BACKOFF_MAX, self._backoff * 2 or BACKOFF_FIRST)
        self._resume = self.loop.call_later(self._backoff, self._resume_reading)
        if exc.errno in SHORTAGE:
            self.policy.note_shortage(exc)
        else:  # not ours to fix, but never worth a busy loop either
            log.warning("accept() on %s failed: %s", _name(self.sock), exc)

    def _resume_reading(self) -> None:
        self._resume = None
        self._read()

    # -- the spare descriptor ------------------------------------------------------------

    def connection_ended(self) -> None:
        """One of this listener's connections is closing: its descriptor is freed right
        after this, and taken back as the spare before the next I/O callbacks run."""
        if self.want_spare and self._spare is None and not self.closed:
            self.loop.call_soon(self._take_spare)

    def _take_spare(self) -> None:
        if self._spare is not None or self.closed:
            return
        with contextlib.suppress(OSError):
            self._spare = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def _with_spare(self, exc: OSError) -> socket.socket | None:
        """Out of descriptors: give up the spare for one connection, if we hold it."""
        if self._spare is None or exc.errno not in (errno.EMFILE, errno.ENFILE):
            return None
        os.close(self._spare)
        self._spare = None
        try:
            conn, _addr = self.sock.accept()
        except OSError:
            self._take_spare()
            return None
        return conn


def _name(sock: socket.socket) -> str:
    try:
        return str(sock.getsockname())
    except OSError:
        return "a closed socket"


class SimplePolicy:
    """A policy for small servers (the stats port, the API): no cap, always our path,
    shortages reported to ``on_shortage``."""

    careful_from = 0
    calm_until = 0.0

    def __init__(
        self,
        factory: Callable[[], asyncio.BaseProtocol],
        on_shortage: Callable[[OSError], None],
    ) -> None:
        self._factory = factory
        self._on_shortage = on_shortage

    def connection_factory(self) -> asyncio.BaseProtocol:
        return self._factory()

    def connections(self) -> int:
        return 0

    def full(self, pending: int) -> bool:
        return False

    def note_refusal(self) -> None:
        """Never: nothing is refused."""

    def note_shortage(self, exc: OSError) -> None:
        self._on_shortage(exc)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class _StreamProtocol(asyncio.StreamReaderProtocol):
    """Tells the server when a connection ends (its listeners take their spare back)."""

    def __init__(
        self, reader: asyncio.StreamReader, handler: Handler, server: StreamServer
    ) -> None:
        super().__init__(reader, handler)
        self._owner = server

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._owner.connection_ended()


class StreamServer:
    """``asyncio.start_server`` for the small HTTP servers (stats, API) on our accept
    path, with a spare descriptor: they keep answering while clients hold every other
    descriptor, and asyncio's EMFILE loop cannot happen on their sockets either."""

    def __init__(self, handler: Handler, on_shortage: Callable[[OSError], None]) -> None:
        self.handler = handler
        self.policy = SimplePolicy(self._protocol, on_shortage)
        self.listeners: list[Listener] = []

    def _protocol(self) -> asyncio.BaseProtocol:
        return _StreamProtocol(asyncio.StreamReader(), self.handler, self)

    def connection_ended(self) -> None:
        for listener in self.listeners:
            listener.connection_ended()

    async def start(self, host: str, port: int, backlog: int = 128) -> None:
        """Listen on every address ``host`` stands for (OSError if none can be bound)."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        seen: set[tuple[int, object]] = set()
        try:
            for family, kind, proto, _name, address in infos:
                if (family, address) in seen:
                    continue
                seen.add((family, address))
                sock = socket.socket(family, kind, proto)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if family == socket.AF_INET6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    sock.bind(address)
                    sock.listen(backlog)
                    sock.setblocking(False)
                except BaseException:
                    sock.close()
                    raise
                listener = Listener(loop, sock, self.policy, backlog=backlog, native=False,
                                    spare=True)  # fmt: skip
                self.listeners.append(listener)
                await listener.start()
        except BaseException:
            self.close()
            raise

    @property
    def sockets(self) -> list[socket.socket]:
        return [listener.sock for listener in self.listeners if not listener.closed]

    def close(self) -> None:
        for listener in self.listeners:
            listener.close()

    async def wait_closed(self) -> None:
        for listener in self.listeners:
            await listener.wait_closed()
