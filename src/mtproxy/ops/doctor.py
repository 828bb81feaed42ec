"""``mtproxy doctor``: what is wrong with this set-up, found before the users find it.

Each check is a coroutine that returns :class:`Result` (ok / warning / error, what it
saw, and the fix). Everything a check touches outside the process goes through
:class:`Probe` (clock, DNS, HTTP, TCP, TLS trust, resource limits), so the tests run
every check against fakes on loopback.

The clock is compared with the ``Date`` header of an HTTPS answer rather than asked of
an NTP server: a second's resolution is plenty against fake TLS's limits (minutes),
HTTPS goes where the proxy's own traffic goes (UDP port 123 is often filtered), and
the answer is authenticated, where a plain NTP reply can be forged on the path.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import enum
import http.client
import ipaddress
import os
import resource
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mtproxy import __version__
from mtproxy.config.settings import Settings
from mtproxy.ops.bound import read_bound
from mtproxy.ops.fds import middle_links, plan
from mtproxy.ops.socks import Socks5
from mtproxy.protocol.dc import DcTable, Endpoint, format_endpoint
from mtproxy.protocol.faketls import (
    RANDOM_LEN,
    RANDOM_OFFSET,
    build_client_hello,
    verify_server_hello,
)
from mtproxy.protocol.proxy_config import ProxyConfigError, parse_proxy_config, parse_proxy_secret
from mtproxy.protocol.secret import Mode
from mtproxy.publicip import detect_public_ip
from mtproxy.telegram_config import FetchError, download

DEFAULT_TIME_URL = "https://core.telegram.org/"
#: Clock differences below this are not worth a word.
CLOCK_QUIET = 10.0
#: Below this limit a busy proxy runs out of descriptors (about 4 000 clients).
FD_COMFORT = 8192
DIRECT_DCS = (1, 2, 3, 4, 5)
NTP_FIX = "synchronise the clock: timedatectl set-ntp true (or install chrony)"


class Level(enum.IntEnum):
    OK = 0
    WARNING = 1
    ERROR = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Result:
    check: str
    level: Level
    message: str
    fix: str | None = None

    def as_json(self) -> dict[str, str | None]:
        return {"check": self.check, "level": self.level.label, "message": self.message,
                "fix": self.fix}  # fmt: skip


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    date: str | None


def _http_head(url: str, timeout: float) -> HttpAnswer:
    request = urllib.request.Request(
        url, method="HEAD", headers={"User-Agent": f"mtproxy/{__version__} doctor"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return HttpAnswer(response.status, response.headers.get("Date"))
    except urllib.error.HTTPError as exc:  # a 404 or 405 still carries the server's Date
        return HttpAnswer(exc.code, exc.headers.get("Date") if exc.headers else None)


def _download(url: str, timeout: float) -> bytes:
    return download(url, timeout=timeout)


async def _resolve(host: str) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _own_limits() -> tuple[int, int]:
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _process_limits(pid: int) -> tuple[int, int] | None:
    """A running proxy's descriptor limits, from /proc (None when unreadable)."""
    try:
        text = Path(f"/proc/{pid}/limits").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            unlimited = resource.RLIM_INFINITY
            return (unlimited if soft == "unlimited" else int(soft),
                    unlimited if hard == "unlimited" else int(hard))  # fmt: skip
    return None


@dataclass
class Probe:
    """The outside world as the checks see it; tests replace parts with fakes."""

    timeout: float = 5.0
    time_url: str = DEFAULT_TIME_URL
    clock: Callable[[], float] = time.time
    http_head: Callable[[str, float], HttpAnswer] = _http_head
    fetch: Callable[[str, float], bytes] = _download
    resolve: Callable[[str], Awaitable[list[str]]] = _resolve
    tls_context: Callable[[], ssl.SSLContext] = ssl.create_default_context
    limits: Callable[[], tuple[int, int]] = _own_limits
    process_limits: Callable[[int], tuple[int, int] | None] = _process_limits
    public_ip: Callable[[Settings], Awaitable[str | None]] | None = None

    async def connect(self, endpoint: Endpoint) -> tuple[asyncio.StreamReader,
                                                          asyncio.StreamWriter]:
        async with asyncio.timeout(self.timeout):
            return await asyncio.open_connection(*endpoint)


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.errno and not isinstance(exc, socket.gaierror):
        return os.strerror(exc.errno).lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ConnectionError, TimeoutError):
        async with asyncio.timeout(1):
            await writer.wait_closed()


