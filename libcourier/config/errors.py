"""The one error a bad configuration raises: it carries file:line for the admin."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration problem, printed as ``file:line: what is wrong``."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.message = message
        self.path = path
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.path is None:
            return self.message
        if self.line is None:
            return f"{self.path}: {self.message}"
        return f"{self.path}:{self.line}: {self.message}"
