"""ServerHandshake decides as early as the bytes allow, and never too early.

Two sides of one property: no prefix of an opening that some enabled mode accepts is
ever rejected, and bytes that no enabled mode can accept are rejected at the byte
that rules out the last candidate (so the mask host answers a prober at once). The
openings come from the independent fakes (tests/fakes), not from the proxy's builders.
After the fake ServerHello has gone out, nothing is maskable any more.
"""

from __future__ import annotations

import itertools
import random

import pytest
from fakes import build_client_hello
from fakes.obfs import TAGS, make_initiator_header, wrap_tls_records
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mtproxy.protocol.faketls import CCS_RECORD
from mtproxy.protocol.handshake import (
    Accepted,
    Event,
    HandshakePolicy,
    Rejected,
    Reply,
    ServerHandshake,
)
from mtproxy.protocol.replay import ReplayCache
from mtproxy.protocol.secret import Mode

NOW = 1_700_000_000.0
SECRETS = [bytes([i]) * 16 for i in range(1, 4)]
DOMAIN = "www.example.com"
MODE_SETS = [frozenset(c) for n in (1, 2, 3) for c in itertools.combinations(Mode, n)]
OBFS_MODES = (Mode.CLASSIC, Mode.SECURE)
FORBIDDEN_STARTS = [b"HEAD", b"POST", b"GET ", b"OPTI", b"\x16\x03\x01\x02", b"\xdd" * 4,
                    b"\xee" * 4]  # fmt: skip
HTTP_REQUESTS = [
    f"{method} / HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode()
    for method in ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT")
] + [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]


def policy(modes: frozenset[Mode]) -> HandshakePolicy:
    return HandshakePolicy(
        secrets=list(SECRETS),
        modes=modes,
        tls_domains=frozenset({DOMAIN}),
        replay=ReplayCache(10_000, 720.0),
    )


def feed_bytewise(hs: ServerHandshake, data: bytes) -> tuple[int, Event | None]:
    """Feed one byte at a time; (bytes fed when a verdict came, that verdict)."""
    for i in range(len(data)):
        event = hs.feed(data[i : i + 1], NOW)
        if isinstance(event, Accepted | Rejected):
            return i + 1, event
    return len(data), None


def valid_openings(modes: frozenset[Mode], seed: int, hello_size: int) -> list[tuple[Mode, bytes]]:
    """An opening per enabled mode that the proxy accepts (TLS: the hello alone)."""
    rnd = random.Random(seed)
    out: list[tuple[Mode, bytes]] = []
    for mode, tag in ((Mode.CLASSIC, TAGS[0]), (Mode.CLASSIC, TAGS[1]), (Mode.SECURE, TAGS[2])):
        if mode in modes:
            while True:
                base = rnd.randbytes(64)
                # 16 03 01 xx starts are classic headers too, but with fake TLS on they are
                # read as a hello until 64 bytes arrive; keep them (that is the point).
                if not (base[0] == 0xEF or base[:4] in FORBIDDEN_STARTS or base[4:8] == bytes(4)):
                    break
            wire = make_initiator_header(tag, 2, SECRETS[seed % 3], base=base).wire
            out.append((mode, wire))
    if Mode.TLS in modes:
        out.append((Mode.TLS, build_client_hello(SECRETS[seed % 3], DOMAIN, int(NOW),
                                                 pad_to=hello_size)))
    return out


@given(st.sampled_from(MODE_SETS), st.integers(0, 10_000), st.sampled_from([517, 1800, 4000]))
@settings(max_examples=60, deadline=None)
def test_no_prefix_of_a_valid_opening_is_rejected(
    modes: frozenset[Mode], seed: int, hello_size: int
) -> None:
    for mode, opening in valid_openings(modes, seed, hello_size):
        hs = ServerHandshake(policy(modes))
        at, event = feed_bytewise(hs, opening[:-1])
        assert event is None, (mode, at, event)
        last = hs.feed(opening[-1:], NOW)
        assert isinstance(last, Reply if mode is Mode.TLS else Accepted), (mode, last)


@given(st.integers(0, 10_000), st.sampled_from(MODE_SETS))
@settings(max_examples=40, deadline=None)
def test_a_header_that_starts_like_a_tls_record_is_still_a_classic_client(
    seed: int, modes: frozenset[Mode]
) -> None:
    """16 03 01 xx (xx != 02) may begin a real header: both candidates stay open."""
    assume(Mode.CLASSIC in modes)
    rnd = random.Random(seed)
    base = b"\x16\x03\x01" + bytes([rnd.choice([0, 1, 3, 5, 7, 0x40])]) + rnd.randbytes(60)
    assume(base[4:8] != bytes(4))
    wire = make_initiator_header(TAGS[1], 2, SECRETS[0], base=base).wire
    at, event = feed_bytewise(ServerHandshake(policy(modes)), wire)
    assert isinstance(event, Accepted) and event.mode is Mode.CLASSIC and at == 64


@pytest.mark.parametrize("request_bytes", HTTP_REQUESTS, ids=lambda r: r.split(b" ")[0].decode())
def test_with_fake_tls_alone_http_is_rejected_at_the_first_byte(request_bytes: bytes) -> None:
    at, event = feed_bytewise(ServerHandshake(policy(frozenset({Mode.TLS}))), request_bytes)
    assert (at, event) == (1, Rejected("mode_disabled"))


@pytest.mark.parametrize("start", FORBIDDEN_STARTS[:4])
@pytest.mark.parametrize("modes", [m for m in MODE_SETS if m & set(OBFS_MODES)],
                         ids=lambda m: "+".join(sorted(x.value for x in m)))
