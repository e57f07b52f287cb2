"""Exception types: every error a user can cause is one of these, with a one-line message."""

from __future__ import annotations

from pathlib import Path


class DeepFMError(Exception):
    """Base class of the errors the command line reports as one line, without a traceback."""


class ConfigError(DeepFMError):
    """An impossible or unknown option; the message says what is allowed."""


class DataError(DeepFMError):
    """Bad input data, located by file, line (1-based) and field where known."""

    def __init__(
        self,
        message: str,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        self.reason = message
        where = []
        if self.path is not None:
            where.append(self.path)
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class DownloadError(DeepFMError):
    """A data set could not be fetched or failed its checksum; says what to do by hand."""


class CheckpointError(DeepFMError):
    """A checkpoint is missing, unreadable or from an incompatible version."""


class NumericalError(DeepFMError):
    """Training diverged (NaN/inf loss or weights); names the epoch and step where it happened."""

    def __init__(self, message: str, epoch: int | None = None, step: int | None = None) -> None:
        self.epoch = epoch
        self.step = step
        super().__init__(message)


def brief(exc: BaseException, limit: int = 160) -> str:
    """The first line of ``exc``'s message, cut to ``limit`` characters (for one-line errors)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
