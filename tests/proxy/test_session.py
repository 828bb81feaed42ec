"""The client session's lifecycle, event by event, with no sockets.

Clients are built with the independent fakes (tests/fakes), so the session is judged
against bytes the proxy's own builders did not make.
"""

from __future__ import annotations

import random

import pytest
from fakes import build_client_hello
from fakes.obfs import TAGS, make_initiator_header
from hypothesis import given, settings
from hypothesis import strategies as st

from mtproxy.protocol.handshake import Accepted, HandshakePolicy
from mtproxy.protocol.proxy_protocol import build_v1
from mtproxy.protocol.replay import ReplayCache
from mtproxy.protocol.secret import Mode
from mtproxy.proxy.session import (
    Action,
    Close,
    DropMask,
    EofToClient,
    EofToUpstream,
    Phase,
    SendToClient,
    Session,
    SetAddresses,
    StartMask,
    StartSession,
    ToMask,
)
from mtproxy.proxy.stats import ProxyStats

SECRET = bytes(range(16))
DOMAIN = "www.example.com"
NOW = 1_700_000_000.0
TIMEOUT = 10.0
T0 = 100.0  # loop time at accept


def policy(modes: frozenset[Mode] = frozenset(Mode)) -> HandshakePolicy:
    return HandshakePolicy(
        secrets=[SECRET], modes=modes, tls_domains=frozenset({DOMAIN}),
        replay=ReplayCache(1000, 720.0),
    )  # fmt: skip


MIRROR = 0.5
GRACE = 10.0  # the session's default half-close grace


def new_session(*, mask: bool = True, proxy_protocol: bool = False,
                modes: frozenset[Mode] = frozenset(Mode),
                mirror: float | None = None) -> tuple[Session, ProxyStats]:
    stats = ProxyStats()
    session = Session(policy(modes), stats, now=T0, handshake_timeout=TIMEOUT, mask=mask,
                      proxy_protocol=proxy_protocol, mirror_after=mirror)  # fmt: skip
    return session, stats


def classic_header(seed: int = 1) -> bytes:
    rnd = random.Random(seed)
    while True:
        base = rnd.randbytes(64)
        if base[0] != 0xEF and base[4:8] != bytes(4) and base[:3] != b"\x16\x03\x01":
            break
    return make_initiator_header(TAGS[1], 2, SECRET, base=base).wire


def accept(session: Session) -> Accepted:
    [action] = session.receive(classic_header(), NOW)
    assert isinstance(action, StartSession)
    return action.accepted


# -- the path of a good client ------------------------------------------------------------


def test_an_accepted_client_connects_relays_and_ends_with_both_half_closes() -> None:
    session, stats = new_session()
    assert session.phase.value == "handshake" and session.deadline == T0 + TIMEOUT
    accepted = accept(session)
    assert accepted.mode is Mode.CLASSIC
    assert session.phase is Phase.CONNECTING and session.deadline is None
    assert stats.handshakes[("classic", "ok")] == 1
    assert session.upstream_ready(T0) == []
    assert session.phase is Phase.RELAYING and stats.sessions_active == 1
    assert session.eof_received(T0) == [EofToUpstream()]
    assert session.upstream_eof_received(T0) == [EofToClient(), Close("done")]
    assert session.phase is Phase.CLOSED and stats.sessions_active == 0
    assert session.reason == "done"


def test_the_upstream_may_end_first() -> None:
    session, stats = new_session()
    accept(session)
    session.upstream_ready(T0)
    assert session.upstream_eof_received(T0) == [EofToClient()]
    assert session.eof_received(T0) == [EofToUpstream(), Close("done")]
    assert stats.sessions_active == 0


@pytest.mark.parametrize("first", ["client", "upstream"])
def test_one_side_half_closed_and_the_other_silent_ends_after_a_grace(first: str) -> None:
    session, stats = new_session()
    accept(session)
    session.upstream_ready(T0)
    assert session.deadline is None
    if first == "client":
        session.eof_received(T0 + 1)
    else:
        session.upstream_eof_received(T0 + 1)
    assert session.deadline == T0 + 1 + GRACE
    assert session.timer(T0 + GRACE) == []
    assert session.timer(T0 + 1 + GRACE) == [Close("half_closed")]
    assert stats.sessions_active == 0


def test_a_client_eof_while_connecting_is_passed_on_once_connected() -> None:
    session, _ = new_session()
    accept(session)
    assert session.eof_received(T0) == []
    assert session.upstream_ready(T0) == [EofToUpstream()]


