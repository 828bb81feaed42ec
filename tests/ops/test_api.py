"""The management API over real sockets, against a proxy with one and with two workers:
users with live usage, add / change / disable / remove / rotate / reset, reload, errors,
persistence across a restart, and the token."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeDC, endless_source_handler, packet_echo_handler

from ops.helpers import (
    ALICE,
    BOB,
    ProxyProc,
    closed_by_proxy,
    connect,
    echo_ok,
    free_port,
    user_toml,
)

DAVE = bytes.fromhex("da5e0000000000000000000000000004")


class Api:
    """A client of the management API (one request per connection, as the server serves)."""

    def __init__(self, port: int, token: str | None) -> None:
        self.port = port
        self.token = token

    @classmethod
    def of(cls, port: int, data: Path) -> Api:
        token = data / "api-token"
        return cls(port, token.read_text().strip() if token.exists() else None)

    async def raw(self, method: str, path: str, body: bytes = b"",
                  headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            head = {"Host": "x", "Content-Length": str(len(body)), **(headers or {})}
            if self.token is not None:
                head.setdefault("Authorization", f"Bearer {self.token}")
            text = f"{method} {path} HTTP/1.1\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n"  # fmt: skip
            writer.write(text.encode() + body)
            data = await asyncio.wait_for(reader.read(), 15)
        finally:
            writer.close()
        top, _, payload = data.partition(b"\r\n\r\n")
        lines = top.decode().split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        return status, fields, json.loads(payload)

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        raw = b"" if body is None else json.dumps(body).encode()
        status, _, answer = await self.raw(method, path, raw)
        return status, answer


async def start(tmp: Path, workers: int, config: str, *args: str, dc: int = 0) -> tuple[
        ProxyProc, Api]:  # fmt: skip
    port = free_port()
    proxy = await ProxyProc.start(tmp, "--workers", str(workers), "--api", f"127.0.0.1:{port}",
                                  *args, dc_port=dc or None, config=config)  # fmt: skip
    for _ in range(100):  # the API starts right after the stats port
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        break
    return proxy, Api.of(port, tmp / "data")


async def quota_used(api: Api, name: str, want: Callable[[int], bool]) -> bool:
    """Until the user's quota_used satisfies ``want`` (workers report every 250 ms)."""
    for _ in range(100):
        status, body = await api.call("GET", f"/api/users/{name}")
        if status == 200 and want(body["usage"]["quota_used"]):
            return True
        await asyncio.sleep(0.1)
    return False


async def refused(proxy: ProxyProc, secret: bytes, key: str) -> bool:
    """A new session with ``secret`` fails, and the stat ``key`` counts it."""
    before = await proxy.stat(key)
    stream = await connect(proxy, secret)
    try:
        await proxy.wait_stat(key, before + 1)
        return not await echo_ok(stream, timeout=1)
    finally:
        stream.close()


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.timeout_s(120)
async def test_user_lifecycle_under_live_sessions(tmp_path: Path, workers: int) -> None:
    config = user_toml("alice", ALICE, max_connections=4) + user_toml("bob", BOB)
    async with FakeDC(packet_echo_handler) as dc:
        proxy, api = await start(tmp_path, workers, config, dc=dc.port)
        try:
            alice, bob = await connect(proxy, ALICE), await connect(proxy, BOB)
            assert await echo_ok(alice) and await echo_ok(bob)

            status, listing = await api.call("GET", "/api/users")
            assert status == 200
            users = {u["name"]: u for u in listing["users"]}
            assert set(users) == {"alice", "bob"}
            assert users["alice"]["usage"]["connections"] == 1
            assert users["alice"]["usage"]["ips"] == {"127.0.0.1": 1}
            assert users["alice"]["usage"]["bytes_from_client"] > 0
            assert users["alice"]["limits"]["max_connections"] == 4
            assert users["alice"]["source"] == "config"

            # Add: works at once on every worker (several connections land on both).
            status, carol = await api.call("POST", "/api/users",
                                           {"name": "carol", "quota": "1GB"})  # fmt: skip
            assert status == 201, carol
            assert carol["source"] == "api" and carol["limits"]["quota"] == 10**9
            carol_key = bytes.fromhex(carol["secret"])
            assert any(f"port={proxy.port}&secret={carol['secret']}" in link["tg"]
                       for link in carol["links"])  # fmt: skip
            streams = [await connect(proxy, carol_key) for _ in range(6)]
            assert all([await echo_ok(s) for s in streams])
            for s in streams[1:]:
                s.close()
            carol_stream = streams[0]

            # Rotate: the old secret stops working for new sessions, the live one goes on.
            status, rotated = await api.call("POST", "/api/users/alice/rotate-secret")
            assert status == 200 and rotated["secret"] != ALICE.hex()
            assert rotated["links"] and rotated["limits"]["max_connections"] == 4
            assert await refused(proxy, ALICE, "handshakes_any_bad_secret")
            assert await echo_ok(alice)
            assert await echo_ok(await connect(proxy, bytes.fromhex(rotated["secret"])))

            # Disable: bob's session is closed and he is refused; enable lets him back.
            status, body = await api.call("POST", "/api/users/bob/disable")
            assert status == 200 and body["disabled"] is True
            assert await closed_by_proxy(bob)
            assert await refused(proxy, BOB, "refused_disabled")
            status, body = await api.call("PATCH", "/api/users/bob", {"disabled": False})
            assert status == 200 and body["disabled"] is False
            assert await echo_ok(await connect(proxy, BOB))

            # Remove: new sessions fail, established ones go on (as with SIGHUP).
            status, body = await api.call("DELETE", "/api/users/carol")
            assert status == 200 and body == {"removed": "carol"}
            assert await refused(proxy, carol_key, "handshakes_any_bad_secret")
            assert await echo_ok(carol_stream)
            status, _ = await api.call("GET", "/api/users/carol")
            assert status == 404

            # Change limits; null clears one.
            status, body = await api.call("PATCH", "/api/users/alice",
                                          {"max_connections": None, "max_ips": 3,
                                           "expires": "2099-01-31"})  # fmt: skip
            assert status == 200
            assert body["limits"] == {"max_connections": None, "max_ips": 3, "quota": None,
                                      "rate_up": None, "rate_down": None,
                                      "expires": "2099-02-01T00:00:00Z"}  # fmt: skip
            assert "alice.max_connections" not in "".join(
                k for k in (await proxy.stats()) if k.startswith("user.alice.max_connections"))
        finally:
            assert await proxy.stop() == 0

        saved = json.loads((tmp_path / "data" / "users.json").read_text())
        assert saved["removed"] == ["carol"]
        assert {u["name"] for u in saved["users"]} == {"alice", "bob"}
        assert stat.S_IMODE((tmp_path / "data" / "users.json").stat().st_mode) == 0o600

        # A restart keeps every change: the overlay is read with the configuration.
        proxy, api = await start(tmp_path, workers, config, dc=dc.port)
        try:
            assert await echo_ok(await connect(proxy, bytes.fromhex(rotated["secret"])))
            assert await echo_ok(await connect(proxy, BOB))
            status, listing = await api.call("GET", "/api/users")
            assert [u["name"] for u in listing["users"]] == ["alice", "bob"]
            assert listing["users"][0]["limits"]["max_ips"] == 3
        finally:
            assert await proxy.stop() == 0


