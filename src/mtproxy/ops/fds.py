"""File descriptors as a budget: the limit raised at start, and the clients it allows.

Every socket is a descriptor, and a process has ``RLIMIT_NOFILE`` of them. Many
systems start services with a soft limit of 1024 and a much higher hard limit; the
soft one may be raised up to the hard one by the process itself, so
:func:`raise_limit` does that first thing.

What a client costs (:func:`plan`):

- direct mode: 2 descriptors, its socket and its connection to the DC;
- middle-proxy mode: 1, its socket (the connections to the middle-proxies are shared
  and reserved for separately); a client being masked or mirrored holds a
  connection to the mask host too, so a quarter more is kept for those when a mask
  host is configured.

Kept aside before clients get any (:data:`RESERVE` plus what is open when the budget
is made: listening sockets, the event loop's own, logs, the control channel and
replay region of a worker): stats and API requests, name lookups, state files, the
one a refused client needs for the moment it takes to close it, and connections
that take a few seconds to close after their session ended.

Workers share nothing but the listening sockets, so each has the whole budget.
"""

from __future__ import annotations

import errno
import os
import resource
from dataclasses import dataclass
from pathlib import Path

#: Descriptors kept for everything that is not a client (see the module docstring).
RESERVE = 64
#: Middle-proxy connections per address when neither the list nor the settings say.
MIDDLE_LINKS_PER_TARGET = 8
#: Where Linux keeps the most a hard limit may be raised to (by root).
NR_OPEN = Path("/proc/sys/fs/nr_open")


@dataclass(frozen=True)
class Raised:
    """What :func:`raise_limit` found and did."""

    before: int
    soft: int
    hard: int
    #: Why the soft limit could not go all the way up (None: it did, or had no need to).
    problem: str | None = None


def raise_limit() -> Raised:
    """Raise the soft descriptor limit to the hard one (to ``nr_open`` when the hard
    one is unlimited). Never fails: a refusal is reported in ``problem``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else _nr_open()
    if soft != resource.RLIM_INFINITY and soft >= target:
        return Raised(soft, soft, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        return Raised(soft, soft, hard, str(exc))
    return Raised(soft, target, hard)


def _nr_open() -> int:
    try:
        return int(NR_OPEN.read_text())
    except (OSError, ValueError):
        return 1 << 20


def soft_limit() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if soft != resource.RLIM_INFINITY else _nr_open()


def open_fds() -> int:
    """Descriptors this process has open now (from /proc; -1 where there is none).

    Out of descriptors, the listing itself cannot be opened: then it is the limit."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the listing's own
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return soft_limit()
        return -1


@dataclass(frozen=True)
class Budget:
    """How a descriptor limit is shared out (see the module docstring)."""

    limit: int
    #: Kept for what is not a client.
    reserve: int
    #: Descriptors per client, in quarters (2.0 -> 8, 1.25 -> 5).
    quarters: int

    @property
    def per_client(self) -> float:
        return self.quarters / 4

    @property
    def clients(self) -> int:
        """Clients that fit (the default ``--max-connections`` per worker)."""
        return max(0, self.limit - self.reserve) * 4 // self.quarters

    def needs(self, clients: int) -> int:
        """The limit ``clients`` connections need."""
        return self.reserve + -(-clients * self.quarters // 4)

    def describe(self) -> str:
        each = f"{self.per_client:g} descriptor" + ("" if self.quarters == 4 else "s")
        return (f"{each} per client, {self.reserve} kept for listeners, stats, logs and "
                "connections still shutting down")  # fmt: skip


def plan(
    limit: int,
    *,
    middle: bool,
    mask: bool,
    links: int = 0,
    in_use: int = 0,
) -> Budget:
    """The budget for a process with ``limit`` descriptors, ``in_use`` already open
    and ``links`` shared middle-proxy connections to come."""
    quarters = (5 if mask else 4) if middle else 8
    return Budget(limit, RESERVE + max(0, in_use) + max(0, links), quarters)


def middle_links(targets: int, per_target: int | None) -> int:
    """Connections the middle-proxy pools may open (``per_target``: the setting)."""
    return max(1, targets) * (per_target or MIDDLE_LINKS_PER_TARGET)
