"""``--workers N``: a supervisor process and N workers sharing the listening port.

The supervisor serves no client itself. For each worker it opens listening sockets
with SO_REUSEPORT on the same addresses (so the kernel spreads connections over the
workers), a control socketpair, and shares one replay-cache region with all of
them; then it starts ``mtproxy run --worker-index I`` with those file descriptors
and sends the worker its settings, the first message on the socketpair. Settings
only ever come from the supervisor, so every worker runs the same configuration
however the supervisor got it (command line, file, the container's variables). A
worker that dies has its sockets closed with it, so new clients go to the others
until the supervisor starts a replacement (with backoff when it keeps dying).

The supervisor also: serves the stats port (asking every worker for a snapshot
and summing them), owns the ledger that makes per-user limits exact across
workers, re-reads the configuration on SIGHUP and sends it to the workers (a file
that does not load changes nothing), and turns SIGTERM/SIGINT into a drain of every
worker. Workers drain on a stop signal of their own too (a process-group kill
reaches them directly) but never force on one: a forced stop is the supervisor's
order, sent on the control channel when the operator signals again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import os
import pickle
import signal
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from mtproxy.config.settings import Settings
from mtproxy.ops.api import ApiServer
from mtproxy.ops.bound import write_bound
from mtproxy.ops.control import LENGTH, MAX_MESSAGE, Channel, Message
from mtproxy.ops.limits import Ledger, load_usage, save_usage
from mtproxy.ops.replay_shared import SharedReplayCache, create_region
from mtproxy.ops.runtime import Reloader, StopSignal, force_close, reload_now, start_api
from mtproxy.ops.server import RESTART_ONLY, OpsServer
from mtproxy.ops.snapshot import Snapshot, merge, take
from mtproxy.ops.stats_server import DEFAULT_ALLOW, StatsServer, StatsView
from mtproxy.protocol.dc import Endpoint, format_endpoint
from mtproxy.proxy.sockets import listening_socket
from mtproxy.publicip import link_host

log = logging.getLogger("mtproxy.workers")

ENV = "MTPROXY_WORKER_FDS"
READY_TIMEOUT = 60.0
STATS_TIMEOUT = 2.0
#: How long a worker may take to apply the API's change before the answer goes out.
APPLY_TIMEOUT = 5.0
SNAPSHOT_EVERY = 5.0
BACKOFF_FIRST, BACKOFF_MAX, STABLE_AFTER = 0.5, 30.0, 30.0
#: Seconds past the drain's grace after which the supervisor kills workers still running.
KILL_AFTER_GRACE = 10.0
_RETIRED_COUNTERS = (
    "connections_total", "bytes_from_clients", "bytes_to_clients", "upstream_connects",
    "upstream_failures", "masked", "accept_refused", "proxy_protocol_errors", "quota_closed",
    "fd_exhausted",
)  # fmt: skip


def encode_settings(settings: Settings) -> str:
    """Settings for a worker (pickle: parent and child run the same code)."""
    return base64.b64encode(pickle.dumps(settings)).decode()


def decode_settings(text: str) -> Settings:
    settings = pickle.loads(base64.b64decode(text))
    if not isinstance(settings, Settings):
        raise ValueError("the supervisor sent something other than settings")
    return settings


# -- the worker's side -----------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    """File descriptors a worker inherits, passed in the environment."""

    index: int
    listen: tuple[int, ...]
    control: int
    replay: int

    def encode(self) -> str:
        fds = ",".join(map(str, self.listen))
        return f"listen={fds};control={self.control};replay={self.replay}"

    @classmethod
    def decode(cls, index: int, text: str) -> WorkerSpec:
        try:
            parts = dict(item.split("=", 1) for item in text.split(";"))
            return cls(
                index,
                tuple(int(fd) for fd in parts["listen"].split(",") if fd),
                int(parts["control"]),
                int(parts["replay"]),
            )
        except (KeyError, ValueError):
            raise ValueError(f"{ENV} is malformed: {text!r}") from None


class RemoteLedger:
    """The ledger as a worker sees it: requests to the supervisor."""

    local = False

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def acquire_now(
        self, user: str, ip: str, max_connections: int | None, max_ips: int | None
    ) -> str | None:
        raise RuntimeError("a worker's ledger answers asynchronously")

    async def acquire(
        self, user: str, ip: str, max_connections: int | None, max_ips: int | None
    ) -> str | None:
        future = self.channel.request(
            {"op": "acquire", "user": user, "ip": ip, "max_connections": max_connections,
             "max_ips": max_ips}
        )  # fmt: skip
        try:
            reply = await asyncio.shield(future)
        except asyncio.CancelledError:
            # The client left while we waited: give back a place we might still get.
            def give_back(done: asyncio.Future[Message]) -> None:
                ok = not done.cancelled() and done.exception() is None
                if ok and done.result().get("reason") is None:
                    self.release(user, ip)

            future.add_done_callback(give_back)
            raise
        reason = reply.get("reason")
        return None if reason is None else str(reason)

    def release(self, user: str, ip: str) -> None:
        with contextlib.suppress(ConnectionError):
            self.channel.send({"op": "release", "user": user, "ip": ip})

    async def sync(self, usage: dict[str, int]) -> dict[str, int]:
        reply = await self.channel.ask({"op": "usage", "usage": usage}, STATS_TIMEOUT)
        return {str(k): int(v) for k, v in reply.get("totals", {}).items()}

    def save(self) -> None:
        """The supervisor keeps the usage file."""


class WorkerLink:
    """Everything a worker gets from its supervisor."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.sockets = [socket.socket(fileno=fd) for fd in spec.listen]
        self.replay = SharedReplayCache(spec.replay)
        self.control = socket.socket(fileno=spec.control)
        self.server: OpsServer | None = None
        self.channel: Channel | None = None
        self.ledger: RemoteLedger | None = None
        self.lost = asyncio.Event()
        #: Settings the supervisor sent while the server was starting.
        self.pending: Settings | None = None

    def read_settings(self) -> Settings:
        """The first message, read before any event loop exists (it says which loop)."""
        head = self.control.recv(LENGTH.size, socket.MSG_WAITALL)
        if len(head) != LENGTH.size:
            raise ConnectionError("the supervisor closed the channel")
        (size,) = LENGTH.unpack(head)
        if size > MAX_MESSAGE:
            raise ConnectionError("oversized first message")
        body = self.control.recv(size, socket.MSG_WAITALL)
        message = json.loads(body)
        if message.get("op") != "config":
            raise ConnectionError(f"expected the settings, got {message.get('op')!r}")
        return decode_settings(str(message["settings"]))

    async def connect(self) -> None:
        self.control.setblocking(False)
        self.channel = await Channel.open(self.control, self._handle)
        self.ledger = RemoteLedger(self.channel)
        self.lost = self.channel.closed

    async def _handle(self, message: Message) -> Message | None:
        op = message.get("op")
        server = self.server
        if op == "reload" and server is None:  # still starting: apply once started
            self.pending = decode_settings(str(message["settings"]))
            return {"ok": True}
        if server is None:
            return None
        if op == "stats":
            return {"snapshot": take(server)}
        if op == "reload":
            settings = decode_settings(str(message["settings"]))
            return {"ok": reload_now(server, lambda: settings)}
        if op == "sync":  # the ledger changed (a quota reset): learn it now
            await server.sync_quotas()
            return {"ok": True}
        if op == "force":  # the operator's second stop signal, relayed by the supervisor
            force_close(server)()
        return None

    def started(self, server: OpsServer) -> None:
        self.server = server
        pending, self.pending = self.pending, None
        if pending is not None:
            reload_now(server, lambda: pending)
        assert self.channel is not None
        self.channel.send({"op": "ready", "pid": os.getpid()})


