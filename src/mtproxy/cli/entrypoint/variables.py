"""The variables that map straight onto options: data directory, tag, middle-proxy mode,
ports, workers, stats, debug.

With the official flags a variable wins over the flag for the same setting (the image's
CMD passes ``-H 443 -p 2398`` as defaults, and ``-e PORT=8443`` must not be undone by it).
"""

from __future__ import annotations

from pathlib import Path

from mtproxy.cli.entrypoint.addresses import ip_services
from mtproxy.cli.entrypoint.choices import Choices
from mtproxy.cli.entrypoint.contract import (
    DEFAULT_DATA_DIR,
    DEFAULT_MODES,
    DEFAULT_PORT,
    DEFAULT_SHUTDOWN_GRACE,
    DEFAULT_STATS_HOST,
    DEFAULT_WORKERS,
    EXIT_CONFIG,
    FALSE,
    HEX32,
    TRUE,
    Fatal,
    count,
    port,
    say,
)
from mtproxy.config import convert as cv
from mtproxy.protocol.dc import format_endpoint


def data_dir(c: Choices) -> Path:
    value = c.given("data_dir")
    if value is None:
        value = c.req.data_dir or c.var("DATA_DIR") or DEFAULT_DATA_DIR
    path = Path(str(value)).expanduser()
    if "data_dir" not in c.req.given:
        c.options["data_dir"] = str(path)
    return path


def tag(c: Choices) -> str | None:
    given = c.given("tag")
    if given is not None:
        say(f"[+] Using the ad tag set with --tag or --config: '{given}'.")
        if c.var("TAG") is not None:
            say("[*] TAG is not used: --tag is set.")
        return str(given)
    text = c.var("TAG")
    if text is not None:
        say(f"[+] Using the ad tag passed in TAG: '{text}'.")
        if HEX32.fullmatch(text):
            c.put("tag", text.lower(), "TAG")
            return text.lower()
        say("[!] Bad TAG: it must be 32 hex characters (16 bytes).")
        say("[!] Continuing without a tag.")
    if c.req.flag_tag is not None:
        c.put("tag", c.req.flag_tag, "-P")
        return c.req.flag_tag
    return None


def middle_mode(c: Choices, tag: str | None) -> bool:
    given = c.given("middle_proxy")
    if given is not None:
        return str(given).strip().lower() not in (*FALSE, "", "auto")
    text = (c.var("MIDDLE_PROXY") or "auto").lower()
    if text in TRUE:
        wanted = True
    elif text in FALSE:
        wanted = False
    elif text == "auto":
        # The ad tag only works through Telegram's middle proxies.
        wanted = tag is not None
    else:
        raise Fatal(EXIT_CONFIG, f"MIDDLE_PROXY must be auto, on or off, got {text!r}.")
    if wanted:
        c.put("middle_proxy", True, "MIDDLE_PROXY" if text != "auto" else "TAG")
    return wanted


def ports(c: Choices) -> int:
    """Client listen addresses from PORT or -H; returns the port the links use."""
    port_env = c.var("PORT")
    given = c.given("listen")
    if given is not None:
        if port_env is not None:
            say("[*] PORT is not used: --listen is set.")
        try:
            first = cv.endpoint(given[0] if isinstance(given, list) else given)
        except (ValueError, IndexError):
            return DEFAULT_PORT  # load_settings reports the bad value
        return int(first[1])
    if port_env is not None:
        chosen, source = [port(port_env, "PORT")], "PORT"
    elif c.req.ports:
        chosen, source = c.req.ports, "-H"
    elif c.req.run_mode:
        return DEFAULT_PORT
    else:
        chosen, source = [DEFAULT_PORT], "default"
    hosts = [c.req.address] if c.req.address else ["0.0.0.0"]
    if c.req.ipv6 and not c.req.address:
        hosts.append("::")
    listen = [format_endpoint((h, p)) for p in chosen for h in hosts]
    c.put("listen", listen, source)
    return chosen[0]


def link_port(c: Choices, listen_port: int) -> int:
    text = c.var("EXTERNAL_PORT")
    return port(text, "EXTERNAL_PORT") if text is not None else listen_port


def general(c: Choices) -> None:
    """WORKERS, STATS_PORT, SHUTDOWN_GRACE, DEBUG, IP_SERVICES, MASK: plain option mappings,
    and the modes the official image accepts (all of them, unless -D or --modes say)."""
    if "modes" not in c.options:
        c.put("modes", DEFAULT_MODES, "default modes")
    mask = c.var("MASK")
    if mask is not None and "mask" not in c.options:
        try:
            cv.optional_endpoint(443)(mask)
        except ValueError as exc:
            raise Fatal(EXIT_CONFIG, f"MASK: {exc}.") from None
        c.put("mask", mask, "MASK")
    grace = c.var("SHUTDOWN_GRACE")
    if grace is not None:
        try:
            seconds = cv.float_range(0, 3600)(grace)
        except ValueError as exc:
            raise Fatal(EXIT_CONFIG, f"SHUTDOWN_GRACE: {exc}.") from None
        c.put("shutdown_grace", f"{seconds:g}", "SHUTDOWN_GRACE")
    else:
        c.put("shutdown_grace", DEFAULT_SHUTDOWN_GRACE, "default SHUTDOWN_GRACE")
    workers = c.var("WORKERS")
    if workers is not None:
        c.put("workers", count(workers, "WORKERS", 1), "WORKERS")
    elif "workers" not in c.options:
        c.put("workers", DEFAULT_WORKERS, "default WORKERS")
    stats(c)
    if c.debug:
        c.put("log_level", "DEBUG", "DEBUG")
    if c.var("IP_SERVICES") is not None:
        c.put("ip_services", ip_services(c), "IP_SERVICES")


def stats(c: Choices) -> None:
    """STATS_PORT (or -p) on STATS_HOST: where /stats and /metrics are served."""
    stats_port = c.var("STATS_PORT")
    number = port(stats_port, "STATS_PORT") if stats_port else c.req.stats_port
    if number is not None:
        host = c.var("STATS_HOST") or DEFAULT_STATS_HOST
        c.put("stats", format_endpoint((host, number)), "STATS_PORT" if stats_port else "-p")
