"""Where ``mtproxy run`` actually listens, recorded in the data directory.

The configured port is not always the bound one: without root the default 443
becomes 8443, and ``--listen HOST:0`` lets the kernel choose. ``run`` (the single
process, or the supervisor) writes the bound addresses to ``listening.json`` once
it accepts clients, atomically; ``mtproxy links`` and ``mtproxy doctor`` read it
instead of guessing. The file stays after the proxy stops: the last bound port is a
better guess than the configured one.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mtproxy.protocol.dc import DcSpecError, Endpoint, format_endpoint, parse_endpoint
from mtproxy.state import StateError, atomic_write

log = logging.getLogger("mtproxy")

BOUND_FILE = "listening.json"


@dataclass(frozen=True)
class Bound:
    """One record: who wrote it, when, and the addresses it listened on."""

    pid: int
    started: float
    listen: tuple[Endpoint, ...]

    @property
    def running(self) -> bool:
        """Whether the process that wrote it still exists (a reused pid can fool this)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def write_bound(data_dir: Path, listen: Sequence[Endpoint]) -> None:
    """Record the bound addresses; a data directory we cannot write only costs a log line."""
    record = {
        "pid": os.getpid(),
        "started": time.time(),
        "listen": [format_endpoint(e) for e in listen],
    }
    try:
        atomic_write(data_dir / BOUND_FILE, (json.dumps(record, indent=1) + "\n").encode(), 0o644)
    except (OSError, StateError) as exc:
        log.warning("cannot record the listening addresses in %s: %s", data_dir, exc)


def read_bound(data_dir: Path) -> Bound | None:
    """The last record, or None when there is none or it does not parse."""
    path = data_dir / BOUND_FILE
    try:
        raw = json.loads(path.read_text())
        listen = tuple(parse_endpoint(str(item), allow_port_zero=False) for item in raw["listen"])
        if not listen:
            return None
        return Bound(int(raw["pid"]), float(raw["started"]), listen)
    except (OSError, ValueError, KeyError, TypeError, DcSpecError):
        return None
