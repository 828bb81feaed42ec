"""Telegram's getProxyConfig / getProxyConfigV6 files and the getProxySecret blob.

The config grammar is the official server's (``mtproto/mtproto-config.c:255-335``,
lexer in ``common/parse-config.c``)::

    # comment to end of line
    default 2;
    timeout 300;                      # ms, 10..30000
    min_connections 4;  max_connections 8;   # 1 <= min <= max <= 1000
    proxy_for 1 149.154.175.50:8888;
    proxy_for -2 [2001:67c:4e8:f002::d]:80;  # negative dc = media
    proxy 1.2.3.4:8888;               # old form: a row for dc 0

Statements end with ``;``; all rows of one dc must be contiguous ("proxies for
dc N intermixed"); a dc without rows falls back to the ``default`` one
(``mf_cluster_lookup(..., force=1)``). Hosts may be IPv4 literals, bracketed IPv6
literals or host names (the official server resolves them; so must the caller).

Because these files come over HTTPS from a server we do not control, parsing is
strict: an empty body, an HTML error page, a final statement without ``;`` or a
file with no rows is rejected with a :class:`ProxyConfigError` whose message is a
single line naming the line number, so a refresh can keep the previous config.
Min/max checks run in file order like the official parser.

Where these files come from and how they are used: docs/protocol.md §8.1.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from types import MappingProxyType
from typing import Final, NamedTuple

from mtproxy.protocol.errors import ProtocolError

#: Proxy secret length bounds (MIN_PWD_LEN / MAX_PWD_LEN, net/net-crypto-aes.h:36-37).
MIN_SECRET_LEN: Final = 32
MAX_SECRET_LEN: Final = 256

#: The real file is ~1 KiB; the official reader allows 16 MiB, anything near that is not a config.
MAX_CONFIG_BYTES: Final = 1 << 20
#: MAX_CFG_TARGETS / MAX_CFG_CLUSTERS (mtproto/mtproto-config.h).
MAX_TARGETS: Final = 4096
MAX_CLUSTERS: Final = 1024
#: Defaults of the official server (mtproto-config.c:235-243, mtproto-proxy.c:149-150).
DEFAULT_TIMEOUT_MS: Final = 300
DEFAULT_MIN_CONNECTIONS: Final = 4
DEFAULT_MAX_CONNECTIONS: Final = 8
#: Upper bound of max_connections and range of timeout (mtproto-config.c:268, 321).
MAX_CONNECTIONS_LIMIT: Final = 1000
TIMEOUT_MS_RANGE: Final = (10, 30000)
#: Longest host word the official lexer accepts (parse-config.c:cfg_gethost_ex).
MAX_HOST_WORD: Final = 63

_WHITESPACE = " \t\r\n"
_TOKEN_RE = re.compile(r"#[^\n]*|;|[^ \t\r\n;#]+")
_NUMBER_RE = re.compile(r"[0-9]{1,9}", re.ASCII)
_DC_RE = re.compile(r"-?[0-9]{1,9}", re.ASCII)
_TARGET_RE = re.compile(r"(\[[0-9A-Za-z.:_-]+\]|[0-9A-Za-z._-]+) ?: ?([0-9]{1,9})", re.ASCII)
_HOSTNAME_RE = re.compile(r"[0-9A-Za-z_](?:[0-9A-Za-z_-]*[0-9A-Za-z_])?", re.ASCII)
_IPV4_LIKE_RE = re.compile(r"[0-9.]+", re.ASCII)


class ProxyConfigError(ProtocolError):
    """A proxy config or proxy secret was malformed; ``line`` is 1-based when known."""

    def __init__(self, problem: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {problem}" if line is not None else problem)
        self.problem = problem
        self.line = line


class ProxyTarget(NamedTuple):
    """One middle-end address; IPv6 hosts are stored without brackets."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ProxyConfig:
    """A parsed config: middle-end targets per dc, in file order, plus the settings.

    ``clusters`` holds ``(dc, targets)`` pairs in the order the file lists them;
    :attr:`targets` is the same as a read-only mapping. ``default_dc`` is 0 when the
    file has no ``default`` statement (as in the official parser).
    """

    clusters: tuple[tuple[int, tuple[ProxyTarget, ...]], ...]
    default_dc: int = 0
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    min_connections: int = DEFAULT_MIN_CONNECTIONS
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    _by_dc: Mapping[int, tuple[ProxyTarget, ...]] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        by_dc = dict(self.clusters)
        if len(by_dc) != len(self.clusters):
            raise ValueError("a dc appears twice in clusters")
        if any(not targets for targets in by_dc.values()):
            raise ValueError("a cluster has no targets")
        object.__setattr__(self, "_by_dc", MappingProxyType(by_dc))

    @property
    def targets(self) -> Mapping[int, tuple[ProxyTarget, ...]]:
        """Targets per dc id (negative ids are media dcs)."""
        return self._by_dc

    @property
    def dcs(self) -> tuple[int, ...]:
        """The dc ids that have their own rows, in file order."""
        return tuple(dc for dc, _ in self.clusters)

    def lookup(self, dc: int) -> tuple[ProxyTarget, ...]:
        """Targets for ``dc``, else the default dc's (OFF ``mf_cluster_lookup(.., 1)``).

        Empty only when neither ``dc`` nor the default dc has rows, which
        :func:`parse_proxy_config` allows only without a ``default`` statement.
        """
        found = self._by_dc.get(dc)
        if found is not None:
            return found
        return self._by_dc.get(self.default_dc, ())