def test_http_methods_no_client_sends_are_rejected_at_the_fourth_byte(
    start: bytes, modes: frozenset[Mode]
) -> None:
    at, event = feed_bytewise(ServerHandshake(policy(modes)), start + b" / HTTP/1.1\r\n\r\n")
    assert (at, event) == (4, Rejected("forbidden_start"))


@pytest.mark.parametrize(
    ("data", "at"),
    [
        (b"\xef" + bytes(70), 1),  # abridged without obfuscation
        (b"\xee\xee\xee\xee" + bytes(70), 4),  # intermediate without obfuscation
        (b"\xdd\xdd\xdd\xdd" + bytes(70), 4),
        (b"abcd\x00\x00\x00\x00" + bytes(70), 8),  # bytes 4..8 zero
    ],
)
def test_obfuscated2_starts_no_client_sends(data: bytes, at: int) -> None:
    for modes in (frozenset(OBFS_MODES), frozenset(Mode)):
        assert feed_bytewise(ServerHandshake(policy(modes)), data) == (
            at, Rejected("forbidden_start")
        )


NOT_A_HELLO = [
    (b"\x15\x03\x01\x00\x02\x02\x28", 1),  # an alert record
    (b"\x17\x03\x03\x00\x20" + bytes(32), 1),  # application data
    (b"\x16\x03\x03\x02\x00" + bytes(512), 3),  # record version 1.2: apps send 1.0
    (b"\x16\x03\x01\x00\x10" + bytes(16), 5),  # too short for a hello
    (b"\x16\x03\x01\x02\x00\x02" + bytes(511), 6),  # a ServerHello, not a ClientHello
    (b"\x16\x03\x01\x02\x00\x01\x00\x02\x00" + bytes(508), 9),  # lengths disagree
]


@pytest.mark.parametrize(("data", "at"), NOT_A_HELLO, ids=lambda v: str(v)[:12])
def test_with_fake_tls_alone_tls_records_that_are_no_client_hello(data: bytes, at: int) -> None:
    hs = ServerHandshake(policy(frozenset({Mode.TLS})))
    got_at, event = feed_bytewise(hs, data)
    assert got_at == at
    assert isinstance(event, Rejected) and event.maskable
    assert event.reason == ("mode_disabled" if at <= 3 else "tls_malformed")


def test_a_hello_whose_session_id_is_too_long_is_rejected_there() -> None:
    hello = bytearray(build_client_hello(SECRETS[0], DOMAIN, int(NOW)))
    hello[43] = 33  # session id length
    at, event = feed_bytewise(ServerHandshake(policy(frozenset({Mode.TLS}))), bytes(hello))
    assert (at, event) == (44, Rejected("tls_malformed"))


@given(st.binary(min_size=1, max_size=80), st.sampled_from(MODE_SETS))
@settings(max_examples=300)
def test_the_moment_of_the_verdict_does_not_depend_on_the_split(
    data: bytes, modes: frozenset[Mode]
) -> None:
    """Fed byte by byte or in one piece, the same bytes decide, with the same verdict."""
    at, event = feed_bytewise(ServerHandshake(policy(modes)), data)
    whole = ServerHandshake(policy(modes)).feed(data[:at], NOW)
    assert whole == event
    if event is not None and at > 1:
        assert ServerHandshake(policy(modes)).feed(data[: at - 1], NOW) is None


@given(st.binary(min_size=1, max_size=80))
@settings(max_examples=300)
def test_fake_tls_alone_decides_within_the_record_header(data: bytes) -> None:
    """Anything not starting 16 03 01 is out by its first differing byte."""
    assume(not b"\x16\x03\x01".startswith(data[:3]))
    at, event = feed_bytewise(ServerHandshake(policy(frozenset({Mode.TLS}))), data)
    assert isinstance(event, Rejected) and at <= 3


# -- after the fake ServerHello, nothing goes to the mask ---------------------------------


@given(st.binary(max_size=300), st.sampled_from(["eof", "timeout"]))
@settings(max_examples=100)
def test_after_the_reply_every_rejection_is_unmaskable(garbage: bytes, why: str) -> None:
    hs = ServerHandshake(policy(frozenset(Mode)))
    assert isinstance(hs.feed(build_client_hello(SECRETS[1], DOMAIN, int(NOW)), NOW), Reply)
    assert hs.replied
    event = hs.feed(garbage, NOW) if garbage else None
    if isinstance(event, Rejected):
        assert not event.maskable
    elif event is None:
        assert hs.abort(why) == Rejected(why, maskable=False)
    with pytest.raises(RuntimeError):
        hs.feed(b"x", NOW)


def test_abort_before_the_reply_is_maskable() -> None:
    hs = ServerHandshake(policy(frozenset(Mode)))
    assert hs.feed(b"\x16\x03\x01", NOW) is None
    assert not hs.replied
    assert hs.abort("timeout") == Rejected("timeout")
    with pytest.raises(RuntimeError):
        hs.feed(b"x", NOW)


def test_a_silent_client_aborts_maskable() -> None:
    assert ServerHandshake(policy(frozenset(Mode))).abort("eof") == Rejected("eof")


def test_a_valid_session_after_the_reply_is_accepted() -> None:
    hs = ServerHandshake(policy(frozenset({Mode.TLS})))
    assert isinstance(hs.feed(build_client_hello(SECRETS[0], DOMAIN, int(NOW)), NOW), Reply)
    inner = make_initiator_header(TAGS[2], 2, SECRETS[0]).wire
    event = hs.feed(CCS_RECORD + wrap_tls_records(inner, 16384), NOW)
    assert isinstance(event, Accepted) and event.mode is Mode.TLS
