"""The one error type of the load generator, carrying the exit code the CLI returns."""
from __future__ import annotations


class PerfError(Exception):
    """A setup problem (unreachable server, unknown model, bad argument): exit code 2."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
