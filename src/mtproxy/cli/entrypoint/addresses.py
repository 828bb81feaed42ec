"""The external and internal IP: from the variables, else detected (exit 3 and 4).

The external address goes into the links and, with the internal one, into the NAT info
the middle proxies need when the container sits behind Docker's address translation.
"""

from __future__ import annotations

import asyncio
import ipaddress

from mtproxy.cli.entrypoint.choices import Choices
from mtproxy.cli.entrypoint.contract import (
    DEFAULT_IP_TIMEOUT,
    EXIT_CONFIG,
    EXIT_EXTERNAL_IP,
    EXIT_INTERNAL_IP,
    Fatal,
    say,
)
from mtproxy.config import convert as cv
from mtproxy.config.settings import DEFAULT_IP_SERVICES
from mtproxy.publicip import detect_public_ip, local_outbound_ip


def external_ip(c: Choices) -> str:
    given_host = c.given("public_host")
    if given_host is not None:
        try:
            host = cv.host(given_host)
        except ValueError as exc:
            raise Fatal(EXIT_EXTERNAL_IP, f"--public-host: {exc}.") from None
        say(f"[+] Using the external address set with --public-host: {host}.")
        return host
    given = c.var("EXTERNAL_IP")
    if given is not None:
        try:
            host = cv.host(given)
        except ValueError as exc:
            raise Fatal(EXIT_EXTERNAL_IP, f"EXTERNAL_IP: {exc}.") from None
        say(f"[+] Using the external IP passed in EXTERNAL_IP: {host}.")
    else:
        services = ip_services(c)
        detected = asyncio.run(detect_public_ip(services, timeout=_ip_timeout(c)))
        if detected is None:
            raise Fatal(
                EXIT_EXTERNAL_IP,
                f"Cannot determine the external IP address (asked {len(services)} "
                "services); set EXTERNAL_IP.",
            )
        host = detected
        say(f"[+] Detected the external IP: {host}.")
    c.put("public_host", host, "EXTERNAL_IP")
    return host


def ip_services(c: Choices) -> list[str]:
    text = c.var("IP_SERVICES")
    if text is None:
        given = c.given("ip_services")
        return [str(s) for s in given] if given else list(DEFAULT_IP_SERVICES)
    services = [s.strip() for s in text.split(",") if s.strip()]
    try:
        return [cv.url(s) for s in services]
    except ValueError as exc:
        raise Fatal(EXIT_CONFIG, f"IP_SERVICES: {exc}.") from None


def _ip_timeout(c: Choices) -> float:
    text = c.var("IP_TIMEOUT")
    if text is None:
        return DEFAULT_IP_TIMEOUT
    try:
        return float(cv.float_range(0.1, 60)(text))
    except ValueError as exc:
        raise Fatal(EXIT_CONFIG, f"IP_TIMEOUT: {exc}.") from None


def internal_ip(c: Choices) -> str:
    given = c.var("INTERNAL_IP")
    if given is not None:
        try:
            address = str(ipaddress.ip_address(given))
        except ValueError:
            msg = f"INTERNAL_IP {given!r} is not an IP address."
            raise Fatal(EXIT_INTERNAL_IP, msg) from None
        say(f"[+] Using the internal IP passed in INTERNAL_IP: {address}.")
        return address
    detected = local_outbound_ip()
    if detected is None:
        raise Fatal(
            EXIT_INTERNAL_IP,
            "Cannot determine the internal IP address (no route out of this host); "
            "set INTERNAL_IP.",
        )
    say(f"[+] Detected the internal IP: {detected}.")
    return detected


def nat_info(c: Choices, internal: str, external: str) -> None:
    if "nat_info" in c.options:
        return
    try:
        both_v4 = all(ipaddress.ip_address(a).version == 4 for a in (internal, external))
    except ValueError:
        both_v4 = False
    if not both_v4:
        say("[!] No NAT info for the middle proxies: it needs IPv4 addresses on both sides.")
        return
    c.put("nat_info", [f"{internal}:{external}"], "INTERNAL_IP/EXTERNAL_IP")
