"""Run ``mtproxy run`` as a real process and talk to it over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import signal
import socket
import sys
from pathlib import Path

from fakes import TAG_INTERMEDIATE, ObfsStream, open_obfs2

ROOT = Path(__file__).resolve().parents[2]
SECRET = bytes.fromhex("00112233445566778899aabbccddeeff")
ALICE = bytes.fromhex("a11ce000000000000000000000000001")
BOB = bytes.fromhex("b0b00000000000000000000000000002")
CAROL = bytes.fromhex("ca401000000000000000000000000003")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def user_toml(name: str, secret: bytes, **limits: object) -> str:
    lines = ["[[users]]", f'name = "{name}"', f'secret = "{secret.hex()}"']
    for key, value in limits.items():
        lines.append(f"{key} = {value!r}" if not isinstance(value, str) else f'{key} = "{value}"')
    return "\n".join(lines) + "\n"


class ProxyProc:
    """One proxy process (a supervisor with ``workers > 1``)."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path, stats_port: int) -> None:
        self.proc = proc
        self.log_path = log
        self.stats_port = stats_port
        self.port = 0
        self.links: list[str] = []

    @classmethod
    async def start(
        cls,
        tmp: Path,
        *args: str,
        config: str | None = None,
        dc_port: int | None = None,
        listen: str = "127.0.0.1:0",
        secret: bool = True,
        stats_host: str = "127.0.0.1",
        ready_timeout: float = 30.0,
        nofile: tuple[int, int] | None = None,
    ) -> ProxyProc:
        """``nofile``: the (soft, hard) descriptor limit the proxy starts with."""
        stats_port = free_port()
        cmd = [sys.executable, "-m", "mtproxy", "run", "--listen", listen,
               "--stats", f"{stats_host}:{stats_port}", "--mask", "off",
               "--public-host", "127.0.0.1", "--data-dir", str(tmp / "data"),
               "--log-level", "debug", "--shutdown-grace", "1"]  # fmt: skip
        # Every mode, as these tests drive classic and dd clients too (run's default: tls).
        cmd += ["--modes", "classic,secure,tls"]
        if secret:
            cmd += ["--secret", SECRET.hex()]
        if dc_port is not None:
            for dc in (1, 2, 3, 4, 5):
                cmd += ["--dc", f"{dc}=127.0.0.1:{dc_port}"]
        if config is not None:
            path = tmp / "mtproxy.toml"
            path.write_text(config)
            cmd += ["--config", str(path)]
        cmd += list(args)
        log = tmp / f"proxy-{stats_port}.log"
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))

        def limits() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        with open(log, "wb") as err:
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdout=asyncio.subprocess.PIPE, stderr=err, env=env,
                start_new_session=True, preexec_fn=limits,
            )  # fmt: skip
        self = cls(proc, log, stats_port)
        try:
            async with asyncio.timeout(ready_timeout):
                await self._read_links()
                await self.wait_stats()
        except BaseException:
            await self.kill()
            raise
        return self

    async def _read_links(self) -> None:
        assert self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"proxy exited before printing links:\n{self.log()}")
            text = line.decode()
            self.links.append(text)
            match = re.search(r"[?&]port=(\d+)", text)
            if match:
                self.port = int(match.group(1))
                return

    async def wait_stats(self) -> None:
        """Until the stats port answers (with anything: it may refuse us)."""
        while True:
            with contextlib.suppress(OSError, ConnectionError, ValueError):
                await self.get("/stats")
                return
            await asyncio.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def get(
        self, path: str, host: str = "127.0.0.1", source: str | None = None
    ) -> tuple[int, str]:
        local = (source, 0) if source else None
        reader, writer = await asyncio.open_connection(host, self.stats_port, local_addr=local)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        if not head:
            raise ConnectionError("empty stats reply")
        status = int(head.split()[1])
        return status, body.decode()

    async def stats(self) -> dict[str, str]:
        status, body = await self.get("/stats")
        if status != 200:
            raise ValueError(f"/stats answered {status}")
        out: dict[str, str] = {}
        for line in body.splitlines():
            key, _, value = line.partition("\t")
            out[key] = value
        return out

    async def stat(self, key: str) -> int:
        return int((await self.stats()).get(key, "0") or 0)

    async def wait_stat(self, key: str, want: int, timeout: float = 10.0) -> None:
        """Until the integer stat ``key`` equals ``want``."""
        try:
            async with asyncio.timeout(timeout):
                while await self.stat(key) != want:
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"{key} never became {want}: {await self.stats()}") from None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 20.0) -> int:
        async with asyncio.timeout(timeout):
            return await self.proc.wait()

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.signal(signal.SIGTERM)
        try:
            return await self.wait()
        finally:
            await self.kill()

    async def kill(self) -> None:
        """Kill the process group: the proxy and any worker it may have left behind."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        await self.proc.wait()


async def connect(
    proxy: ProxyProc, secret: bytes = SECRET, *, dc: int = 2, header: bytes | None = None,
    prefix: bytes = b"", host: str = "127.0.0.1",
) -> ObfsStream:
    """A classic client through the proxy (``prefix``: raw bytes first, e.g. a PROXY header)."""
    stream = await open_obfs2(
        host, proxy.port, secret, TAG_INTERMEDIATE, dc, header=header, coalesce_header=True
    )
    if prefix:
        stream.writer.write(prefix)
    stream.flush_pending()
    await stream.drain()
    return stream


async def echo_ok(stream: ObfsStream, payload: bytes = b"ping", timeout: float = 10.0) -> bool:
    """One packet out and back through an echoing FakeDC."""
    stream.send_packet(payload)
    await stream.drain()
    try:
        return await asyncio.wait_for(stream.recv_packet(), timeout) == payload
    except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
        return False


async def closed_by_proxy(stream: ObfsStream, timeout: float = 10.0) -> bool:
    """True once the proxy has closed the connection (EOF or reset)."""
    try:
        async with asyncio.timeout(timeout):
            while await stream.read(65536):
                pass
        return True
    except (ConnectionError, OSError):
        return True
    except TimeoutError:
        return False
