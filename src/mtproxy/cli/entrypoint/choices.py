"""The option values a start-up collects, and who wins when several sources set one.

The steps (secrets, downloads, addresses, the plain variables) all write into one
:class:`Choices`. With the official flags the environment fills in over them (the image's
CMD passes the flags as defaults); in ``run`` mode an option or config-file value the
user set is kept and the variable is reported as not used.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mtproxy.cli.entrypoint.contract import flag, say
from mtproxy.cli.entrypoint.flags import Request


class Choices:
    """``mtproxy run`` option values (Option field names) being decided."""

    def __init__(self, req: Request, env: Mapping[str, str]) -> None:
        self.req = req
        self.env = env
        self.options: dict[str, Any] = dict(req.options)
        self.debug = bool(self.var("DEBUG"))
        #: Files to delete when the proxy stops.
        self.temporary: list[Path] = []

    def var(self, name: str) -> str | None:
        """An environment variable; empty counts as unset, as in the official script."""
        value = self.env.get(name, "").strip()
        return value or None

    def given(self, name: str) -> Any:
        """In ``run`` mode: the value the user set by option or config file, else None."""
        if name not in self.req.given:
            return None
        return self.options.get(name, self.req.file_options.get(name))

    def put(self, name: str, value: Any, source: str) -> None:
        """Set an option from the environment unless the user set it in ``run`` mode.

        ``source`` names where the value came from for the note printed when it is not
        used; a source starting with "default" is not worth that note.
        """
        if name in self.req.given:
            if not source.startswith("default"):
                say(f"[*] {source} is not used: {flag(name)} is set.")
            return
        self.options[name] = value