# -- the clock -------------------------------------------------------------------------------


async def check_clock(settings: Settings, probe: Probe) -> Result:
    """Fake TLS refuses hellos older than --replay-window or newer than --tls-max-future
    by our clock: a skewed server clock turns every client away."""
    before = probe.clock()
    try:
        answer = await asyncio.to_thread(probe.http_head, probe.time_url, probe.timeout)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return Result("clock", Level.WARNING,
                      f"cannot read the time from {probe.time_url}: {_why(exc)}",
                      "pass --time-url with an https:// site this server can reach")  # fmt: skip
    after = probe.clock()
    stamp = email.utils.parsedate_to_datetime(answer.date) if answer.date else None
    if stamp is None:
        return Result("clock", Level.WARNING, f"{probe.time_url} sent no Date header",
                      "pass --time-url with another https:// site")  # fmt: skip
    # The Date header is truncated to the second: its middle is half a second later.
    skew = stamp.timestamp() + 0.5 - (before + after) / 2
    behind_limit, ahead_limit = settings.tls_max_future, settings.replay_window
    where = f"by {abs(skew):.1f} s against {probe.time_url}"
    if skew > 0:
        text, limit = f"this clock is behind {where}", behind_limit
        effect = "fake-TLS clients look as if from the future"
    else:
        text, limit = f"this clock is ahead {where}", ahead_limit
        effect = "fake-TLS clients look stale"
    tls = Mode.TLS in settings.modes
    if abs(skew) > limit and tls:
        return Result("clock", Level.ERROR, f"{text}: {effect} and are refused "
                      f"(limit {limit:g} s)", NTP_FIX)  # fmt: skip
    if abs(skew) > CLOCK_QUIET:
        return Result("clock", Level.WARNING, f"{text}; fake TLS tolerates {limit:g} s",
                      NTP_FIX)  # fmt: skip
    return Result("clock", Level.OK, f"within {abs(skew):.1f} s of {probe.time_url}")


# -- Telegram ------------------------------------------------------------------------------


async def _reach(
    probe: Probe, endpoints: Sequence[Endpoint], socks: Socks5 | None
) -> tuple[Endpoint | None, float, str]:
    """The first endpoint that accepts a connection, its connect time, and the last error."""
    problem = "no address"
    for endpoint in endpoints:
        started = time.monotonic()
        try:
            if socks is None:
                _, writer = await probe.connect(endpoint)
                await _close(writer)
            else:
                sock = await socks.connect(endpoint, probe.timeout)
                sock.close()
        except (OSError, TimeoutError) as exc:
            problem = f"{format_endpoint(endpoint)}: {_why(exc)}"
            continue
        return endpoint, time.monotonic() - started, ""
    return None, 0.0, problem


async def check_dcs(settings: Settings, probe: Probe) -> list[Result]:
    """Direct mode connects to the DCs: each must accept a TCP connection (also through
    the SOCKS5 proxy, when one is set, since that is the path clients take)."""
    if settings.middle_mode:
        return []
    table = DcTable(settings.dc, settings.prefer_ipv6)
    routes: list[tuple[str, Socks5 | None]] = [("", None)]
    if settings.socks5:
        routes.append((" via socks5", Socks5(settings.socks5)))

    async def one(dc: int, label: str, socks: Socks5 | None) -> Result:
        name = f"dc {dc}{label}"
        endpoint, took, problem = await _reach(probe, table.resolve(dc), socks)
        if endpoint is not None:
            return Result(name, Level.OK, f"{format_endpoint(endpoint)} in {took * 1000:.0f} ms")
        if socks is not None:
            fix = f"check the SOCKS5 proxy {socks.host}:{socks.port} and its credentials"
        else:
            fix = ("allow outgoing TCP to Telegram (port 443) in the firewall, or reach the "
                   "DCs through --socks5")  # fmt: skip
        return Result(name, Level.ERROR, f"unreachable ({problem})", fix)

    jobs = [one(dc, label, socks) for label, socks in routes for dc in DIRECT_DCS]
    return list(await asyncio.gather(*jobs))


