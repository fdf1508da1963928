"""The ``medcnncad`` command line (see :mod:`medcnncad.cli.app` for the commands)."""

from medcnncad.cli.app import build_parser, main, process_main

__all__ = ["main", "process_main", "build_parser"]
