"""``medcnncad`` command line: the entry point, the command table and the one-line error contract.

Stable syntax (scripts and docs rely on it)::

    medcnncad demo [--out DIR]
    medcnncad segment --model ID_OR_PATH --input NAME=PATH [--input NAME=PATH ...] --out DIR
                      [--device auto|cpu|cuda] [--trust] [--reference PATH]
                      [--series NAME=UID_OR_DESCRIPTION ...] [--dicom-seg]
    medcnncad evaluate --pred PATH --ref PATH [--json] [--model ID_OR_PATH]
    medcnncad phantom --out DIR [--seed N]
    medcnncad train segmentation --template MANIFEST --out DIR [...]
    medcnncad batch --cases cases.csv --out DIR [--model ID] [--scheduler tcp://host:port] [--serial] [--report]
    medcnncad report FOLDER [--pdf]
    medcnncad evaluate-phantoms [--model ID] [--n 20] [--json]
    medcnncad models
    medcnncad trust BUNDLE_FOLDER
    medcnncad library build --cases cases.csv --out LIB [--model ID] [--serial]
    medcnncad library add --library LIB --case RESULT_DIR [--case-id ID] [--meta KEY=VALUE ...]
    medcnncad library query --library LIB --case RESULT_DIR [-k 5] [--lesion N] [--features combined] [--json]

Each command group is a module of this package (``case``, ``evaluate``, ``cohort``, ``data``,
``models``, ``train``) with ``add_parsers(subparsers)``; shared options come from
:mod:`medcnncad.cli.options`. Only the module of the command being run is imported (lazily, by
:data:`COMMANDS`), so ``medcnncad --help`` and light commands do not pay for torch (~2 s).
Bad input exits with code 2 and one line naming the file and the problem.
"""

from __future__ import annotations

import argparse
import importlib
import re
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path

from medcnncad import INTENDED_USE, __version__
from medcnncad.cli.options import OneLineParser
from medcnncad.errors import MedCNNCADError
from medcnncad.inference.freed_memory import keep_freed_memory

__all__ = ["main", "process_main", "build_parser", "COMMANDS", "CASE_COMMANDS"]

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("case", "segment a held-out phantom case and evaluate it against its ground truth"),
    "segment": ("case", "segment one case"),
    "evaluate": ("evaluate", "metrics between a predicted and a reference label map"),
    "phantom": ("data", "write one synthetic BraTS-like case with its label map"),
    "batch": ("cohort", "segment and evaluate a cohort from a CSV (resumable, on dask)"),
    "report": ("cohort", "HTML report (and --pdf) of a case or cohort output folder"),
    "evaluate-phantoms": ("evaluate", "evaluate a model on held-out phantoms (never trained on)"),
    "evaluate-real": ("evaluate", "run the full chain on real patients' scans and score it against their references"),
    "compare-real": ("evaluate", "two evaluate-real reports row by row: change of WT Dice with an interval"),
    "sample-data": ("data", "write the compact sample case registered with Slicer's Sample Data"),
    "models": ("models", "list installed models"),
    "trust": ("models", "trust a MONAI bundle (by the hash of its configs and weights)"),
    "train": ("train", "train a model"),
    "calibrate-case": ("evaluate", "fit Platt scaling of a model's case abnormality probability"),
    "calibrate-classifier": ("train", "refit a lesion grade classifier's temperature and operating point"),
    "evaluate-classifier": ("train", "AUC, operating point, Brier, ECE of a lesion grade classifier"),
    "evaluate-retrieval": ("evaluate", "similar-case retrieval quality (precision@k, mAP@k), phantoms and real cases"),
    "library": ("library", "similar-case library: build from a CSV, add a case, query with a case"),
}
"""Command -> (module of :mod:`medcnncad.cli` that defines it, one-line help)."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser. ``command=None``: every command fully defined; a command's name: only its module
    is imported and its commands fully defined (the others are listed with their help line); any other
    text (e.g. ``""``): every command listed with its help line only."""
    parser = OneLineParser(prog="medcnncad", description=f"MedCNNCAD {__version__}. {INTENDED_USE}")
    parser.add_argument("--version", action="version", version=f"medcnncad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    if command is None:
        wanted = {module for module, _ in COMMANDS.values()}
    else:
        wanted = {COMMANDS[command][0]} if command in COMMANDS else set()
    for module in sorted(wanted):
        importlib.import_module(f"medcnncad.cli.{module}").add_parsers(sub)
    for name, (module, help_text) in COMMANDS.items():
        if module not in wanted:
            sub.add_parser(name, help=help_text)
    return parser


def _one_line(text: str) -> str:
    """Messages from libraries may hold newlines and terminal colour codes: one plain line."""
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _command_of(argv: Sequence[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


CASE_COMMANDS = frozenset({"demo", "segment", "batch", "evaluate-phantoms", "evaluate-real", "calibrate-case",
                           "evaluate-retrieval", "library"})
"""Commands that run the segmentation network on cases: as their own process they keep the memory a case frees."""


def process_main(argv: Sequence[str] | None = None) -> int:
    """The command line as a process of its own (the ``medcnncad`` script, ``python -m medcnncad``): for a
    :data:`CASE_COMMANDS` command the memory a case frees stays in the process for the next allocation
    (:func:`~medcnncad.inference.freed_memory.keep_freed_memory`), then :func:`main`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if _command_of(argv) in CASE_COMMANDS:
        keep_freed_memory()
    return main(argv)


def interrupted_message(command: str | None) -> str:
    """What an interrupted command leaves: a training run keeps its last finished epoch's checkpoint (to resume);
    every other command's outputs appear all at once at its end, so none were kept."""
    if command == "train":
        return ("medcnncad: interrupted; the --out folder keeps the last finished epoch's checkpoint: the same "
                "command with --resume continues from it")
    return "medcnncad: interrupted; no partial outputs were kept"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad input, 130 when interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(_command_of(argv) or "").parse_args(argv)  # imports the command's modules (torch)
    except SystemExit as exc:  # --help, --version, or a usage error (already printed as one line)
        return int(exc.code or 0)
    except KeyboardInterrupt:  # Ctrl-C while the command's modules load: nothing has run yet
        print("medcnncad: interrupted before the command started; nothing was written", file=sys.stderr)
        return 130
    args.argv = argv
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None  # SIGTERM = Ctrl-C
    try:
        return int(args.func(args))
    except MedCNNCADError as exc:
        print(f"medcnncad: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = exc.filename or ""
        print(f"medcnncad: error: {where}: {_one_line(exc.strerror or str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted_message(_command_of(argv)), file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug: one line for the user, the traceback in a log
        log = Path(tempfile.gettempdir()) / "medcnncad-error.log"
        log.write_text(traceback.format_exc())
        print(f"medcnncad: internal error: {type(exc).__name__}: {_one_line(str(exc))[:300]} "
              f"(please report it with {log})", file=sys.stderr)
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(process_main())