def test_bytes_after_the_header_in_the_same_read_are_handed_over() -> None:
    session, _ = new_session()
    [action] = session.receive(classic_header() + b"early", NOW)
    assert isinstance(action, StartSession)
    assert len(action.accepted.leftover) == 5


def test_a_header_in_pieces_is_accepted_once_whole() -> None:
    session, _ = new_session()
    wire = classic_header()
    for i in range(63):
        assert session.receive(wire[i : i + 1], NOW) == []
    [action] = session.receive(wire[63:], NOW)
    assert isinstance(action, StartSession)


@pytest.mark.parametrize(
    ("event", "reason", "counter"),
    [
        ("refused", "refused", ("classic", "refused")),
        ("upstream_failed", "upstream_failed", None),
        ("over_quota", "quota", None),
    ],
)
def test_an_accepted_session_can_be_ended_by_the_proxy(
    event: str, reason: str, counter: tuple[str, str] | None
) -> None:
    session, stats = new_session()
    accept(session)
    if event == "over_quota":
        session.upstream_ready(T0)
    assert getattr(session, event)() == [Close(reason)]
    assert session.phase is Phase.CLOSED and session.reason == reason
    assert stats.sessions_active == 0
    if counter is not None:
        assert stats.handshakes[counter] == 1
    if event == "upstream_failed":
        assert stats.upstream_failures == 1


def test_a_lost_upstream_closes_the_client_and_a_failed_one_aborts_it() -> None:
    for failed in (False, True):
        session, stats = new_session()
        accept(session)
        session.upstream_ready(T0)
        [close] = session.upstream_lost(failed)
        assert close == Close("upstream_lost" if failed else "upstream_closed", abort=failed)
        assert stats.sessions_active == 0


# -- bad clients ----------------------------------------------------------------------------


def test_a_wrong_secret_goes_to_the_mask_with_every_byte_read() -> None:
    session, stats = new_session()
    junk = bytes(range(100, 164))
    [action] = session.receive(junk, NOW)
    assert action == StartMask(junk)
    assert session.phase is Phase.MASKING and session.reason == "bad_secret"
    assert stats.handshakes[("-", "bad_secret")] == 1
    # The mask connects; the prober's FIN is passed on; the mask's ends the session.
    assert session.upstream_ready(T0) == []
    assert session.eof_received(T0) == [EofToUpstream()]
    assert session.upstream_eof_received(T0) == [EofToClient(), Close("bad_secret")]
    assert session.reason == "bad_secret"


def test_a_silent_client_goes_to_the_mask_when_its_deadline_passes() -> None:
    session, stats = new_session()
    assert session.receive(b"\x01\x02", NOW) == []
    assert session.timer(T0 + TIMEOUT - 0.001) == []  # early: nothing
    assert session.timer(T0 + TIMEOUT) == [StartMask(b"\x01\x02")]
    assert session.deadline is None
    assert stats.handshakes[("-", "timeout")] == 1


def test_a_client_eof_before_the_mask_connects_waits_for_it() -> None:
    session, _ = new_session()
    session.receive(b"\x01" * 64, NOW)
    assert session.eof_received(T0) == []
    assert session.upstream_ready(T0) == [EofToUpstream()]


def test_without_a_mask_bad_clients_are_read_and_ignored_until_they_leave() -> None:
    session, _ = new_session(mask=False)
    assert session.receive(b"\x01" * 64, NOW) == []
    assert session.phase is Phase.DISCARDING
    assert session.eof_received(T0) == [Close("bad_secret")]


def test_without_a_mask_an_eof_mid_handshake_closes() -> None:
    session, _ = new_session(mask=False)
    session.receive(b"\x01" * 10, NOW)
    assert session.eof_received(T0) == [Close("eof")]


def test_after_the_fake_server_hello_the_mask_is_never_used() -> None:
    """A prober that saw our ServerHello must not then see the site's handshake too."""
    for ending in ("eof", "timer"):
        session, stats = new_session()
        [reply] = session.receive(build_client_hello(SECRET, DOMAIN, int(NOW)), NOW)
        assert isinstance(reply, SendToClient) and reply.data[:3] == b"\x16\x03\x03"
        assert session.phase is Phase.HANDSHAKE
        actions = session.eof_received(T0) if ending == "eof" else session.timer(T0 + TIMEOUT)
        reason = "eof" if ending == "eof" else "timeout"
        assert actions == [Close(reason)]
        assert stats.handshakes[("-", reason)] == 1


