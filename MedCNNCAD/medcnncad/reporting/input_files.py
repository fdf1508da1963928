"""The files a case run read, as its report.json records them, and the check that they are still those files.

A case run records its inputs (``inputs``: channel -> path) and its reference (``reference``) as resolved absolute
paths, and each input file's size and SHA-256 (``input_files``: channel -> ``{"size_bytes", "sha256"}``;
``reference_file`` for the reference); DICOM series folders are named but not checksummed. The HTML report, made
later and from any current folder, shows a file in its Slicer views only when it is there and unchanged
(:func:`unchanged_inputs`): another case's image never appears under this case's labels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["resolved_paths", "file_fingerprint", "input_fingerprints", "unchanged_inputs"]

_CHUNK = 1 << 20


def resolved_paths(paths: Mapping[str, str | Path]) -> dict[str, str]:
    """Channel -> the path resolved to an absolute one (symlinks followed), as report.json records it."""
    return {name: str(Path(path).resolve()) for name, path in paths.items()}


def file_fingerprint(path: str | Path) -> dict[str, Any] | None:
    """``{"size_bytes", "sha256"}`` of a file as it is now; None for a folder (a DICOM series) or a missing path."""
    path = Path(path)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return {"size_bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def input_fingerprints(paths: Mapping[str, str | Path]) -> dict[str, dict[str, Any]]:
    """Channel -> :func:`file_fingerprint` of its file (a file shared by several channels, a 4D file, is read once;
    folders are left out)."""
    by_path: dict[Path, dict[str, Any] | None] = {}
    for path in paths.values():
        resolved = Path(path).resolve()
        if resolved not in by_path:
            by_path[resolved] = file_fingerprint(resolved)
    found = {name: by_path[Path(path).resolve()] for name, path in paths.items()}
    return {name: record for name, record in found.items() if record is not None}


def _problem(path: Any, record: Any, cache: dict[str, dict[str, Any] | None]) -> str | None:
    """Why the file at ``path`` is not the one the run read (None: it is, or it is a folder, left to the caller)."""
    if not isinstance(path, str) or not Path(path).is_absolute():
        return "recorded without its folder (a relative path)"
    if Path(path).is_dir():
        return None
    if not Path(path).is_file():
        return "missing"
    if not isinstance(record, dict) or "sha256" not in record:
        return "recorded without a checksum (run the case again)"
    if path not in cache:
        cache[path] = file_fingerprint(path)
    now = cache[path]
    if now is None or now["size_bytes"] != record.get("size_bytes") or now["sha256"] != record["sha256"]:
        return "changed since the run (size or SHA-256 differ)"
    return None


def unchanged_inputs(report: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A copy of a case's report.json whose ``inputs`` keeps only the files there and unchanged since the run and
    whose ``reference`` is None unless it is; and one note per file left out (``"input T1c
    /data/a/T1c.nii.gz: missing; not shown"``). Folders (DICOM series) are kept as they are."""
    checked = dict(report)
    records = report.get("input_files") or {}
    cache: dict[str, dict[str, Any] | None] = {}
    notes, inputs = [], {}
    for name, path in (report.get("inputs") or {}).items():
        problem = _problem(path, records.get(name), cache)
        if problem is None:
            inputs[name] = path
        else:
            notes.append(f"input {name} {path}: {problem}; not shown")
    checked["inputs"] = inputs
    if report.get("reference"):
        problem = _problem(report["reference"], report.get("reference_file"), cache)
        if problem is not None:
            checked["reference"] = None
            notes.append(f"reference {report['reference']}: {problem}; not shown")
    return checked, notes
