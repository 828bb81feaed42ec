"""The suite's guard against name lookups that would leave the machine (conftest.py)."""

from __future__ import annotations

import asyncio
import socket

import pytest


async def test_a_lookup_of_another_name_fails_and_is_noted(
    names_stay_on_this_machine: list[object],
) -> None:
    with pytest.raises(socket.gaierror, match="stay on loopback"):
        await asyncio.get_running_loop().getaddrinfo("mask.example.com", 443)
    with pytest.raises(socket.gaierror):
        socket.create_connection(("www.example.com", 443), timeout=1)
    assert names_stay_on_this_machine == ["mask.example.com", "www.example.com"]
    names_stay_on_this_machine.clear()  # noted: this test meant it


@pytest.mark.parametrize("host", [None, "localhost", "127.0.0.1", "::1", "[::1]", "0.0.0.0",
                                  "192.0.2.7", b"127.0.0.2"])  # fmt: skip
def test_loopback_names_and_addresses_are_looked_up_as_usual(
    names_stay_on_this_machine: list[object], host: str | bytes | None
) -> None:
    flags = socket.AI_PASSIVE if host is None else 0
    try:
        socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM, flags=flags)
    except socket.gaierror as exc:
        assert "stay on loopback" not in str(exc)
    assert names_stay_on_this_machine == []
