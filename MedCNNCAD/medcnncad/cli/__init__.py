"""The ``medcnncad`` command line (see :mod:`medcnncad.cli.app` for the commands)."""

from medcnncad.cli.app import build_parser, main

__all__ = ["main", "build_parser"]
