"""``deepfm`` entry point: sub-command dispatch and one-line error reporting.

Errors the user can cause (:class:`deepfm.errors.DeepFMError`) print ``error: ...`` and exit
with status 2, without a traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import signal
import sys
import threading
import traceback
from collections.abc import Sequence

from deepfm.errors import DeepFMError, brief
from deepfm.version import __version__

# One module per command in deepfm.cli, each with ``add_parser(subparsers)``; listed in help order.
COMMANDS = (
    "prepare",
    "train",
    "compare",
    "tune",
    "predict",
    "evaluate",
    "recommend",
    "export",
    "serve",
    "datasets",
    "cache",
    "models",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepfm",
        description="Train, evaluate and use DeepFM / FM click-through-rate models.",
        epilog="Run 'deepfm COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"deepfm {__version__}")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        if importlib.util.find_spec(f"deepfm.cli.{name}") is not None:
            importlib.import_module(f"deepfm.cli.{name}").add_parser(sub)
    for command in sub.choices.values():  # accepted anywhere on the line (main() takes it out first)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


DEBUG_HELP = "on an error, print the full traceback as well as the one-line message"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    parser = build_parser()
    args = parser.parse_args(argv)
    _exit_on_sigterm()
    try:
        return int(args.run(args) or 0)
    except DeepFMError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the environment (a full disk, a read-only folder): one line too
        if debug:
            traceback.print_exc()
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or brief(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _exit_on_sigterm() -> None:
    """SIGTERM raises ``SystemExit(143)``, so ``finally`` blocks remove temporary files on exit."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:

        def terminate(signum: int, frame: object) -> None:
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, terminate)