def _looks_like_html(head: bytes) -> bool:
    lowered = head.lstrip()[:512].lower()
    return lowered.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")) or (
        b"<html" in lowered
    )


def _decode(data: bytes | str) -> str:
    if isinstance(data, str):
        text = data
        size = len(text.encode("utf-8", "surrogatepass"))
    else:
        size = len(data)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise ProxyConfigError("not UTF-8 text (binary download?)", line) from None
    if size > MAX_CONFIG_BYTES:
        raise ProxyConfigError(f"config is {size} bytes, more than {MAX_CONFIG_BYTES}", 1)
    return text


class _Token(NamedTuple):
    text: str
    line: int


def _statements(text: str) -> tuple[list[list[_Token]], int]:
    """Split into statements (tokens before each ``;``); also return the last line number."""
    statements: list[list[_Token]] = []
    current: list[_Token] = []
    line = 1
    pos = 0
    for match in _TOKEN_RE.finditer(text):
        line += text.count("\n", pos, match.start())
        pos = match.start()
        token = match.group()
        if token.startswith("#"):
            continue
        if token == ";":
            if not current:
                raise ProxyConfigError("empty statement (stray ';')", line)
            statements.append(current)
            current = []
        else:
            current.append(_Token(token, line))
    last_line = text.count("\n", 0, len(text.rstrip(_WHITESPACE))) + 1
    if current:
        raise ProxyConfigError(
            f"statement {current[0].text!r} is not terminated by ';' (truncated download?)",
            current[0].line,
        )
    return statements, last_line


def _number(token: _Token, what: str) -> int:
    if not _NUMBER_RE.fullmatch(token.text):
        raise ProxyConfigError(
            f"{what} must be a non-negative integer, got {token.text!r}", token.line
        )
    return int(token.text)


def _dc(token: _Token) -> int:
    if not _DC_RE.fullmatch(token.text):
        raise ProxyConfigError(f"dc id must be an integer, got {token.text!r}", token.line)
    value = int(token.text)
    if not -0x8000 <= value < 0x8000:
        raise ProxyConfigError(f"dc id {value} outside -32768..32767", token.line)
    return value


def _host(word: str, line: int) -> str:
    if len(word) > MAX_HOST_WORD:
        raise ProxyConfigError(
            f"host {word[:20]!r}... longer than {MAX_HOST_WORD} characters", line
        )
    if word.startswith("["):
        if not word.endswith("]"):
            raise ProxyConfigError(f"unterminated '[' in host {word!r}", line)
        try:
            return str(IPv6Address(word[1:-1]))
        except ValueError:
            raise ProxyConfigError(f"bad IPv6 address {word!r}", line) from None
    if _IPV4_LIKE_RE.fullmatch(word):
        try:
            return str(IPv4Address(word))
        except ValueError:
            raise ProxyConfigError(f"bad IPv4 address {word!r}", line) from None
    labels = word[:-1].split(".") if word.endswith(".") else word.split(".")
    if not all(_HOSTNAME_RE.fullmatch(label) for label in labels):
        raise ProxyConfigError(f"bad host name {word!r}", line)
    return word


def _target(args: list[_Token], line: int, keyword: str) -> ProxyTarget:
    if not args:
        raise ProxyConfigError(f"{keyword} needs <host>:<port>", line)
    joined = " ".join(token.text for token in args)
    match = _TARGET_RE.fullmatch(joined)
    if match is None:
        raise ProxyConfigError(f"expected <host>:<port> after {keyword}, got {joined!r}", line)
    port = int(match.group(2))
    if not 0 < port < 0x10000:
        raise ProxyConfigError(f"port {port} out of range 1..65535", line)
    return ProxyTarget(_host(match.group(1), line), port)


def _single(args: list[_Token], keyword: str, line: int) -> _Token:
    if len(args) != 1:
        raise ProxyConfigError(f"{keyword} takes exactly one value", line)
    return args[0]