# -- the supervisor --------------------------------------------------------------------------


@dataclass(eq=False)
class Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    channel: Channel | None = None
    pid: int = 0
    restarts: int = 0
    started_at: float = 0.0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    last: Snapshot | None = None


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        reloader: Reloader | None,
        listen_sockets: list[socket.socket],
    ) -> None:
        self.settings = settings
        self.reloader = reloader
        self.first_sockets: list[socket.socket] | None = listen_sockets
        self.endpoints: list[Endpoint] = [
            (s.getsockname()[0], s.getsockname()[1]) for s in listen_sockets
        ]
        self.workers = [Worker(i) for i in range(settings.workers)]
        self.ledger = Ledger(load_usage(settings.data_dir))
        # Same span as the in-process cache: past the oldest and newest accepted timestamps.
        self.replay_fd = create_region(
            settings.replay_cache_size, settings.replay_window + settings.tls_max_future
        )
        self.started = time.time()
        self.stopping = False
        self.stop_requested = asyncio.Event()
        self.stopper: StopSignal | None = None
        self.stats: StatsServer | None = None
        self.api: ApiServer | None = None
        self.retired: Snapshot | None = None
        self._watchers: set[asyncio.Task[None]] = set()

    # -- workers ------------------------------------------------------------------------

    def _sockets_for(self, worker: Worker) -> list[socket.socket]:
        if self.first_sockets is not None:
            first, self.first_sockets = self.first_sockets, None
            return first
        socks: list[socket.socket] = []
        try:
            for endpoint in self.endpoints:
                socks.append(
                    listening_socket(
                        endpoint, backlog=self.settings.backlog,
                        keepalive=self.settings.keepalive, reuse_port=True,
                    )
                )  # fmt: skip
        except OSError:
            for sock in socks:
                sock.close()
            raise
        return socks

    async def _spawn(self, worker: Worker) -> None:
        socks = self._sockets_for(worker)
        ours, theirs = socket.socketpair()
        spec = WorkerSpec(
            worker.index, tuple(s.fileno() for s in socks), theirs.fileno(), self.replay_fd
        )
        for sock in (*socks, theirs):
            sock.set_inheritable(True)
        env = dict(os.environ, **{ENV: spec.encode()})
        cmd = [sys.executable, "-m", "mtproxy", "run", "--worker-index", str(worker.index)]
        worker.ready = asyncio.Event()
        try:
            worker.proc = await asyncio.create_subprocess_exec(
                *cmd, env=env, pass_fds=(*spec.listen, spec.control, spec.replay),
                stdin=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        finally:
            for sock in (*socks, theirs):
                sock.close()
        worker.pid = worker.proc.pid
        worker.started_at = time.monotonic()
        async def handle(message: Message) -> Message | None:
            return await self._handle(worker, message)

        worker.channel = await Channel.open(ours, handle)
        worker.channel.send({"op": "config", "settings": encode_settings(self.settings)})
        task = asyncio.get_running_loop().create_task(self._watch(worker))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _handle(self, worker: Worker, message: Message) -> Message | None:
        op = message.get("op")
        if op == "ready":
            worker.ready.set()
            return None
        if op == "acquire":
            reason = self.ledger.acquire(
                worker.index, str(message["user"]), str(message["ip"]),
                message.get("max_connections"), message.get("max_ips"),
            )  # fmt: skip
            return {"reason": reason}
        if op == "release":
            self.ledger.release(worker.index, str(message["user"]), str(message["ip"]))
            return None
        if op == "usage":
            usage = {str(k): int(v) for k, v in message.get("usage", {}).items()}
            return {"totals": self.ledger.report(worker.index, usage)}
        return None

    async def _watch(self, worker: Worker) -> None:
        assert worker.proc is not None
        code = await worker.proc.wait()
        if worker.channel is not None:
            await worker.channel.close()
            worker.channel = None
        self.ledger.drop_worker(worker.index)
        self._retire(worker)
        if self.stopping:
            return
        how = f"signal {-code}" if code < 0 else f"code {code}"
        if not worker.ready.is_set() and worker.restarts == 0 and not self._all_ready():
            log.error("worker %d (pid %d) failed to start (%s)", worker.index, worker.pid, how)
            self.stop_requested.set()
            return
        ran = time.monotonic() - worker.started_at
        delay = 0.0 if ran > STABLE_AFTER else min(
            BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(worker.restarts, 8)
        )
        log.warning(
            "worker %d (pid %d) exited with %s; restarting in %.1fs",
            worker.index, worker.pid, how, delay,
        )
        await asyncio.sleep(delay)
        if self.stopping:
            return
        worker.restarts += 1
        try:
            await self._spawn(worker)
        except OSError as exc:
            log.error("cannot restart worker %d: %s", worker.index, exc)
            self.stop_requested.set()

    async def _all_ready_wait(self) -> None:
        for worker in self.workers:
            await worker.ready.wait()

    def _all_ready(self) -> bool:
        return all(w.ready.is_set() for w in self.workers)

    def _retire(self, worker: Worker) -> None:
        """Keep a gone worker's counters in the sums, so totals never go backwards."""
        last, worker.last = worker.last, None
        if last is None:
            return
        kept: Snapshot = dict(
            last,
            counters={k: v for k, v in last["counters"].items() if k in _RETIRED_COUNTERS},
            extra={}, max_connections=0, draining=0,
            users={
                name: dict(user, connections_active=0, ips={})
                for name, user in last["users"].items()
            },
        )  # fmt: skip
        self.retired = kept if self.retired is None else merge([self.retired, kept])

    # -- stats --------------------------------------------------------------------------

    async def _ask(self, worker: Worker) -> Snapshot | None:
        channel = worker.channel
        if channel is None or not worker.ready.is_set():
            return None
        try:
            reply = await channel.ask({"op": "stats"}, STATS_TIMEOUT)
        except (ConnectionError, TimeoutError):
            return None
        snap: Snapshot | None = reply.get("snapshot")
        worker.last = snap
        return snap

    async def collect(self) -> StatsView:
        snaps = await asyncio.gather(*(self._ask(w) for w in self.workers))
        parts = [s for s in snaps if s is not None]
        if self.retired is not None:
            parts.append(self.retired)
        total = merge(parts)
        for name, user in total["users"].items():
            if user["quota"] is not None:
                user["quota_used"] = self.ledger.used(name)
        infos: list[dict[str, Any]] = []
        for worker, snap in zip(self.workers, snaps, strict=True):
            info: dict[str, Any] = {
                "pid": worker.pid,
                "up": int(worker.proc is not None and worker.proc.returncode is None),
                "restarts": worker.restarts,
            }
            if snap is not None:
                hs = Counter[str]()
                for key, n in snap["handshakes"].items():
                    outcome = key.split("|", 1)[1]
                    hs["ok" if outcome == "ok" else "refused" if outcome == "refused"
                       else "rejected"] += n  # fmt: skip
                info.update(
                    connections_active=snap["counters"].get("connections_active", 0),
                    max_connections=snap["max_connections"],
                    open_fds=snap["counters"].get("open_fds", 0),
                    connections_total=snap["counters"].get("connections_total", 0),
                    handshakes_ok=hs["ok"], handshakes_rejected=hs["rejected"],
                    handshakes_refused=hs["refused"],
                )  # fmt: skip
            infos.append(info)
        return StatsView(total, os.getpid(), self.started, infos)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, stopper: StopSignal) -> None:
        for worker in self.workers:
            await self._spawn(worker)
        loop = asyncio.get_running_loop()
        ready = loop.create_task(self._all_ready_wait())
        stop = loop.create_task(_first(self.stop_requested, stopper.requested))
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await asyncio.wait({ready, stop}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            self.stop_requested.set()
        finally:
            stop.cancel()
        if not ready.done():
            ready.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ready
            if stopper.requested.is_set():
                raise RuntimeError("stopped while the workers were starting")
            raise RuntimeError("workers did not start; see the log above")
        write_bound(self.settings.data_dir, self.endpoints)
        if self.settings.stats is not None:
            self.stats = StatsServer(self.settings.stats, self.collect, self.settings.stats_allow)
            try:
                await self.stats.start()
            except OSError as exc:
                log.error("cannot serve stats on %s: %s",
                          format_endpoint(self.settings.stats), exc.strerror or exc)
                self.stats = None
            else:
                host, port = self.stats.address
                log.info("stats on http://%s/stats and /metrics", f"{host}:{port}")
        self.api = await start_api(self.settings, self)

    @property
    def addresses(self) -> list[Endpoint]:
        """Where clients connect (what a ``ready`` callback reads)."""
        return list(self.endpoints)

    def _reread(self) -> Settings | str:
        """The configuration read again, restart-only settings kept; or the problem."""
        if self.reloader is None:
            return "this proxy was started without a configuration to reload"
        try:
            settings = self.reloader()
        except Exception as exc:  # a reload must never kill the supervisor
            return str(exc)
        for name in RESTART_ONLY:
            if getattr(settings, name) != getattr(self.settings, name):
                log.warning("%s changed; restart to apply it", name)
        return settings

    def _adopt(self, settings: Settings) -> Message:
        keep = {name: getattr(self.settings, name) for name in RESTART_ONLY}
        self.settings = dataclasses.replace(settings, **keep)
        if self.stats is not None:
            self.stats.allow = tuple(settings.stats_allow) or DEFAULT_ALLOW
        return {"op": "reload", "settings": encode_settings(self.settings)}

    def reload(self) -> None:
        """SIGHUP: read the configuration again and send it to every worker."""
        got = self._reread()
        if isinstance(got, str):
            if self.reloader is None:
                log.warning("SIGHUP: %s", got)
            else:
                log.error("reload failed, workers keep the running configuration: %s", got)
            return
        message = self._adopt(got)
        for worker in self.workers:
            if worker.channel is not None:
                with contextlib.suppress(ConnectionError):
                    worker.channel.send(message)
        log.info("configuration reloaded; sent to %d workers", len(self.workers))

    # -- the management API's backend ---------------------------------------------------

    async def _ask_all(self, message: Message) -> int:
        """Send a request to every worker; how many answered ok."""
        asks = [w.channel.ask(message, APPLY_TIMEOUT) for w in self.workers
                if w.channel is not None]  # fmt: skip
        replies = await asyncio.gather(*asks, return_exceptions=True)
        return sum(isinstance(r, dict) and bool(r.get("ok")) for r in replies)

    async def apply(self, settings: Settings) -> int:
        """Switch every worker to ``settings`` (the API's change); the count that did."""
        return await self._ask_all(self._adopt(settings))

    async def reread(self) -> str | None:
        got = self._reread()
        if isinstance(got, str):
            return got
        await self.apply(got)
        return None

    async def reset_quota(self, name: str) -> None:
        self.ledger.reset(name)
        self._save()
        await self._ask_all({"op": "sync"})

    async def view(self) -> StatsView:
        return await self.collect()

    async def link_host(self) -> str:
        return await link_host(self.settings)

    def _signal_all(self, sig: int) -> None:
        for worker in self.workers:
            if worker.proc is not None and worker.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(sig)

    def _force(self) -> None:
        """The operator's second stop signal: workers close their sessions now.

        Workers ignore repeated signals (a process-group kill reaches them too), so the
        order travels on the control channel; a worker without one is killed.
        """
        log.info("second stop signal: workers close their sessions now")
        for worker in self.workers:
            proc = worker.proc
            if proc is None or proc.returncode is not None:
                continue
            try:
                if worker.channel is None:
                    raise ConnectionError("no control channel")
                worker.channel.send({"op": "force"})
            except ConnectionError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()

    async def run(self, stopper: StopSignal) -> int:
        loop = asyncio.get_running_loop()
        stopper.force = self._force
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        saver = loop.create_task(self._save_loop())
        waiters = [loop.create_task(stopper.requested.wait()),
                   loop.create_task(self.stop_requested.wait())]  # fmt: skip
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (saver, *waiters):
                task.cancel()
            await self.shutdown()
        # stop_requested is only ever set on a failure (a worker that cannot be restarted).
        return 1 if self.stop_requested.is_set() and not stopper.requested.is_set() else 0

    async def _save_loop(self) -> None:
        """Keep usage on disk, and every worker's last snapshot fresh: a worker that dies
        leaves its counters in the totals as of that snapshot."""
        ticks = 0
        while True:
            await asyncio.sleep(SNAPSHOT_EVERY)
            await asyncio.gather(*(self._ask(w) for w in self.workers))
            ticks += 1
            if ticks % 2 == 0:
                self._save()

    def _save(self) -> None:
        if self.ledger.dirty:
            self.ledger.dirty = False
            save_usage(self.settings.data_dir, self.ledger.totals())

    async def shutdown(self) -> None:
        self.stopping = True
        log.info("stopping %d workers (drain up to %gs)", len(self.workers),
                 self.settings.shutdown_grace)
        self._signal_all(signal.SIGTERM)
        procs = [w.proc for w in self.workers if w.proc is not None]
        try:
            async with asyncio.timeout(self.settings.shutdown_grace + KILL_AFTER_GRACE):
                await asyncio.gather(*(p.wait() for p in procs))
        except TimeoutError:
            log.warning("workers still running after the grace period; killing them")
            for proc in procs:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            await asyncio.gather(*(p.wait() for p in procs))
        for task in list(self._watchers):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._save()
        if self.stats is not None:
            await self.stats.close()
        if self.api is not None:
            await self.api.close()
        for sock in self.first_sockets or ():
            sock.close()
        os.close(self.replay_fd)


async def _first(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
