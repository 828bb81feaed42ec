"""Assembly: the collected option values as ``mtproxy run`` takes them, the command line
that shows them, and the official "Final configuration" block with the links."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mtproxy.cli.entrypoint.contract import say
from mtproxy.config import convert as cv
from mtproxy.config.settings import OPTIONS, Option, Settings
from mtproxy.protocol.secret import ClientSecret, Mode, ProxyLink, links_for

_BY_FIELD = {opt.field: opt for opt in OPTIONS}


def run_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """OPTIONS shaped as ``mtproxy run``'s parser would produce them."""
    return {name: _shape(_BY_FIELD[name], value) for name, value in options.items()}


def _shape(opt: Option, value: Any) -> Any:
    if opt.switch:
        return bool(cv.as_bool(value))
    if isinstance(value, bool):
        value = "true" if value else "false"
    if opt.repeat:
        return list(value) if isinstance(value, list | tuple) else [value]
    if isinstance(value, list | tuple):
        return value[0]
    return value


def command_line(options: Mapping[str, Any], config_path: str | None) -> str:
    """The ``mtproxy run`` arguments that mean OPTIONS (shaped by :func:`run_options`)."""
    words: list[str] = ["--config", config_path] if config_path else []
    for name, value in options.items():
        opt = _BY_FIELD[name]
        if opt.switch:
            words.append(opt.flags[0] if value else "--no-" + opt.flags[0][2:])
            continue
        for item in value if opt.repeat else [value]:
            words += [opt.flags[0], str(item)]
    return " ".join(words)


def report(
    settings: Settings, keys: list[str], tag: str | None, external: str, internal: str,
    port: int, command: str,
) -> None:
    """The official script's final block: each secret with its links, tag, addresses."""
    say("[*] Final configuration:")
    for index, key in enumerate(keys, 1):
        say(f"[*]   Secret {index}: {key}")
        for link in _ordered_links(settings, external, port, bytes.fromhex(key)):
            mode = link.secret.mode
            label = "" if mode is Mode.CLASSIC else f" ({_mode_label(link.secret)})"
            say(f"[*]   tg:// link for secret {index} auto configuration{label}: {link.tg}")
            say(f"[*]   t.me link for secret {index}{label}: {link.https}")
    say(f"[*]   Tag: {tag}" if tag else "[*]   Tag: no tag")
    say(f"[*]   External IP: {external}")
    say(f"[*]   Internal IP: {internal}")
    say(f"[*]   The links use port {port}; if clients reach the proxy on another port "
        "(a Docker port mapping), set EXTERNAL_PORT or fix the links.")
    say(f"[*]   Runs as: mtproxy run {command}")


def _mode_label(secret: ClientSecret) -> str:
    if secret.mode is Mode.TLS:
        return f"fake TLS, {secret.domain}"
    return "dd, padded"


def _ordered_links(settings: Settings, host: str, port: int, key: bytes) -> list[ProxyLink]:
    """Classic first (the official line), then dd, then fake TLS."""
    links = links_for(host, port, key, settings.modes, list(settings.tls_domains))
    rank = {Mode.CLASSIC: 0, Mode.SECURE: 1, Mode.TLS: 2}
    return sorted(links, key=lambda link: rank[link.secret.mode])
