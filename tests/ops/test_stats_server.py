"""The stats port's HTTP handling, in-process over loopback: what it answers to odd
requests, and the per-user metrics a limit or an expiry date adds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mtproxy.ops import stats_server
from mtproxy.ops.snapshot import merge, render_tsv
from mtproxy.ops.stats_server import StatsServer, StatsView
from ops.test_ledger import snap


def view() -> StatsView:
    total = merge([snap(1, 2, 5, 100)])
    total["users"]["alice"]["refused"] = {"max_connections": 4}
    total["users"]["alice"]["expires"] = 1_900_000_000
    total["extra"] = {"middle_dc_2": 3}
    return StatsView(total, 4242, 1000.0)


@asynccontextmanager
async def serving() -> AsyncIterator[StatsServer]:
    async def source() -> StatsView:
        return view()

    server = StatsServer(("127.0.0.1", 0), source)
    await server.start()
    try:
        yield server
    finally:
        await server.close()
        await server.close()  # a second close is harmless


async def exchange(server: StatsServer, request: bytes, *, eof: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection(*server.address)
    try:
        writer.write(request)
        if eof:
            writer.write_eof()
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def status_and_body(reply: bytes) -> tuple[int, bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_methods_paths_and_head() -> None:
    async with serving() as server:
        status, body = status_and_body(await exchange(server, b"POST /stats HTTP/1.1\r\n\r\n"))
        assert (status, body) == (405, b"only GET\n")
        status, body = status_and_body(await exchange(server, b"GET /nope HTTP/1.1\r\n\r\n"))
        assert (status, body) == (404, b"try /stats or /metrics\n")
        status, body = status_and_body(await exchange(server, b"GET HTTP/1.1\r\n\r\n"))
        assert status == 405
        full = await exchange(server, b"GET /stats?x=1 HTTP/1.1\r\n\r\n")
        head_only = await exchange(server, b"HEAD /stats HTTP/1.1\r\n\r\n")
        status, body = status_and_body(full)
        assert status == 200 and b"pid\t4242\n" in body and b"middle_dc_2\t3\n" in body
        head, _, rest = head_only.partition(b"\r\n\r\n")
        assert rest == b"" and b"200" in head.split(b"\r\n")[0]
        length = [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")]
        assert length == [b"Content-Length: " + str(len(body)).encode()]


async def test_unfinished_and_oversized_requests_get_no_answer() -> None:
    async with serving() as server:
        assert await exchange(server, b"GET /stats HTTP/1.1\r\n") == b""  # EOF mid-request
        big = b"GET /stats HTTP/1.1\r\nX: " + b"a" * stats_server.MAX_REQUEST + b"\r\n\r\n"
        assert await exchange(server, big) == b""
        huge = b"GET /stats HTTP/1.1\r\nX: " + b"a" * 70_000  # past the reader's own limit
        assert await exchange(server, huge) == b""


async def test_a_silent_client_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats_server, "REQUEST_TIMEOUT", 0.2)
    async with serving() as server:
        assert await exchange(server, b"GET /stats", eof=False) == b""


async def test_user_limits_and_expiry_reach_the_metrics() -> None:
    async with serving() as server:
        status, body = status_and_body(await exchange(server, b"GET /metrics HTTP/1.1\r\n\r\n"))
    assert status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    refused = ("mtproxy_user_refused_total", (("reason", "max_connections"), ("user", "alice")))
    assert samples[refused] == 4
    expires = ("mtproxy_user_expires_timestamp_seconds", (("user", "alice"),))
    assert samples[expires] == 1_900_000_000


def test_tsv_lists_extra_counters_and_user_limits() -> None:
    text = render_tsv(view().snapshot, pid=1, started=1000.0, workers=[])
    lines = dict(line.split("\t") for line in text.splitlines())
    assert lines["middle_dc_2"] == "3"
    assert lines["user.alice.refused_max_connections"] == "4"
    assert lines["user.alice.expires"] == "1900000000"
    assert lines["workers"] == "1"


def test_merging_nothing_starts_now() -> None:
    empty = merge([])
    assert empty["users"] == {} and empty["counters"] == {}
    assert time.time() - 60 < empty["started"] <= time.time()