# -- undecided clients are mirrored to the mask host ----------------------------------------


def mirrored(first: bytes = b"\x16\x03") -> Session:
    session, _ = new_session(mirror=MIRROR)
    assert session.deadline == T0 + MIRROR
    assert session.receive(first, NOW) == []
    assert session.timer(T0 + MIRROR) == [StartMask(first)]
    assert session.mirroring and session.deadline == T0 + TIMEOUT
    return session


def test_an_undecided_client_is_mirrored_and_the_site_s_answer_decides() -> None:
    session = mirrored()
    assert session.receive(b"\x01", NOW) == [ToMask(b"\x01")]
    assert session.upstream_ready(T0) == []  # the mirror connected; still undecided
    assert session.mirroring
    assert session.mask_spoke() == []
    assert session.phase is Phase.MASKING and session.reason == "mask_answered"
    assert session.stats.masked == 1
    assert session.stats.handshakes[("-", "mask_answered")] == 1
    # From now on the mask host is the session's upstream; its FIN is passed on.
    assert session.upstream_eof_received(T0) == [EofToClient()]


def test_the_site_closing_a_mirrored_client_closes_it_the_same_way() -> None:
    session = mirrored()
    session.upstream_ready(T0)
    assert session.upstream_eof_received(T0) == [EofToClient()]
    assert session.phase is Phase.MASKING
    session = mirrored()
    session.upstream_ready(T0)
    assert session.upstream_lost(failed=True) == [Close("mask_answered", True, reset=True)]


def test_a_mirrored_client_that_turns_out_to_be_ours_drops_the_mirror() -> None:
    session = mirrored(classic_header()[:10])
    [drop, start] = session.receive(classic_header()[10:], NOW)
    assert drop == DropMask() and isinstance(start, StartSession)
    assert not session.mask_opened and session.stats.masked == 0
    session = mirrored(b"")
    [drop, reply] = session.receive(build_client_hello(SECRET, DOMAIN, int(NOW)), NOW)
    assert drop == DropMask() and isinstance(reply, SendToClient)
    # After our ServerHello nothing goes to the mask host again, even at the timeout.
    assert session.timer(T0 + TIMEOUT) == [Close("timeout")]


def test_a_mirrored_client_rejected_carries_on_with_the_mirror() -> None:
    session = mirrored(b"\x01" * 10)
    assert session.receive(b"\x02" * 54, NOW) == [ToMask(b"\x02" * 54)]  # no StartMask
    assert session.phase is Phase.MASKING and session.reason == "bad_secret"
    assert session.upstream_ready(T0) == []  # connected only now
    assert session.stats.masked == 1
    session = mirrored()
    session.upstream_ready(T0)
    assert session.timer(T0 + TIMEOUT) == []  # the mirror is the mask: nothing to open
    assert session.phase is Phase.MASKING and session.stats.masked == 1


def test_a_mirrored_client_s_fin_commits_it_and_goes_to_the_site() -> None:
    """The site closes on the prober's FIN; the driver must pass it on at once (it used
    to be dropped while the mirror was becoming the upstream)."""
    session = mirrored()
    session.upstream_ready(T0)
    assert session.eof_received(T0 + 1) == [EofToUpstream()]
    assert session.phase is Phase.MASKING and session.reason == "eof"
    assert session.upstream_eof_received(T0 + 1.001) == [EofToClient(), Close("eof")]
    # Not yet connected: the FIN waits for the mirror's connection.
    session = mirrored()
    assert session.eof_received(T0 + 1) == []
    assert session.upstream_ready(T0 + 1) == [EofToUpstream()]


def test_a_mask_host_that_cannot_be_reached_resets_a_rejected_client() -> None:
    """A site that is down refuses connections; a reset is the nearest to that."""
    session, _ = new_session()
    [start] = session.receive(b"GET / HTTP/1.1\r\n", NOW)
    assert isinstance(start, StartMask) and session.phase is Phase.MASKING
    assert session.mask_failed() == [Close(session.reason or "", True, reset=True)]
    assert session.reason not in (None, "mask_unreachable")  # the rejection's reason


def test_a_mask_host_that_cannot_be_reached_leaves_the_client_undecided() -> None:
    session = mirrored()
    assert session.mask_failed() == []
    assert session.phase is Phase.HANDSHAKE and not session.mask_opened
    # A rejection later tries the mask host again; when that fails, the door closes.
    assert session.timer(T0 + TIMEOUT) == [StartMask(b"\x16\x03")]
    # ... with a reset, the nearest to the refused connection of a site that is down.
    assert session.mask_failed() == [Close("timeout", True, reset=True)]


