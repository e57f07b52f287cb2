"""Reusable fuzzing helpers: every reader must give a correct parse or a DeepFMError, nothing else.

To fuzz a new reader (CSV/TSV, libsvm, spec files, JSON records):

    @fuzz_settings()
    @given(data=delimited_files(fields=[ints(), ints(), words()], sep=b","))
    def test_my_reader_never_crashes(tmp_path, data):
        path = write_bytes(tmp_path, data, "x.csv")
        result, error = parse_or_error(read_my_format, path)
        if error is None:
            ...  # check the parse is right (an oracle, or at least invariants)

``parse_or_error`` fails the test on any exception that is not a :class:`DeepFMError`, on an
error message that is not one line, and on a call that runs longer than ``timeout`` seconds
(a hang). ``delimited_files`` generates well-formed files and then breaks them: random bytes,
cut lines, missing and extra columns, huge and negative numbers, non-UTF-8 bytes, stray
``\\r``/quotes/whitespace, empty and blank-only files. ``FUZZ_EXAMPLES`` (env
``DEEPFM_FUZZ_EXAMPLES``) sets how many examples each fuzz test runs; ``COUNTS`` records how many
actually ran, per test, so a run can report them.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from deepfm.errors import DataError, DeepFMError

FUZZ_EXAMPLES = int(os.environ.get("DEEPFM_FUZZ_EXAMPLES", "300"))
COUNTS: collections.Counter[str] = collections.Counter()
# Bytes that break parsers: non-UTF-8 (latin-1 e, lone continuation, invalid lead, BOM halves),
# NUL, quotes, separators of other formats, a bare CR, unicode digits in UTF-8.
NASTY = [b"\xe9", b"\x80", b"\xff", b"\xfe\xff", b"\x00", b'"', b"'", b"\t", b",", b";", b":", b"\r"]
NASTY += [b" ", b"-", b"+", b".", b"e", b"nan", b"inf", "\u0663".encode(), "\u00b2".encode(), b"\\"]


class Hang(Exception):
    """A reader ran longer than the fuzz timeout."""


def fuzz_settings(examples: int | None = None) -> settings:
    return settings(
        max_examples=examples or FUZZ_EXAMPLES,
        deadline=None,  # a loaded machine is not a bug; hangs are caught by parse_or_error
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        derandomize=False,
    )


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`Hang` in the main thread after ``seconds`` (POSIX interval timer)."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise Hang(f"no result after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def parse_or_error(
    fn: Callable[..., Any], *args: Any, timeout: float = 20.0, name: str | None = None, **kwargs: Any
) -> tuple[Any, DeepFMError | None]:
    """``(result, None)`` or ``(None, error)`` for a :class:`DeepFMError`; anything else fails.

    Checks the error is the one-line kind the command line prints, and, for a :class:`DataError`
    that names a line, that the line number is positive.
    """
    COUNTS[name or getattr(fn, "__qualname__", repr(fn))] += 1
    with time_limit(timeout):
        try:
            return fn(*args, **kwargs), None
        except DeepFMError as exc:
            message = str(exc)
            assert message and "\n" not in message, f"error message is not one line: {message!r}"
            if isinstance(exc, DataError) and exc.line is not None:
                assert exc.line >= 1, message
            return None, exc


def write_bytes(folder: Path, data: bytes, name: str) -> Path:
    """Write ``data`` to ``folder/name`` (overwritten by every example)."""
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- strategies --------------------------------------------------------------------------------
def ints(low: int = 0, high: int = 10**6) -> st.SearchStrategy[bytes]:
    return st.integers(low, high).map(lambda v: str(v).encode())


def words() -> st.SearchStrategy[bytes]:
    return st.text("abcdefgh_|", min_size=1, max_size=8).map(str.encode)


def odd_values() -> st.SearchStrategy[bytes]:
    """Values a field should not hold (or holds only at the edge of what is allowed)."""
    return st.one_of(
        st.sampled_from([b"", b"-1", b"-0", b"+3", b"1.5", b"1e3", b"nan", b"inf", b"0x10", b" 7", b"7 "]),
        st.integers(2**62, 2**200).map(lambda v: str(v).encode()),  # huge ids, past int64
        st.integers(-(2**70), -1).map(lambda v: str(v).encode()),
        st.binary(min_size=1, max_size=6),
        st.text(min_size=1, max_size=4).map(str.encode),  # any unicode, UTF-8 encoded
        st.text(min_size=1, max_size=4).map(lambda t: t.encode("utf-16")),
        st.sampled_from(NASTY),
    )


@st.composite
def delimited_files(
    draw: st.DrawFn,
    fields: list[st.SearchStrategy[bytes]],
    sep: bytes,
    max_rows: int = 12,
    header: bytes | None = None,
) -> bytes:
    """A file of ``sep``-joined rows drawn from ``fields``, then (usually) broken."""
    kind = draw(st.sampled_from(["valid", "mutated", "mutated", "mutated", "random", "empty"]))
    if kind == "random":
        return draw(st.binary(max_size=400))
    if kind == "empty":
        return draw(st.sampled_from([b"", b"\n", b"\n\n\n", b"   \n\t\n", b"\r\n", b"\x00", b"\xef\xbb\xbf"]))
    rows = draw(st.lists(st.tuples(*fields), min_size=1, max_size=max_rows))
    lines = [sep.join(row) for row in rows]
    if kind == "mutated":
        for _ in range(draw(st.integers(1, 3))):
            lines = draw(_mutation(lines, fields, sep))
    newline = draw(st.sampled_from([b"\n", b"\n", b"\r\n"]))
    body = newline.join(lines) + draw(st.sampled_from([newline, b""]))
    if header is not None:
        body = header + newline + body
    if kind == "mutated" and draw(st.booleans()):  # cut the file anywhere (a partial write)
        body = body[: draw(st.integers(0, len(body)))]
    return body


@st.composite
def _mutation(draw: st.DrawFn, lines: list[bytes], fields: list[Any], sep: bytes) -> list[bytes]:
    lines = list(lines)
    i = draw(st.integers(0, len(lines) - 1))
    parts = lines[i].split(sep)
    what = draw(
        st.sampled_from(
            ["cut", "drop_col", "extra_col", "odd_value", "nasty", "blank", "dup_sep", "swap_sep", "join"]
        )
    )
    if what == "cut":
        lines[i] = lines[i][: draw(st.integers(0, max(len(lines[i]) - 1, 0)))]
    elif what == "drop_col" and len(parts) > 1:
        del parts[draw(st.integers(0, len(parts) - 1))]
        lines[i] = sep.join(parts)
    elif what == "extra_col":
        parts.insert(draw(st.integers(0, len(parts))), draw(st.one_of(odd_values(), *fields)))
        lines[i] = sep.join(parts)
    elif what == "odd_value":
        parts[draw(st.integers(0, len(parts) - 1))] = draw(odd_values())
        lines[i] = sep.join(parts)
    elif what == "nasty":
        at = draw(st.integers(0, len(lines[i])))
        lines[i] = lines[i][:at] + draw(st.sampled_from(NASTY)) + lines[i][at:]
    elif what == "blank":
        lines.insert(i, draw(st.sampled_from([b"", b" ", b"\t", b"  \t "])))
    elif what == "dup_sep":
        lines[i] = lines[i].replace(sep, sep + sep, 1)
    elif what == "swap_sep":
        lines[i] = lines[i].replace(sep, draw(st.sampled_from([b",", b"\t", b" ", b";", b":", b"|"])))
    elif what == "join" and i + 1 < len(lines):
        lines[i : i + 2] = [lines[i] + lines[i + 1]]
    return lines
