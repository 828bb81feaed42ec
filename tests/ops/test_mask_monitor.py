"""MaskMonitor: which profile the fake answer uses, and when it changes (loopback sites only)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from fakes.tls_site import TlsSite

from mtproxy.mask.monitor import PROFILE_FILE, MaskMonitor
from mtproxy.protocol.faketls import ServerHelloShape
from mtproxy.protocol.tlsprofile import TlsProfile
from ops.helpers import free_port

DOMAIN = "www.example.com"


class Applied:
    def __init__(self) -> None:
        self.shapes: list[ServerHelloShape] = []

    def __call__(self, shape: ServerHelloShape) -> None:
        self.shapes.append(shape)


def monitor(tmp_path: Path, port: int, applied: Applied) -> MaskMonitor:
    return MaskMonitor(("127.0.0.1", port), DOMAIN, tmp_path, applied, timeout=5)


def measured(records: tuple[int, ...], order: tuple[int, ...] = (43, 51)) -> TlsProfile:
    return TlsProfile(order, 0x1301, 29, records, True, "fetched", "127.0.0.1:1", DOMAIN, 1.0)


async def test_a_measured_site_is_used_and_stored(tmp_path: Path) -> None:
    applied = Applied()
    async with TlsSite(tmp_path / "site", DOMAIN) as site:
        mon = monitor(tmp_path, site.port, applied)
        mon.load()
        assert mon.health.profile_source == "drawn" and not (tmp_path / PROFILE_FILE).exists()
        await mon.check()
    assert mon.health.up == 1 and mon.health.profile_source == "fetched"
    stored = json.loads((tmp_path / PROFILE_FILE).read_text())
    assert stored["source"] == "fetched" and stored["mask"] == f"127.0.0.1:{site.port}"
    assert applied.shapes[-1].appdata_len == sum(5 + n for n in stored["records"]) - 5
    # A new process finds it, for the same mask host and name only.
    again = Applied()
    cached = monitor(tmp_path, site.port, again)
    cached.load()
    assert cached.health.profile_source == "cached"
    assert again.shapes[-1] == applied.shapes[-1]
    other = monitor(tmp_path, site.port + 1, Applied())
    other.load()
    assert other.health.profile_source == "drawn"


async def test_a_site_that_never_answered_gets_one_drawn_size_stored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    applied = Applied()
    mon = monitor(tmp_path, free_port(), applied)
    mon.load()
    await mon.check()
    await mon.check()
    assert mon.health.up == 0
    stored = json.loads((tmp_path / PROFILE_FILE).read_text())
    assert stored["source"] == "drawn"
    assert {s.appdata_len for s in applied.shapes} == {stored["records"][0]}
    assert caplog.text.count("is unreachable") == 1  # said once, repeated only hourly
    assert caplog.text.count("one fixed record size drawn once") == 1
    later = Applied()
    monitor(tmp_path, mon.mask[1] if mon.mask else 0, later).load()
    assert later.shapes[-1].appdata_len == stored["records"][0]


def test_a_change_is_taken_only_when_two_checks_agree(tmp_path: Path) -> None:
    applied = Applied()
    mon = monitor(tmp_path, 1, applied)
    mon.load()
    first = measured((36, 1639, 281, 53))
    mon._adopt(first)
    assert applied.shapes[-1] == first.shape()
    mon._adopt(measured((36, 1639, 283, 53)))  # an ECDSA signature a byte or two longer
    assert applied.shapes[-1] == first.shape()
    cut_short = measured((36,))  # a flight read only in part on a busy machine
    mon._adopt(cut_short)
    assert applied.shapes[-1] == first.shape()
    mon._adopt(first)  # back to normal: the odd one is forgotten
    mon._adopt(cut_short)
    assert applied.shapes[-1] == first.shape()
    changed = measured((36, 2500, 281, 53), (51, 43))  # the site really changed
    mon._adopt(changed)
    mon._adopt(dataclasses.replace(changed, time=2.0))
    assert applied.shapes[-1] == changed.shape()
    assert json.loads((tmp_path / PROFILE_FILE).read_text())["records"] == [36, 2500, 281, 53]
