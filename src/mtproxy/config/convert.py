"""Value converters shared by the TOML file and the command line.

Each takes what TOML or argparse produced and returns the typed value, or raises
``ValueError`` with a message that says what is wrong and how to write it.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mtproxy.protocol.dc import DcSpecError, Endpoint, parse_dc_override, parse_endpoint
from mtproxy.protocol.errors import SecretError
from mtproxy.protocol.secret import ClientSecret, Mode, is_valid_domain, parse_secret

Converter = Callable[[Any], Any]


def as_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(
            f"expected a string, got {type(value).__name__} {value!r}; write it in quotes"
        )
    return value


def as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = as_str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not a boolean; write true or false")


def int_range(low: int, high: int | None = None) -> Converter:
    def convert(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not an integer; write a whole number")
        try:
            number = value if isinstance(value, int) else int(as_str(value).strip())
        except ValueError:
            raise ValueError(f"{value!r} is not an integer; write a whole number") from None
        if number < low or (high is not None and number > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"{number} is out of range; use a value {bound}")
        return number

    return convert


def float_range(low: float, high: float | None = None) -> Converter:
    def convert(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a number; write e.g. {low:g}")
        try:
            number = float(value) if isinstance(value, int | float) else float(as_str(value))
        except (ValueError, OverflowError):
            raise ValueError(f"{value!r} is not a number; write e.g. {low:g}") from None
        if not math.isfinite(number):
            raise ValueError(f"{value!r} is not a finite number; write e.g. {low:g}")
        if number < low or (high is not None and number > high):
            bound = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
            raise ValueError(f"{number:g} is out of range; use a value {bound}")
        return number

    return convert


def host_problem(text: str) -> str | None:
    """Why ``text`` is neither an IP address nor a DNS host name, or None when it is one.

    A name whose last label is all digits ("5", "1.2.3") is refused as well: resolvers
    and browsers read such a name as a malformed IPv4 address, never as a host.
    """
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        ipaddress.ip_address(bare)
        return None
    except ValueError:
        pass
    name = bare.rstrip(".") if bare.endswith(".") and not bare.endswith("..") else bare
    if not is_valid_domain(name):
        return f"{text!r} is neither an IP address nor a host name"
    if name.rsplit(".", 1)[-1].isdigit():
        return f"{text!r} is not a valid IP address, and a host name cannot end in a number"
    return None


def _checked(ep: Endpoint, fix: str) -> Endpoint:
    problem = host_problem(ep[0])
    if problem is not None:
        raise ValueError(f"{problem}; {fix}")
    return ep


def endpoint(value: Any) -> Endpoint:
    fix = "write HOST:PORT, e.g. 0.0.0.0:443 or [::]:443"
    try:
        return _checked(parse_endpoint(as_str(value), allow_port_zero=True), fix)
    except DcSpecError as exc:
        raise ValueError(f"{exc}; {fix}") from None


def optional_endpoint(default_port: int) -> Converter:
    """HOST[:PORT], or 'off'/'' for none."""

    def convert(value: Any) -> Endpoint | None:
        text = as_str(value).strip()
        if text.lower() in ("", "off", "none", "no"):
            return None
        fix = "write HOST:PORT, e.g. www.example.com:443, or off"
        try:
            return _checked(parse_endpoint(text, default_port), fix)
        except DcSpecError as exc:
            raise ValueError(f"{exc}; {fix}") from None

    return convert


def dc_override(value: Any) -> tuple[int, Endpoint]:
    fix = "write ID=HOST:PORT, e.g. 2=149.154.167.51:443"
    try:
        dc_id, ep = parse_dc_override(as_str(value))
    except DcSpecError as exc:
        raise ValueError(f"{exc}; {fix}") from None
    return dc_id, _checked(ep, fix)


def secret_key(value: Any) -> ClientSecret:
    try:
        return parse_secret(as_str(value))
    except SecretError as exc:
        raise ValueError(f"{exc}; generate one with: mtproxy generate-secret") from None


def modes(value: Any) -> frozenset[Mode]:
    items = value if isinstance(value, list) else as_str(value).split(",")
    out: set[Mode] = set()
    for item in items:
        name = as_str(item).strip().lower()
        if name == "dd":
            name = "secure"
        try:
            out.add(Mode(name))
        except ValueError:
            msg = f"unknown mode {name!r}; use a comma list of classic, secure, tls"
            raise ValueError(msg) from None
    if not out:
        raise ValueError("no mode enabled; use a comma list of classic, secure, tls")
    return frozenset(out)


def domain(value: Any) -> str:
    text = as_str(value).strip().lower().rstrip(".")
    if not is_valid_domain(text) or text.rsplit(".", 1)[-1].isdigit():
        raise ValueError(f"{value!r} is not a domain name; write e.g. www.example.com")
    return text


def host(value: Any) -> str:
    text = as_str(value).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    problem = host_problem(text)
    if problem is not None:
        raise ValueError(f"{problem}; write e.g. 203.0.113.5 or proxy.example.com")
    return text


def _url_host(text: str, fix: str) -> None:
    try:
        name = urlsplit(text).hostname
    except ValueError:
        name = None
    if not name:
        raise ValueError(f"{text!r} has no host; {fix}")
    problem = host_problem(name)
    if problem is not None:
        raise ValueError(f"{text!r}: {problem}; {fix}")


def path(value: Any) -> Path:
    text = as_str(value).strip()
    if not text:
        raise ValueError("empty path; give a directory, e.g. /var/lib/mtproxy")
    try:
        return Path(text).expanduser()
    except RuntimeError:  # "~user" for an unknown user
        raise ValueError(f"{text!r}: cannot expand '~'; give an absolute path") from None


def url(value: Any) -> str:
    text = as_str(value).strip()
    fix = "write e.g. https://api.ipify.org"
    if not text.startswith(("http://", "https://")):
        raise ValueError(f"{text!r} is not an http(s) URL; {fix}")
    _url_host(text, fix)
    return text


def network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address or CIDR block, e.g. 10.0.0.0/8 or ::1."""
    text = as_str(value).strip()
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        msg = f"{text!r} is not an IP address or CIDR block; write e.g. 10.0.0.0/8"
        raise ValueError(msg) from None


