"""The slow rows of the issue's table, with nginx's timers shortened (see lab.py --timers).

A censor that opens a connection and sends nothing, one byte or half a ClientHello, or
completes a TLS session with the site and then goes quiet, learns when the server gives
up and whether it sends TCP keep-alive probes meanwhile. Through the proxy both must be
the site's: the close at the site's time (plus the mirror's delay for undecided
clients), the same FIN or reset, and no keep-alive probe, although the proxy runs with a
one-second keep-alive that its own clients do get.

The same capture shows what --server-hello-segment does to the fake ServerHello's
segments (the issue's item 9).
"""

from __future__ import annotations

from typing import Any

import pytest

from stealth.lab import KEEPALIVE, SHORT_TIMERS

#: The proxy's --mask-mirror-after (its default): undecided clients reach the site this late.
MIRROR = 0.5
#: Scheduling slack on a loaded two-core machine.
SLACK = 0.5
UNDECIDED = ["nothing", "one_byte_0x16", "half_hello", "byte_after_close"]
TLS_SESSIONS = {
    # A TLS 1.3 handshake and no request: nginx waits for one for client_header_timeout.
    "tls_idle": "client_header_timeout",
    # One request answered, then nothing: nginx's keepalive_timeout.
    "tls_request_idle": "keepalive_timeout",
}


def row(timers: dict[str, Any], probe: str) -> tuple[dict[str, Any], dict[str, Any]]:
    assert timers["tcpdump"]
    return timers["rows"][probe]["site"], timers["rows"][probe]["proxy"]


@pytest.mark.parametrize("probe", UNDECIDED)
def test_an_undecided_client_is_closed_at_the_site_s_time(
    timers: dict[str, Any], probe: str
) -> None:
    site, proxy = row(timers, probe)
    # The site's own timer ended it (not the proxy's 10 s handshake timeout)...
    timer = SHORT_TIMERS["client_header_timeout"]
    assert timer <= site["closed"] < timer + SLACK
    # ... and the proxy's, the site's answer relayed after the mirror's delay.
    assert proxy["close"] == site["close"]
    assert proxy["bytes"] == site["bytes"]
    assert site["closed"] <= proxy["closed"] < site["closed"] + MIRROR + SLACK


def test_a_fin_from_a_mirrored_client_ends_it_at_once(timers: dict[str, Any]) -> None:
    """One byte, then a FIN after the mirror's moment: the site closes at once."""
    site, proxy = row(timers, "fin_after_1s")
    assert site["close"] == proxy["close"] == "fin"
    assert 1.0 <= site["closed"] < 1.0 + SLACK
    assert abs(proxy["closed"] - site["closed"]) < SLACK


def test_a_byte_after_the_site_s_close_gets_a_reset(timers: dict[str, Any]) -> None:
    """The site closed its socket, so its kernel resets whatever comes next."""
    site, proxy = row(timers, "byte_after_close")
    assert site["after"] == proxy["after"] == "rst"


@pytest.mark.parametrize("probe", sorted(TLS_SESSIONS))
def test_a_tls_session_with_the_site_ends_at_the_site_s_time(
    timers: dict[str, Any], probe: str
) -> None:
    site, proxy = row(timers, probe)
    timer = SHORT_TIMERS[TLS_SESSIONS[probe]]
    assert timer <= site["closed"] < timer + SLACK
    assert proxy["close"] == site["close"]
    assert proxy["bytes"] == site["bytes"]  # what the site sent while the client was idle
    assert abs(proxy["closed"] - site["closed"]) < SLACK


@pytest.mark.parametrize("probe", [*UNDECIDED, *sorted(TLS_SESSIONS)])
def test_no_keepalive_probe_on_a_connection_the_site_would_not_probe(
    timers: dict[str, Any], probe: str
) -> None:
    """The proxy runs with a 1 s keep-alive: a probe would show long before the close."""
    site, proxy = row(timers, probe)
    assert site["keepalives_at"] == []
    assert proxy["keepalives_at"] == []  # [] not None: the capture saw the connection
    assert proxy["closed"] > 2 * KEEPALIVE


def test_the_proxy_s_own_clients_do_get_keepalive(timers: dict[str, Any]) -> None:
    """The same capture sees probes on an accepted fake-TLS session gone idle."""
    probes = timers["rows"]["fake_tls_session"]["proxy"]["keepalives_at"]
    assert len(probes) >= 2
    assert KEEPALIVE <= probes[0] < KEEPALIVE + SLACK + 0.5


def test_server_hello_segment_cuts_the_flight_and_only_the_flight(timers: dict[str, Any]) -> None:
    """--server-hello-segment 100: the fake ServerHello flight leaves in segments of at
    most 100 bytes, the data after it in full ones; the SYN-ACK (what a port scan sees)
    advertises the same MSS as without the option. Without it the flight is one segment.
    The capture runs with segmentation offload off, so each record is one wire segment."""
    shapes = timers["server_hello_segments"]
    size = timers["segment"]
    default, segmented = shapes["default"], shapes["segmented"]
    assert default["flight"] == [default["flight_bytes"]]
    flight = segmented["flight_bytes"]
    assert sum(segmented["flight"]) == flight
    assert max(segmented["flight"]) <= size
    assert len(segmented["flight"]) == -(-flight // size)
    assert max(segmented["after"]) > 100 * size
    assert segmented["syn_ack_mss"] == default["syn_ack_mss"] is not None