async def _fetch(probe: Probe, source: str) -> bytes:
    if source.startswith(("http://", "https://")):
        return await asyncio.to_thread(probe.fetch, source, probe.timeout)
    return await asyncio.to_thread(Path(source).read_bytes)


async def check_telegram_files(settings: Settings, probe: Probe) -> list[Result]:
    """Middle-proxy mode needs Telegram's proxy list and secret; a proxy in direct mode
    only needs them once an ad tag is added, so a failure there is a warning."""
    level = Level.ERROR if settings.middle_mode else Level.WARNING
    note = "" if settings.middle_mode else " (needed only with --tag / middle-proxy mode)"
    config_source = settings.proxy_config_v6 if settings.prefer_ipv6 else settings.proxy_config
    results: list[Result] = []
    for name, source, option in (
        ("proxy list", config_source, "--proxy-config"),
        ("proxy secret", settings.proxy_secret, "--proxy-secret"),
    ):
        try:
            data = await _fetch(probe, source)
            if name == "proxy list":
                config = parse_proxy_config(data)
                count = sum(len(t) for _, t in config.clusters)
                what = f"{count} middle-proxies for {len(config.clusters)} DCs"
            else:
                what = f"{len(parse_proxy_secret(data))} bytes"
        except (FetchError, OSError, ProxyConfigError, ValueError) as exc:
            problem = str(exc) if isinstance(exc, FetchError) else f"{source}: {_why(exc)}"
            results.append(Result(name, level, f"{problem}{note}",
                                  f"check that this server reaches {source}, or point "
                                  f"{option} at a saved copy"))  # fmt: skip
            continue
        results.append(Result(name, Level.OK, f"{what} from {source}"))
    return results


# -- masking and the TLS domain --------------------------------------------------------------


async def check_mask(settings: Settings, probe: Probe) -> list[Result]:
    """A prober that fails the handshake is shown the mask host: it must answer, and for
    fake TLS answer TLS 1.3 with a certificate valid for the domain the client named."""
    tls = Mode.TLS in settings.modes
    if settings.mask is None:
        level = Level.WARNING if tls else Level.OK
        return [Result("mask", level, "off: clients that fail the handshake are read and "
                       "ignored, so a prober meets a silent server",
                       "set --mask to the TLS domain's web site (HOST:443)" if tls else None)]
    mask = format_endpoint(settings.mask)
    if not tls:
        try:
            _, writer = await probe.connect(settings.mask)
        except (OSError, TimeoutError) as exc:
            return [Result("mask", Level.ERROR, f"{mask}: {_why(exc)}",
                           "set --mask to a reachable HOST:PORT, or off")]  # fmt: skip
        await _close(writer)
        return [Result("mask", Level.OK, f"{mask} accepts connections")]
    return list(await asyncio.gather(*(_mask_tls(settings.mask, d, probe)
                                       for d in settings.tls_domains)))  # fmt: skip


async def _mask_tls(mask: Endpoint, domain: str, probe: Probe) -> Result:
    name = f"mask {domain}"
    where = format_endpoint(mask)
    fix = f"set --mask to a web server that serves https://{domain}/ (usually {domain}:443)"
    try:
        _, writer = await probe.connect(mask)
    except (OSError, TimeoutError) as exc:
        return Result(name, Level.ERROR, f"{where}: {_why(exc)}", fix)
    await _close(writer)
    context = probe.tls_context()
    try:
        async with asyncio.timeout(probe.timeout):
            _, writer = await asyncio.open_connection(
                *mask, ssl=context, server_hostname=domain, ssl_handshake_timeout=probe.timeout
            )
    except ssl.SSLCertVerificationError as exc:
        return Result(name, Level.WARNING, f"{where} answers TLS for {domain} with a "
                      f"certificate that does not verify ({exc.verify_message})", fix)
    except (ssl.SSLError, OSError, TimeoutError) as exc:
        return Result(name, Level.ERROR,
                      f"{where} does not complete a TLS handshake for {domain}: {_why(exc)}",
                      fix)  # fmt: skip
    ssl_object = writer.get_extra_info("ssl_object")
    version = ssl_object.version() if ssl_object is not None else None
    await _close(writer)
    if version != "TLSv1.3":
        return Result(name, Level.WARNING,
                      f"{where} speaks {version} for {domain}; fake-TLS answers look like "
                      "TLS 1.3, so a prober can tell the two apart",
                      "choose a --tls-domain and --mask that speak TLS 1.3")  # fmt: skip
    return Result(name, Level.OK, f"{where} serves TLS 1.3 for {domain}, certificate valid")