def socks_url(value: Any) -> str | None:
    """``socks5://[user:password@]host:port`` (``socks5h`` resolves names on the proxy)."""
    text = as_str(value).strip()
    if text.lower() in ("", "off", "none", "no"):
        return None
    parsed = urlsplit(text)
    fix = "write socks5://[user:password@]host:port"
    if parsed.scheme.lower() not in ("socks5", "socks5h"):
        raise ValueError(f"{text!r} is not a SOCKS5 URL; {fix}")
    try:
        port = parsed.port
    except ValueError:
        port = None
    if not parsed.hostname or port is None or port == 0:
        raise ValueError(f"{text!r} needs a host and a port; {fix}")
    _url_host(text, fix)
    return text


def log_level(value: Any) -> str:
    text = as_str(value).strip().upper()
    if text not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"{value!r} is not a log level; use debug, info, warning or error")
    return text


def choice(*allowed: str) -> Converter:
    def convert(value: Any) -> str:
        text = as_str(value).strip().lower()
        if text not in allowed:
            raise ValueError(f"{value!r} is not allowed; use one of: {', '.join(allowed)}")
        return text

    return convert


def optional_text(value: Any) -> str | None:
    """Any string, stripped, '' meaning unset; checked later where a bad value only warns."""
    return as_str(value).strip() or None


def source(value: Any) -> str:
    """An http(s) URL, or a path to a local file (the official server's form)."""
    raw = as_str(value).strip()
    if not raw:
        raise ValueError("empty value; give a file path or an http(s) URL")
    if "://" in raw:
        if not raw.startswith(("http://", "https://")):
            raise ValueError(
                f"{raw!r} is neither an http(s) URL nor a file path; write e.g. "
                "https://core.telegram.org/getProxyConfig or /etc/mtproxy/proxy-multi.conf"
            )
        _url_host(raw, "write e.g. https://core.telegram.org/getProxyConfig")
        return raw
    return str(path(raw))


def nat_info(value: Any) -> tuple[str, str]:
    """``LOCAL_IP:PUBLIC_IP`` (IPv4, as the official ``--nat-info``)."""
    raw = as_str(value).strip()
    local, sep, public = raw.partition(":")
    if not sep:
        raise ValueError(f"{raw!r} is not LOCAL_IP:PUBLIC_IP; write e.g. 10.0.0.5:203.0.113.7")
    try:
        pair = ipaddress.IPv4Address(local.strip()), ipaddress.IPv4Address(public.strip())
    except ValueError:
        raise ValueError(
            f"{raw!r} is not two IPv4 addresses; write LOCAL_IP:PUBLIC_IP, e.g. "
            "10.0.0.5:203.0.113.7"
        ) from None
    return str(pair[0]), str(pair[1])


def api_token(value: Any) -> str | None:
    """A bearer token: at least 16 printable characters without spaces; '' for none."""
    text = as_str(value).strip()
    if not text:
        return None
    if len(text) < 16 or not text.isprintable() or any(c.isspace() for c in text):
        raise ValueError(
            "the token must be 16 or more printable characters without spaces; "
            "generate one with: openssl rand -hex 24"
        )
    return text
