"""TDLib (the ``tdjson`` package from PyPI) as a real fake-TLS client.

TDLib is the library behind several official Telegram apps. Its ``testProxy`` request
opens a connection through an MTProto proxy exactly as the apps do (for an ``ee`` secret:
TDLib's own ClientHello, its check of the ServerHello's HMAC, TLS records) and sends a
``req_pq_multi`` to the given DC; it reports success once a valid ``resPQ`` came back.
Each call runs in a fresh process, so one test's TDLib state cannot leak into another.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

_CHILD = r"""
import json, sys, time
import tdjson
server, port, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3]
dc_id, timeout = int(sys.argv[4]), float(sys.argv[5])
tdjson.td_execute(json.dumps({"@type": "setLogVerbosityLevel", "new_verbosity_level": 0}).encode())
client = tdjson.td_create_client_id()
request = {"@type": "testProxy", "@extra": "probe", "dc_id": dc_id, "timeout": timeout,
           "proxy": {"@type": "proxy", "server": server, "port": port,
                     "type": {"@type": "proxyTypeMtproto", "secret": secret}}}
tdjson.td_send(client, json.dumps(request).encode())
deadline = time.monotonic() + timeout + 10
while time.monotonic() < deadline:
    raw = tdjson.td_receive(0.5)
    if not raw:
        continue
    event = json.loads(raw)
    if event.get("@extra") == "probe":
        print(json.dumps(event))
        break
else:
    print(json.dumps({"@type": "error", "code": -1, "message": "no answer from TDLib"}))
"""


@dataclass(frozen=True)
class TdResult:
    ok: bool
    message: str


def available() -> bool:
    try:
        import tdjson  # noqa: F401
    except ImportError:
        return False
    return True


def test_proxy(host: str, port: int, secret_hex: str, dc_id: int = 2, timeout: float = 10.0,
               *, command_prefix: tuple[str, ...] = ()) -> TdResult:
    """Run TDLib's testProxy against ``host:port`` with ``secret_hex`` (ee... for fake TLS)."""
    proc = subprocess.run(
        [*command_prefix, sys.executable, "-c", _CHILD, host, str(port), secret_hex, str(dc_id),
         str(timeout)],
        capture_output=True, text=True, timeout=timeout + 30, check=False,
    )  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = proc.stderr[-500:]
        return TdResult(False, f"TDLib printed nothing (exit {proc.returncode}): {tail}")
    event = json.loads(lines[-1])
    if event.get("@type") == "ok":
        return TdResult(True, "ok")
    return TdResult(False, str(event.get("message")))