@pytest.mark.timeout_s(90)
async def test_reset_quota_across_workers(tmp_path: Path) -> None:
    async with FakeDC(packet_echo_handler) as dc:
        proxy, api = await start(tmp_path, 2, user_toml("dave", DAVE, quota="3KB"), dc=dc.port)
        try:
            stream = await connect(proxy, DAVE)
            for _ in range(4):
                if not await echo_ok(stream, b"x" * 1000, timeout=3):
                    break
            assert await closed_by_proxy(stream)
            await proxy.wait_stat("user.dave.quota_closed", 1)
            assert await quota_used(api, "dave", lambda n: n >= 3000)
            await asyncio.sleep(0.6)  # every worker learns the total (they sync every 250 ms)
            assert await refused(proxy, DAVE, "refused_quota")
            status, body = await api.call("POST", "/api/users/dave/reset-quota")
            assert status == 200 and body["usage"]["quota_used"] == 0
            fresh = await connect(proxy, DAVE)
            assert await echo_ok(fresh, b"y" * 500)
            assert await quota_used(api, "dave", lambda n: 0 < n < 3000)
        finally:
            await proxy.stop()
        saved = json.loads((tmp_path / "data" / "usage.json").read_text())
        assert 0 < saved["dave"] < 3000


@pytest.mark.timeout_s(90)
async def test_reload_endpoint(tmp_path: Path) -> None:
    async with FakeDC(packet_echo_handler) as dc:
        proxy, api = await start(tmp_path, 2, user_toml("alice", ALICE), dc=dc.port)
        try:
            (tmp_path / "mtproxy.toml").write_text(user_toml("alice", ALICE)
                                                   + user_toml("bob", BOB))  # fmt: skip
            status, body = await api.call("POST", "/api/reload")
            assert status == 200 and body == {"reloaded": True, "users": 2}
            assert await echo_ok(await connect(proxy, BOB))
            (tmp_path / "mtproxy.toml").write_text("[[users]]\nname = 'x'\n")
            status, body = await api.call("POST", "/api/reload")
            assert status == 409 and "running configuration stays" in body["error"]
            assert await echo_ok(await connect(proxy, BOB))
            status, health = await api.call("GET", "/api/health")
            assert status == 200 and health["status"] == "ok" and health["workers"] == 2
            assert health["listen"] == [f"127.0.0.1:{proxy.port}"]
            status, stats = await api.call("GET", "/api/stats")
            assert status == 200 and len(stats["workers"]) == 2
            assert stats["counters"]["connections_total"] >= 1
        finally:
            await proxy.stop()


