"""Failures the program expects and reports as one line, never as a traceback."""

from __future__ import annotations


class FatalError(Exception):
    """Start-up cannot go on: printed as ``mtproxy: error: <message>``, exit ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code
