"""The error every ``quotagate`` command reports: a code and a message, printed to stderr as JSON."""

from __future__ import annotations


class CliError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