def parse_proxy_config(data: bytes | str, *, require_dcs: Iterable[int] = ()) -> ProxyConfig:
    """Parse a getProxyConfig / getProxyConfigV6 body, rejecting anything suspicious.

    ``require_dcs`` lists dc ids that must have their own rows (for example the
    five production dcs), so a download cut short between rows is also caught.
    """
    raw_head = data[:512].encode("utf-8", "replace") if isinstance(data, str) else data[:512]
    if _looks_like_html(raw_head) or raw_head.lstrip().startswith(b"<"):
        text_head = raw_head.lstrip()
        line = raw_head[: len(raw_head) - len(text_head)].count(b"\n") + 1
        raise ProxyConfigError("this is an HTML/XML page, not a proxy config", line)
    text = _decode(data)
    if not text.strip(_WHITESPACE):
        raise ProxyConfigError("config is empty", 1)
    statements, last_line = _statements(text)

    clusters: dict[int, list[ProxyTarget]] = {}
    targets_total = 0
    last_dc: int | None = None
    default_dc = 0
    default_line: int | None = None
    timeout_ms = DEFAULT_TIMEOUT_MS
    min_conn, max_conn = DEFAULT_MIN_CONNECTIONS, DEFAULT_MAX_CONNECTIONS

    for keyword_token, *args in statements:
        keyword, line = keyword_token
        if keyword in ("proxy_for", "proxy"):
            if keyword == "proxy_for":
                if not args:
                    raise ProxyConfigError("proxy_for needs a dc id and <host>:<port>", line)
                dc, target_args = _dc(args[0]), args[1:]
            else:
                dc, target_args = 0, args
            target = _target(target_args, line, keyword)
            if dc != last_dc and dc in clusters:
                raise ProxyConfigError(
                    f"proxies for dc {dc} intermixed (rows of one dc must be contiguous)", line
                )
            if dc not in clusters and len(clusters) >= MAX_CLUSTERS:
                raise ProxyConfigError(f"more than {MAX_CLUSTERS} dcs", line)
            targets_total += 1
            if targets_total > MAX_TARGETS:
                raise ProxyConfigError(f"more than {MAX_TARGETS} targets", line)
            clusters.setdefault(dc, []).append(target)
            last_dc = dc
        elif keyword == "default":
            default_dc, default_line = _dc(_single(args, keyword, line)), line
        elif keyword == "timeout":
            timeout_ms = _number(_single(args, keyword, line), "timeout")
            low, high = TIMEOUT_MS_RANGE
            if not low <= timeout_ms <= high:
                raise ProxyConfigError(f"timeout {timeout_ms} ms outside {low}..{high}", line)
        elif keyword == "max_connections":
            max_conn = _number(_single(args, keyword, line), keyword)
            if not min_conn <= max_conn <= MAX_CONNECTIONS_LIMIT:
                raise ProxyConfigError(
                    f"max_connections {max_conn} outside {min_conn}..{MAX_CONNECTIONS_LIMIT}", line
                )
        elif keyword == "min_connections":
            min_conn = _number(_single(args, keyword, line), keyword)
            if not 1 <= min_conn <= max_conn:
                raise ProxyConfigError(f"min_connections {min_conn} outside 1..{max_conn}", line)
        else:
            shown = keyword if len(keyword) <= 40 else keyword[:40] + "..."
            raise ProxyConfigError(
                f"unknown statement {shown!r} (expected proxy_for, proxy, default, timeout,"
                " min_connections or max_connections)",
                line,
            )

    if not clusters:
        raise ProxyConfigError(
            "no proxy_for rows (empty, truncated or not a proxy config)", last_line
        )
    if default_line is not None and default_dc not in clusters:
        raise ProxyConfigError(f"default dc {default_dc} has no proxy_for rows", default_line)
    for dc in require_dcs:
        if dc not in clusters:
            raise ProxyConfigError(
                f"no proxy_for rows for dc {dc} (truncated download?)", last_line
            )
    return ProxyConfig(
        clusters=tuple((dc, tuple(targets)) for dc, targets in clusters.items()),
        default_dc=default_dc,
        timeout_ms=timeout_ms,
        min_connections=min_conn,
        max_connections=max_conn,
    )


def validate_proxy_config(data: bytes | str, *, require_dcs: Iterable[int] = ()) -> None:
    """Raise :class:`ProxyConfigError` unless ``data`` parses; for download checks."""
    parse_proxy_config(data, require_dcs=require_dcs)


def parse_proxy_secret(data: bytes) -> bytes:
    """Check a getProxySecret body: 32..256 raw bytes with a non-zero key selector."""
    if not data:
        raise ProxyConfigError("proxy secret download is empty")
    if _looks_like_html(data[:512]):
        raise ProxyConfigError("proxy secret download is an HTML page, not the secret")
    if not MIN_SECRET_LEN <= len(data) <= MAX_SECRET_LEN:
        raise ProxyConfigError(
            f"proxy secret is {len(data)} bytes, expected {MIN_SECRET_LEN}..{MAX_SECRET_LEN}"
        )
    if key_selector(data) == 0:
        raise ProxyConfigError("proxy secret starts with 4 zero bytes (key selector 0 is invalid)")
    return bytes(data)


def key_selector(secret: bytes) -> int:
    """``key_select`` of RPC_NONCE: the secret's first 4 bytes as unsigned little-endian.

    The official server reads them as ``int`` through a union (net-crypto-aes.h:50-57);
    the current secret gives 0xcafaf9c4.
    """
    if len(secret) < 4:
        raise ProxyConfigError(f"proxy secret of {len(secret)} bytes has no key selector")
    return int.from_bytes(secret[:4], "little")