@pytest.mark.timeout_s(60)
async def test_bad_requests_get_a_clear_answer(tmp_path: Path) -> None:
    proxy, api = await start(tmp_path, 1, user_toml("alice", ALICE))
    try:
        cases: list[tuple[str, str, Any, int, str]] = [
            ("GET", "/api/users/nobody", None, 404, "no user 'nobody'"),
            ("GET", "/api/nothing", None, 404, "docs/api.md"),
            ("PUT", "/api/users", None, 405, "use GET or POST"),
            ("POST", "/api/users", {"name": "alice"}, 409, "exists"),
            ("POST", "/api/users", {"name": "eve", "secret": ALICE.hex()}, 409, "reuses a secret"),
            ("POST", "/api/users", {"name": "bad name"}, 400, "not a user name"),
            ("POST", "/api/users", {"name": "eve", "quota": "lots"}, 400, "not a size"),
            ("POST", "/api/users", {"name": "secret1"}, 400, "reserved"),
            ("PATCH", "/api/users/alice", {"secret": "00" * 16}, 400, "rotate-secret"),
            ("PATCH", "/api/users/alice", {"max_ips": 0}, 400, "positive"),
            ("PATCH", "/api/users/alice", {"disabled": "yes"}, 400, "true or false"),
            ("POST", "/api/users/alice/rotate-secret", {"secret": "xyz"}, 400, "32 hex"),
        ]  # fmt: skip
        for method, path, body, want, words in cases:
            status, answer = await api.call(method, path, body)
            assert status == want and words in answer["error"], (method, path, answer)
        status, _, answer = await api.raw("POST", "/api/users", b"{not json")
        assert status == 400 and "not JSON" in answer["error"]
        status, _, answer = await api.raw("POST", "/api/users", b"[1]")
        assert status == 400 and "JSON object" in answer["error"]
        # Nothing above changed anything.
        assert not (tmp_path / "data" / "users.json").exists()
        status, listing = await api.call("GET", "/api/users")
        assert [u["name"] for u in listing["users"]] == ["alice"]
    finally:
        await proxy.stop()


@pytest.mark.timeout_s(60)
async def test_token(tmp_path: Path) -> None:
    proxy, api = await start(tmp_path, 1, "")
    try:
        token_file = tmp_path / "data" / "api-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert len(api.token or "") >= 40
        for token in (None, "wrong-token-0123456789", (api.token or "") + "x"):
            other = Api(api.port, token)
            status, fields, body = await other.raw("GET", "/api/users")
            assert status == 401 and fields["www-authenticate"].startswith("Bearer")
            assert "api-token" in body["error"]
        status, _, _ = await api.raw("GET", "/api/users", headers={
            "Authorization": f"Basic {api.token}"})  # fmt: skip
        assert status == 401
        assert (await api.call("GET", "/api/health"))[0] == 200
    finally:
        await proxy.stop()
    # A configured token: used as given, no file needed; the file's token no longer works.
    token_file.unlink()
    proxy, second = await start(tmp_path, 1, 'api_token = "configured-token-0123456789"\n')
    try:
        assert second.token is None
        given = Api(second.port, "configured-token-0123456789")
        assert (await given.call("GET", "/api/users"))[0] == 200
        assert (await Api(second.port, api.token).call("GET", "/api/users"))[0] == 401
        assert not token_file.exists()
    finally:
        await proxy.stop()


@pytest.mark.timeout_s(90)
@pytest.mark.parametrize("workers", [1, 2])
async def test_rate_limit_set_through_the_api_shows_in_metrics(
    tmp_path: Path, workers: int
) -> None:
    async with FakeDC(endless_source_handler) as dc:
        proxy, api = await start(tmp_path, workers, user_toml("alice", ALICE), dc=dc.port)
        try:
            status, body = await api.call("PATCH", "/api/users/alice",
                                          {"rate_down": "512KiB", "rate_up": 1 << 20})
            assert status == 200
            assert body["limits"]["rate_down"] == 512 * 1024
            assert body["limits"]["rate_up"] == 1 << 20
            status, problem = await api.call("PATCH", "/api/users/alice", {"rate_up": "quick"})
            assert status == 400 and "rate_up" in problem["error"]
            stream = await connect(proxy, ALICE)
            got, deadline = 0, asyncio.get_running_loop().time() + 2.5
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                try:
                    got += len(await asyncio.wait_for(stream.read(1 << 20), left))
                except TimeoutError:
                    break
            stream.close()
            # Loosely: shaped (2.5 s at 512 KiB/s, plus a burst), nowhere near free speed.
            assert got < 4 * 1024 * 1024, got
            status, text = await proxy.get("/metrics")
            assert status == 200
            assert ('mtproxy_user_rate_limit_bytes_per_second{direction="to_client",'
                    'user="alice"} 524288.0') in text  # fmt: skip
            line = next(row for row in text.splitlines() if row.startswith(
                'mtproxy_user_throttled_seconds_total{direction="to_client",user="alice"}'))
            assert float(line.split()[-1]) > 0.5
            stats = await proxy.stats()
            assert stats["user.alice.rate_down"] == str(512 * 1024)
            assert float(stats["user.alice.throttled_seconds_down"]) > 0.5
            status, body = await api.call("GET", "/api/users/alice")
            assert body["usage"]["throttled_seconds_down"] > 0.5
            assert body["usage"]["throttled_seconds_up"] == 0
        finally:
            assert await proxy.stop() == 0
