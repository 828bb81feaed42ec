"""ServerHandshake: what a client's opening bytes lead to, fed whole or in pieces.

Clients are built with the independent fakes (tests/fakes), not with the proxy's own
builders, so a bug shared by the proxy's builder and parser cannot hide here.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from fakes import build_client_hello, verify_server_response
from fakes.obfs import TAGS, InitiatorHandshake, make_initiator_header, wrap_tls_records
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mtproxy.config.settings import Settings
from mtproxy.protocol.faketls import CCS_RECORD
from mtproxy.protocol.framing import Framing
from mtproxy.protocol.handshake import (
    Accepted,
    Event,
    HandshakePolicy,
    Rejected,
    Reply,
    ServerHandshake,
)
from mtproxy.protocol.replay import ReplayCache
from mtproxy.protocol.secret import ClientSecret, Mode

NOW = 1_700_000_000.0
SECRETS = [bytes([i]) * 16 for i in range(1, 4)]
DOMAIN = "www.example.com"
ALL = frozenset(Mode)
PAST, FUTURE = 600.0, 120.0
TAG_FOR = {
    Framing.ABRIDGED: TAGS[0],
    Framing.INTERMEDIATE: TAGS[1],
    Framing.PADDED: TAGS[2],
}


def make_policy(
    modes: frozenset[Mode] = ALL, secrets: Sequence[bytes] = SECRETS, cache: int = 1000
) -> HandshakePolicy:
    return HandshakePolicy(
        secrets=list(secrets),
        modes=modes,
        tls_domains=frozenset({DOMAIN, "alt.example.org"}),
        replay=ReplayCache(cache, PAST + FUTURE),
        tls_max_past=PAST,
        tls_max_future=FUTURE,
    )


def header_base(rnd: random.Random, first: bytes = b"") -> bytes:
    """64 seeded bytes that pass the forbidden-prefix rules, starting with ``first``.

    ``16 03 01`` starts are skipped too: with fake TLS enabled the server reads them as
    a ClientHello (by design; 1 header in 2**24).
    """
    while True:
        base = first + rnd.randbytes(64 - len(first))
        if base[:3] == b"\x16\x03\x01":
            continue
        if base[0] != 0xEF and base[4:8] != bytes(4) and base[:4] not in (
            b"HEAD", b"POST", b"GET ", b"OPTI", b"\x16\x03\x01\x02", b"\xdd" * 4, b"\xee" * 4
        ):
            return base


def obfs_client(
    secret: bytes, framing: Framing, dc_id: int = 2, seed: int = 0, first: bytes = b""
) -> InitiatorHandshake:
    base = header_base(random.Random(seed), first)
    return make_initiator_header(TAG_FOR[framing], dc_id, secret, base=base)


def hello(secret: bytes = SECRETS[0], ts: float = NOW, domain: str = DOMAIN,
          seed: int = 0) -> bytes:
    session_id = random.Random(seed).randbytes(32)
    return build_client_hello(secret, domain, int(ts), session_id=session_id)


def feed_all(hs: ServerHandshake, chunks: Sequence[bytes], now: float = NOW) -> list[Event]:
    """Feed chunks until a final verdict; return every event seen."""
    events: list[Event] = []
    for chunk in chunks:
        event = hs.feed(chunk, now)
        if event is not None:
            events.append(event)
            if isinstance(event, Accepted | Rejected):
                break
    return events


def verdict(events: list[Event]) -> Event:
    assert events, "no verdict"
    return events[-1]


def rejected(events: list[Event]) -> str:
    event = verdict(events)
    assert isinstance(event, Rejected), event
    return event.reason


# -- modes ---------------------------------------------------------------------------

MODE_SETS = [frozenset(c) for n in (1, 2, 3) for c in itertools.combinations(Mode, n)]


@pytest.mark.parametrize("modes", MODE_SETS, ids=lambda m: "+".join(sorted(x.value for x in m)))
@pytest.mark.parametrize("framing", list(Framing))
def test_obfs2_clients_follow_enabled_modes(modes: frozenset[Mode], framing: Framing) -> None:
    client = obfs_client(SECRETS[1], framing, dc_id=-4)
    payload = b"first packet bytes"
    wire = client.wire + client.encryptor.update(payload)
    events = feed_all(ServerHandshake(make_policy(modes)), [wire])
    wanted = Mode.SECURE if framing is Framing.PADDED else Mode.CLASSIC
    if wanted not in modes:
        assert events == [Rejected("mode_disabled")]
        return
    [event] = events
    assert isinstance(event, Accepted)
    assert event.mode is wanted and event.records is None and event.tls_timestamp is None
    assert (event.client.framing, event.client.dc_id, event.client.secret_index) == (
        framing, -4, 1
    )
    # Data coalesced with the header is handed over, and the read stream continues.
    assert event.client.decryptor.update(event.leftover) == payload
    # The proxy's write key is what the client decrypts with.
    reply = b"server says hi"
    assert client.decryptor.update(event.client.encrypt_key.cipher().update(reply)) == reply


@pytest.mark.parametrize("modes", MODE_SETS, ids=lambda m: "+".join(sorted(x.value for x in m)))
def test_tls_clients_follow_enabled_modes(modes: frozenset[Mode]) -> None:
    record = hello(SECRETS[2])
    events = feed_all(ServerHandshake(make_policy(modes)), [record])
    if Mode.TLS in modes:
        [event] = events
        assert isinstance(event, Reply)
        assert verify_server_response(SECRETS[2], record, event.data)
    else:
        # Without TLS the hello is read as an obfuscated2 header, which no secret opens.
        event = verdict(events)
        assert isinstance(event, Rejected) and event.maskable


def test_bad_secret_is_maskable() -> None:
    client = obfs_client(b"\x99" * 16, Framing.INTERMEDIATE)
    assert feed_all(ServerHandshake(make_policy()), [client.wire]) == [Rejected("bad_secret")]


def test_only_tls_enabled_rejects_other_openings_at_once() -> None:
    hs = ServerHandshake(make_policy(frozenset({Mode.TLS})))
    assert hs.feed(b"\x00", NOW) == Rejected("mode_disabled")


# -- fake TLS ------------------------------------------------------------------------


def tls_session(
    secret_index: int = 0, framing: Framing = Framing.PADDED, seed: int = 0
) -> tuple[bytes, InitiatorHandshake]:
    return hello(SECRETS[secret_index], seed=seed), obfs_client(
        SECRETS[secret_index], framing, dc_id=3, seed=seed
    )


@given(st.integers(0, 2), st.sampled_from(list(Framing)), st.integers(1, 200),
       st.binary(max_size=400), st.binary(max_size=300))
@settings(max_examples=50)
def test_tls_reply_then_accepted_with_leftover(
    index: int, framing: Framing, max_record: int, first: bytes, later: bytes
) -> None:
    record, client = tls_session(index, framing)
    hs = ServerHandshake(make_policy())
    reply = hs.feed(record, NOW)
    assert isinstance(reply, Reply)
    assert verify_server_response(SECRETS[index], record, reply.data)
    sid = record[44:76]
    assert reply.data[44:76] == sid  # session id echoed
    # CCS, then the header and some data coalesced in records of any size.
    inner = client.wire + client.encryptor.update(first)
    later_wire = wrap_tls_records(client.encryptor.update(later), max_record)
    stream = CCS_RECORD + wrap_tls_records(inner, max_record) + later_wire
    event = hs.feed(stream, NOW)
    assert isinstance(event, Accepted)
    assert event.mode is Mode.TLS and event.tls_timestamp == int(NOW)
    assert (event.client.secret_index, event.client.framing, event.client.dc_id) == (
        index, framing, 3
    )
    assert event.records is not None
    assert event.client.decryptor.update(event.leftover) == first + later


def test_tls_partial_record_continues_in_the_reader() -> None:
    record, client = tls_session(1, Framing.INTERMEDIATE)
    hs = ServerHandshake(make_policy())
    assert isinstance(hs.feed(record, NOW), Reply)
    body = client.wire + client.encryptor.update(b"A" * 100)
    wire = CCS_RECORD + wrap_tls_records(body)
    more = wrap_tls_records(client.encryptor.update(b"B" * 50))
    event = hs.feed(wire + more[:20], NOW)
    assert isinstance(event, Accepted) and event.records is not None
    got = event.client.decryptor
    assert got.update(event.leftover) == b"A" * 100 + b"B" * 15
    buf = bytearray(more[20:])
    n = event.records.unwrap(memoryview(buf), len(buf))
    assert got.update(bytes(buf[:n])) == b"B" * 35


def test_tls_bad_hmac_sni_extra_and_malformed() -> None:
    assert rejected(feed_all(ServerHandshake(make_policy()), [hello(b"\x77" * 16)])) == (
        "tls_bad_hmac"
    )
    assert rejected(feed_all(ServerHandshake(make_policy()), [hello(domain="evil.org")])) == (
        "tls_bad_sni"
    )
    assert rejected(feed_all(ServerHandshake(make_policy()), [hello() + b"\x14"])) == (
        "tls_extra_data"
    )
    # 16 03 01 00 may still begin an obfuscated2 header: that candidate needs 64 bytes.
    for bad in (b"\x16\x03\x01\x00\x01" + b"x" * 59, b"\x16\x03\x01\x02\x00" + bytes(512)):
        assert rejected(feed_all(ServerHandshake(make_policy()), [bad])) == "tls_malformed"
    for events in ([hello(domain="alt.example.org")], [hello(domain="WWW.EXAMPLE.COM")]):
        assert isinstance(verdict(feed_all(ServerHandshake(make_policy()), events)), Reply)


@pytest.mark.parametrize(
    ("offset", "ok"),
    [(0, True), (-PAST, True), (FUTURE, True), (-PAST - 1, False), (FUTURE + 1, False),
     (-10 * 86400, False), (10 * 86400, False)],
)
def test_tls_time_window(offset: float, ok: bool) -> None:
    events = feed_all(ServerHandshake(make_policy()), [hello(ts=NOW + offset)])
    if ok:
        assert isinstance(verdict(events), Reply)
    else:
        assert rejected(events) == "tls_bad_time"


def test_tls_time_before_the_replay_horizon() -> None:
    """Once the cache had to drop a live entry, older timestamps cannot be checked."""
    policy = make_policy(cache=2)
    for i in range(3):  # the third handshake evicts the first, recorded at NOW - 100
        client = obfs_client(SECRETS[0], Framing.ABRIDGED, seed=100 + i)
        assert isinstance(feed_all(ServerHandshake(policy), [client.wire], NOW - 100 + i)[0],
                          Accepted)
    assert policy.replay is not None and policy.replay.horizon == NOW - 100
    late = feed_all(ServerHandshake(policy), [hello(ts=NOW - 100, seed=5)])
    assert rejected(late) == "tls_bad_time"
    fresh = feed_all(ServerHandshake(policy), [hello(ts=NOW - 99, seed=6)])
    assert isinstance(verdict(fresh), Reply)


def test_replayed_hello_and_header_are_rejected() -> None:
    policy = make_policy()
    record = hello(seed=9)
    assert isinstance(ServerHandshake(policy).feed(record, NOW), Reply)
    assert ServerHandshake(policy).feed(record, NOW + 1) == Rejected("tls_replay")
    client = obfs_client(SECRETS[0], Framing.PADDED, seed=9)
    assert isinstance(ServerHandshake(policy).feed(client.wire, NOW), Accepted)
    assert ServerHandshake(policy).feed(client.wire, NOW + 1) == Rejected("replay")


def test_replayed_header_inside_a_fresh_hello_is_rejected_late() -> None:
    policy = make_policy()
    client = obfs_client(SECRETS[0], Framing.ABRIDGED, seed=3)
    inner = CCS_RECORD + wrap_tls_records(client.wire)
    first = ServerHandshake(policy)
    assert isinstance(first.feed(hello(seed=1), NOW), Reply)
    assert isinstance(first.feed(inner, NOW), Accepted)
    second = ServerHandshake(policy)
    assert isinstance(second.feed(hello(seed=2), NOW), Reply)
    assert second.feed(inner, NOW) == Rejected("replay", maskable=False)


def test_inner_header_must_use_the_hello_secret() -> None:
    hs = ServerHandshake(make_policy())
    assert isinstance(hs.feed(hello(SECRETS[1]), NOW), Reply)
    other = obfs_client(SECRETS[0], Framing.PADDED)
    event = hs.feed(CCS_RECORD + wrap_tls_records(other.wire), NOW)
    assert event == Rejected("tls_inner_bad_header", maskable=False)


def test_inner_garbage_record_is_not_maskable() -> None:
    hs = ServerHandshake(make_policy())
    assert isinstance(hs.feed(hello(), NOW), Reply)
    assert hs.feed(b"\x15\x03\x03\x00\x02\x02\x28", NOW) == Rejected(
        "tls_inner_malformed", maskable=False
    )


@given(st.integers(-int(PAST), int(FUTURE)), st.floats(0, 3 * (PAST + FUTURE)))
@example(int(FUTURE), PAST + FUTURE / 2)
def test_no_replay_while_the_timestamp_is_acceptable(skew: int, delay: float) -> None:
    """A cache window of past + future covers every timestamp the time check accepts.

    With a window of only ``tls_max_past``, a hello whose clock ran ahead could be
    replayed in the gap between its cache entry expiring and its timestamp ageing out.
    """
    policy = make_policy()
    record = hello(ts=NOW + skew, seed=skew)
    assert isinstance(ServerHandshake(policy).feed(record, NOW), Reply)
    again = ServerHandshake(policy).feed(record, NOW + delay)
    assert isinstance(again, Rejected)
    assert again.reason in ("tls_replay", "tls_bad_time")


async def test_server_policy_leaves_no_replay_gap() -> None:
    """The server wires its cache and time window together so the property above holds."""
    from mtproxy.proxy.server import ProxyServer

    settings = Settings(
        secrets=(ClientSecret(SECRETS[0], Mode.TLS, DOMAIN),), tls_domains=(DOMAIN,)
    )
    server = ProxyServer(settings)
    policy = server.policy
    record = hello(ts=NOW + policy.tls_max_future, seed=77)
    assert isinstance(ServerHandshake(policy).feed(record, NOW), Reply)
    for delay in (policy.tls_max_past + 1, policy.tls_max_past + policy.tls_max_future):
        assert isinstance(ServerHandshake(policy).feed(record, NOW + delay), Rejected)


# -- 0x16 is not always TLS ----------------------------------------------------------


@pytest.mark.parametrize("first", [b"\x16", b"\x16\x03", b"\x16\x03\x00", b"\x16\x03\x03",
                                   b"\x16\x01\x01"])
@pytest.mark.parametrize("bytewise", [False, True])
def test_obfs2_header_starting_with_0x16_is_not_taken_for_tls(
    first: bytes, bytewise: bool
) -> None:
    """Regression: a header whose first byte is 0x16 was once treated as a ClientHello."""
    client = obfs_client(SECRETS[0], Framing.INTERMEDIATE, first=first)
    assert client.wire.startswith(first)
    chunks = [client.wire[i : i + 1] for i in range(64)] if bytewise else [client.wire]
    event = verdict(feed_all(ServerHandshake(make_policy()), chunks))
    assert isinstance(event, Accepted) and event.mode is Mode.CLASSIC


# -- split invariance and garbage ----------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    flights: tuple[bytes, ...]
    payload: bytes
    #: "accepted" or the expected rejection reason.
    expect: str


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """Well-formed client openings, good or bad, each as its flights of bytes."""
    kind = draw(st.sampled_from(
        ["obfs2", "obfs2-bad", "obfs2-0x16", "tls", "tls-hmac", "tls-sni", "tls-time"]
    ))
    seed = draw(st.integers(0, 1000))
    index = draw(st.integers(0, 2))
    framing = draw(st.sampled_from(list(Framing)))
    payload = draw(st.binary(max_size=200))
    secret = SECRETS[index] if not kind.endswith("bad") else b"\x42" * 16
    client = obfs_client(secret, framing, seed=seed, first=b"\x16" if "0x16" in kind else b"")
    inner = client.wire + client.encryptor.update(payload)
    if kind.startswith("obfs2"):
        return Scenario((inner,), payload, "bad_secret" if kind == "obfs2-bad" else "accepted")
    hello_secret = b"\x42" * 16 if kind == "tls-hmac" else secret
    domain = "other.example.net" if kind == "tls-sni" else DOMAIN
    ts = NOW - 2 * PAST if kind == "tls-time" else NOW
    size = draw(st.integers(1, 300))
    expect = {"tls": "accepted", "tls-hmac": "tls_bad_hmac", "tls-sni": "tls_bad_sni",
              "tls-time": "tls_bad_time"}[kind]
    return Scenario(
        (hello(hello_secret, ts, domain, seed), CCS_RECORD + wrap_tls_records(inner, size)),
        payload,
        expect,
    )


def outcome(flights: Sequence[bytes], cuts: list[int]) -> tuple[object, ...]:
    """Feed each flight cut at the given points; summarise what the server decided.

    The summary ends with the client's decrypted bytes when the server accepted.
    """
    hs = ServerHandshake(make_policy())
    summary: list[object] = []
    accepted: Accepted | None = None
    after = b""
    pieces = []
    for flight in flights:
        points = [*sorted({c % (len(flight) + 1) for c in cuts}), len(flight)]
        pieces += [flight[a:b] for a, b in itertools.pairwise([0, *points])]
    for piece in pieces:
        if accepted is not None:
            after += piece
            continue
        event = hs.feed(piece, NOW)
        if isinstance(event, Reply):
            summary.append(("reply",))
        elif isinstance(event, Rejected):
            summary.append(("rejected", event.reason, event.maskable))
            break
        elif isinstance(event, Accepted):
            accepted = event
            c = event.client
            summary.append(("accepted", event.mode, c.framing, c.dc_id, c.secret_index))
    if accepted is not None:
        if accepted.records is not None:
            buf = bytearray(after)
            after = bytes(buf[: accepted.records.unwrap(memoryview(buf), len(buf))])
        summary.append(accepted.client.decryptor.update(accepted.leftover + after))
    return tuple(summary)


@given(scenarios(), st.lists(st.integers(0, 1 << 12), max_size=10))
@settings(max_examples=60)
def test_any_split_gives_the_same_outcome(scenario: Scenario, cuts: list[int]) -> None:
    whole = outcome(scenario.flights, [])
    assert outcome(scenario.flights, cuts) == whole
    if scenario.expect == "accepted":
        assert whole[-1] == scenario.payload
    else:
        assert whole[-1] == ("rejected", scenario.expect, True)


@pytest.mark.parametrize("kind", range(7))
def test_byte_by_byte_equals_one_chunk(kind: int) -> None:
    rnd = random.Random(kind)
    client = obfs_client(SECRETS[kind % 3], list(Framing)[kind % 3], seed=kind)
    payload = rnd.randbytes(50)
    inner = client.wire + client.encryptor.update(payload)
    flights: tuple[bytes, ...]
    if kind % 2:
        flights = (hello(SECRETS[kind % 3], seed=kind), CCS_RECORD + wrap_tls_records(inner, 7))
    else:
        flights = (inner,)
    every_byte = list(range(max(len(f) for f in flights) + 1))
    one = outcome(flights, [])
    assert outcome(flights, every_byte) == one
    assert one[-1] == payload


garbage_flights = st.lists(
    st.one_of(
        st.binary(max_size=200),
        st.binary(max_size=600).map(lambda b: b"\x16\x03\x01" + len(b).to_bytes(2, "big") + b),
        st.binary(min_size=1, max_size=300).map(
            lambda b: b"\x17\x03\x03" + len(b).to_bytes(2, "big") + b
        ),
        st.just(CCS_RECORD),
        st.integers(0, 50).map(lambda s: hello(seed=s)),
    ),
    min_size=1,
    max_size=5,
)


@given(garbage_flights, st.lists(st.integers(0, 1 << 12), max_size=10),
       st.sampled_from(MODE_SETS))
@settings(max_examples=150)
def test_garbage_never_raises(
    flights: list[bytes], cuts: list[int], modes: frozenset[Mode]
) -> None:
    hs = ServerHandshake(make_policy(modes))
    data = b"".join(flights)
    points = [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    prev = 0
    for point in points:
        event = hs.feed(data[prev:point], NOW)
        prev = point
        assert event is None or isinstance(event, Reply | Rejected | Accepted)
        if isinstance(event, Rejected | Accepted):
            with pytest.raises(RuntimeError):
                hs.feed(b"x", NOW)
            return