def test_no_mirror_without_a_mask_host_or_behind_an_unfinished_proxy_header() -> None:
    session, _ = new_session(mirror=MIRROR, mask=False)
    assert session.deadline == T0 + TIMEOUT
    session, _ = new_session(mirror=MIRROR, proxy_protocol=True)
    assert session.deadline == T0 + TIMEOUT
    session.receive(build_v1(("10.0.0.1", 1), ("10.0.0.2", 2)), NOW)
    assert session.deadline == T0 + MIRROR
    assert session.timer(T0 + MIRROR) == [StartMask(b"")]


# -- behind a load balancer -----------------------------------------------------------------


def test_a_proxy_header_names_the_client_then_the_handshake_goes_on() -> None:
    session, _ = new_session(proxy_protocol=True)
    header = build_v1(("203.0.113.7", 5555), ("198.51.100.1", 443))
    assert session.receive(header[:10], NOW) == []
    assert session.phase is Phase.PROXY_HEADER
    actions = session.receive(header[10:] + classic_header(), NOW)
    assert actions[0] == SetAddresses(("203.0.113.7", 5555), ("198.51.100.1", 443))
    assert isinstance(actions[1], StartSession)


def test_a_bad_or_missing_proxy_header_aborts_and_is_counted() -> None:
    session, stats = new_session(proxy_protocol=True)
    assert session.receive(b"GET / HTTP/1.1\r\n\r\n", NOW) == [Close("bad_proxy_header", True)]
    assert stats.proxy_protocol_errors == 1
    session, stats = new_session(proxy_protocol=True)
    assert session.timer(T0 + TIMEOUT) == [Close("proxy_header_timeout", True)]
    assert stats.proxy_protocol_errors == 1
    session, _ = new_session(proxy_protocol=True)
    assert session.eof_received(T0) == [Close("eof")]


# -- any order of events --------------------------------------------------------------------

EVENTS = ["data", "junk", "eof", "timer", "mirror", "ready", "failed", "up_eof", "lost",
          "refused", "quota", "spoke", "mask_failed", "closed"]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(EVENTS), max_size=12), st.booleans(), st.booleans())
def test_any_order_of_events_keeps_the_session_consistent(
    events: list[str], mask: bool, proxy_protocol: bool
) -> None:
    """Whatever happens in whatever order: no exception, at most one Close, counters that
    never go negative, and a reason once closed."""
    session, stats = new_session(mask=mask, proxy_protocol=proxy_protocol, mirror=MIRROR)
    wire = build_v1(("10.0.0.1", 1), ("10.0.0.2", 2)) if proxy_protocol else b""
    wire += classic_header(7)
    closes = 0
    for event in events:
        actions: list[Action] = []
        if event in ("data", "junk"):
            if session.phase in (Phase.PROXY_HEADER, Phase.HANDSHAKE):
                actions = session.receive(wire if event == "data" else b"\x00" * 70, NOW)
        elif event == "eof":
            actions = session.eof_received(T0)
        elif event == "timer":
            actions = session.timer(T0 + TIMEOUT)
        elif event == "mirror":
            actions = session.timer(T0 + MIRROR)
        elif event == "ready":
            if session.phase is Phase.CONNECTING or session.mask_opened:
                actions = session.upstream_ready(T0)
        elif event == "spoke":
            if session.connected:
                actions = session.mask_spoke()
        elif event == "mask_failed":
            if session.mask_opened and not session.connected:
                actions = session.mask_failed()
        elif event == "failed":
            actions = session.upstream_failed()
        elif event == "up_eof":
            if session.connected:
                actions = session.upstream_eof_received(T0)
        elif event == "lost":
            actions = session.upstream_lost(failed=True)
        elif event == "refused":
            if session.accepted is not None:
                actions = session.refused()
        elif event == "quota":
            actions = session.over_quota()
        else:
            session.closed("client_closed")
        closes += sum(isinstance(a, Close) for a in actions)
        assert stats.sessions_active in (0, 1)
        assert (stats.sessions_active == 1) == (session.phase is Phase.RELAYING)
        if session.phase is Phase.CLOSED:
            assert session.reason is not None and session.deadline is None
    assert closes <= 1
    session.closed("client_closed")
    assert session.phase is Phase.CLOSED and stats.sessions_active == 0
    assert session.eof_received(T0) == [] and session.timer(T0 + 10 * TIMEOUT) == []
    assert session.receive(b"late", NOW) == []
