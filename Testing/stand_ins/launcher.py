"""Helpers that make the stand-in launcher an executable, as ``WorkerClient(python=...)`` expects."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

LAUNCHER = Path(__file__).with_name("ctk_launcher.py")


def make_launcher(folder: Path) -> str:
    """An executable ``PythonSlicer`` in ``folder`` that runs the stand-in launcher (POSIX only).

    ``exec`` replaces the shell, so the launcher is the client's direct child and the real
    interpreter its grandchild, as in Slicer.
    """
    path = folder / "PythonSlicer"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{LAUNCHER}" "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    assert os.access(path, os.X_OK)
    return str(path)