async def public_address(settings: Settings, probe: Probe) -> list[str]:
    """This server's public addresses (empty when unknown)."""
    if probe.public_ip is not None:
        found = await probe.public_ip(settings)
        return [found] if found else []
    if settings.public_host:
        try:
            ipaddress.ip_address(settings.public_host)
            return [settings.public_host]
        except ValueError:
            pass
        try:
            return await probe.resolve(settings.public_host)
        except OSError:
            return []
    found = await detect_public_ip(settings.ip_services, timeout=probe.timeout)
    return [found] if found else []


async def check_tls_dns(settings: Settings, probe: Probe, public: list[str]) -> list[Result]:
    """A censor can resolve the SNI a client sends: a name that points somewhere else
    than the server the connection goes to is a known blocking trigger."""
    if Mode.TLS not in settings.modes:
        return []
    results = []
    for domain in settings.tls_domains:
        name = f"dns {domain}"
        try:
            addresses = await probe.resolve(domain)
        except OSError as exc:
            results.append(Result(name, Level.WARNING, f"{domain} does not resolve "
                                  f"({_why(exc)}): a censor sees a name that leads nowhere",
                                  "use a --tls-domain whose DNS points to this server"))
            continue
        if not public:
            results.append(Result(name, Level.WARNING, f"{domain} resolves to "
                                  f"{', '.join(addresses)}; this server's address is unknown",
                                  "pass --public-host so the doctor can compare"))
            continue
        if set(addresses) & set(public):
            results.append(Result(name, Level.OK, f"{domain} points to this server "
                                  f"({', '.join(sorted(set(addresses) & set(public)))})"))
            continue
        results.append(Result(name, Level.WARNING,
                              f"{domain} resolves to {', '.join(addresses)}, not to this server "
                              f"({', '.join(public)}): a censor comparing the SNI with the "
                              "destination can block it",
                              f"use a domain you control whose DNS points to {public[0]}, and "
                              "serve a web site for it as the --mask"))  # fmt: skip
    return results


# -- the proxy as clients see it -------------------------------------------------------------


async def _proves_it_is_us(
    probe: Probe, endpoint: Endpoint, secret: bytes, domain: str
) -> bool:
    """A fake-TLS hello signed with our secret: only this proxy answers with a ServerHello
    signed with it (the mask, or another program, cannot)."""
    hello = build_client_hello(secret, domain, int(probe.clock()))
    try:
        reader, writer = await probe.connect(endpoint)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(hello)
        async with asyncio.timeout(probe.timeout):
            answer = b""
            for _ in range(3):  # ServerHello, ChangeCipherSpec, one application-data record
                head = await reader.readexactly(5)
                answer += head + await reader.readexactly(int.from_bytes(head[3:5], "big"))
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        await _close(writer)
    random = hello[RANDOM_OFFSET : RANDOM_OFFSET + RANDOM_LEN]
    return verify_server_hello(secret, random, answer)


def _listen_port(settings: Settings) -> tuple[int | None, bool]:
    """The port clients use: the one ``run`` recorded, else the configured one."""
    bound = read_bound(settings.data_dir)
    if bound is not None:
        return bound.listen[0][1], bound.running
    port = settings.listen[0][1] if settings.listen else 0
    return (port or None), False


