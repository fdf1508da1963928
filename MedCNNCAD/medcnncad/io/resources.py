"""Where the shipped resources live: ``Resources/<name>`` of the repository or the installed extension.

From a source checkout that is the repository's top-level ``Resources/``; inside an installed Slicer
extension, ``<module dir>/Resources/`` (the CMake install rule puts ``Models`` and ``SampleData`` there).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["resource_dir"]


def resource_dir(name: str) -> Path | None:
    """The nearest ``Resources/<name>`` folder above this package, or None when there is none."""
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "Resources" / name
        if candidate.is_dir():
            return candidate
    return None