async def check_port(settings: Settings, probe: Probe, public: list[str]) -> Result:
    """Clients come to the public address: the port must answer there, and it must be
    this proxy (checked with a signed fake-TLS hello when fake TLS is on)."""
    port, running = _listen_port(settings)
    if port is None:
        return Result("port", Level.WARNING, "no port known: the proxy never ran with this "
                      "data directory and --listen says port 0",
                      "start the proxy, or pass --listen HOST:PORT")  # fmt: skip
    if not public:
        return Result("port", Level.WARNING, f"cannot test port {port}: this server's public "
                      "address is unknown", "pass --public-host")  # fmt: skip
    endpoint = (public[0], port)
    where = format_endpoint(endpoint)
    keys = settings.secret_keys
    signed = Mode.TLS in settings.modes and bool(keys) and bool(settings.tls_domains)
    if signed and await _proves_it_is_us(probe, endpoint, keys[0], settings.tls_domains[0]):
        return Result("port", Level.OK, f"{where} answers as this proxy (fake-TLS hello "
                      "signed with the first secret)")  # fmt: skip
    try:
        _, writer = await probe.connect(endpoint)
    except (OSError, TimeoutError) as exc:
        state = "it runs here" if running else "is the proxy running?"
        return Result("port", Level.ERROR, f"{where}: {_why(exc)} ({state})",
                      f"open TCP port {port} in the firewall (and forward it, behind NAT); "
                      "some NATs cannot loop back, so also test from outside")  # fmt: skip
    await _close(writer)
    if signed:
        return Result("port", Level.ERROR, f"{where} accepts connections but does not answer "
                      "as this proxy with these secrets",
                      "check what listens there, and that doctor has the proxy's --config")
    return Result("port", Level.OK, f"{where} accepts connections")


async def check_fd_limit(settings: Settings, probe: Probe) -> Result:
    """What the descriptor limit allows, counted as the proxy counts it (``ops/fds.py``:
    two per client in direct mode); past it clients are refused. The proxy raises its
    soft limit to the hard one at start, so for a proxy still to come the hard one is
    what counts."""
    bound = read_bound(settings.data_dir)
    limits, whose, running = None, "this shell's", False
    if bound is not None and bound.running:
        limits = probe.process_limits(bound.pid)
        whose, running = f"the running proxy's (pid {bound.pid})", limits is not None
    if limits is None:
        limits = probe.limits()
    soft, hard = limits
    fix = ("raise it: LimitNOFILE=1048576 in the systemd unit, ulimit -n 65536 before "
           "starting, or --ulimit nofile=65536 for a container")
    usable = soft if running or hard == resource.RLIM_INFINITY else max(soft, hard)
    links = 0
    if settings.middle_mode:
        links = middle_links(0, settings.middle_max_connections) * 16  # about Telegram's list
    budget = plan(usable, middle=settings.middle_mode, mask=settings.mask is not None,
                  links=links)  # fmt: skip
    text = f"{whose} soft limit is {soft} (hard {hard})"
    if usable != soft:
        text += ", raised to the hard limit when the proxy starts"
    text += f": room for about {budget.clients} clients"
    if settings.workers > 1:
        text += " per worker"
    wanted = settings.max_connections
    if wanted and wanted > budget.clients:
        return Result("fd limit", Level.ERROR, f"{text}, but --max-connections is "
                      f"{wanted} per worker", fix)  # fmt: skip
    if usable < FD_COMFORT:
        return Result("fd limit", Level.WARNING, text, fix)
    return Result("fd limit", Level.OK, text)


# -- all of it -------------------------------------------------------------------------------


async def diagnose(settings: Settings, probe: Probe | None = None) -> list[Result]:
    """Every check, concurrently; results in a fixed order."""
    probe = probe or Probe()
    public = await public_address(settings, probe)
    groups = await asyncio.gather(
        _one(check_clock(settings, probe)),
        check_dcs(settings, probe),
        check_telegram_files(settings, probe),
        check_mask(settings, probe),
        check_tls_dns(settings, probe, public),
        _one(check_port(settings, probe, public)),
        _one(check_fd_limit(settings, probe)),
    )
    return [result for group in groups for result in group]


async def _one(check: Awaitable[Result]) -> list[Result]:
    return [await check]


def worst(results: Sequence[Result]) -> Level:
    return max((r.level for r in results), default=Level.OK)


def render(results: Sequence[Result]) -> str:
    width = max((len(r.check) for r in results), default=5)
    lines = []
    for result in results:
        lines.append(f"{result.level.label:<8} {result.check:<{width}}  {result.message}")
        if result.fix:
            lines.append(f"{'':<8} {'':<{width}}  fix: {result.fix}")
    counts = {level: sum(r.level == level for r in results) for level in Level}
    warnings, errors = counts[Level.WARNING], counts[Level.ERROR]
    lines.append(
        f"{counts[Level.OK]} ok, {warnings} warning{'s' * (warnings != 1)}, "
        f"{errors} error{'s' * (errors != 1)}"
    )
    return "\n".join(lines)


