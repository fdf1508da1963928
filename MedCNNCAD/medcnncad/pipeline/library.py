"""Building a similar-case library from a CSV: reuse each case's segmentation or run it (a cohort, on Dask),
then add every case's descriptors, thumbnails and metadata columns (:class:`medcnncad.retrieval.Library`).

CSV columns: ``case_id``; either ``result`` (a case output folder holding report.json, e.g. from
``medcnncad segment`` or ``batch``) or the model's channel columns (a file or DICOM folder each, with
optional ``<channel>_series``, as for ``batch``); every other column (diagnosis, grade, outcome, ...) is
stored as the case's metadata, as given, except ``view_image``: a volume stored with the case so that a viewer
can show it (``build --with-images`` uses it, else the row's first channel). Relative paths are relative to the
CSV.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medcnncad.errors import InputError
from medcnncad.io.json_files import read_json_object
from medcnncad.pipeline.cohort import CohortCase, read_cases, read_csv_rows, run_cohort
from medcnncad.retrieval.library import Library, LibraryError, case_retrieval

__all__ = ["LibraryRow", "read_library_csv", "build_library", "add_cohort"]

_NOT_METADATA = {"case_id", "result", "reference", "view_image"}


@dataclass
class LibraryRow:
    """One CSV row: the case id, its existing result folder (or ``None``: to be segmented), its metadata."""

    case_id: str
    result: Path | None
    metadata: dict[str, str] = field(default_factory=dict)
    view_image: Path | None = None
    """The ``view_image`` column, else the first channel given (used only with ``with_images``)."""


def read_library_csv(csv_path: str | Path, channels: Sequence[str]) -> list[LibraryRow]:
    """Parse the library CSV (errors name the file, line and column).

    Args:
        csv_path: the CSV.
        channels: the model's input channel names (their columns, and ``<channel>_series``, are not metadata).
    """
    csv_path = Path(csv_path)
    rows = read_csv_rows(csv_path, channels)
    columns = set(rows[0][1])
    if "case_id" not in columns or not ({"result", *channels} & columns):
        raise InputError(f"{csv_path}: needs a case_id column and either a result column (case output folders) "
                         f"or the channel columns {list(channels)}")
    skip = _NOT_METADATA | set(channels) | {f"{c}_series" for c in channels}
    out = []
    for line, row in rows:
        case_id = (row.get("case_id") or "").strip()
        result = (row.get("result") or "").strip()
        if not result and not any((row.get(c) or "").strip() for c in channels):
            raise InputError(f"{csv_path}: line {line}: case {case_id!r} has neither a result folder nor any of "
                             f"the channels {list(channels)}")
        metadata = {k: (v or "").strip() for k, v in row.items() if k is not None and k not in skip}
        view = next((v for c in ("view_image", *channels) if (v := (row.get(c) or "").strip())), "")
        out.append(LibraryRow(case_id, (csv_path.parent / result).resolve() if result else None, metadata,
                              (csv_path.parent / view).resolve() if view else None))
    return out


def add_cohort(library_dir: str | Path, rows: Sequence[LibraryRow], results: dict[str, Path],
               with_images: bool = False) -> Library:
    """Add each row's case (its folder in ``results`` by case id, or its own ``result``) to the library at
    ``library_dir``, created from the first case's model when absent. Cases without a report (failed) and
    cases already in the library (a resumed batch: the same id and descriptors) are skipped; another case under an id
    the library holds is a LibraryError naming it; returns the library. ``with_images`` stores
    each row's view image (a row without one is an error naming it)."""
    library_dir = Path(library_dir)
    library = Library.open(library_dir) if (library_dir / "library.json").is_file() else None
    for row in rows:
        folder = row.result or results.get(row.case_id)
        if folder is None or not (folder / "report.json").is_file():
            if row.result is not None:
                raise LibraryError(f"{row.result}: case {row.case_id!r}: not a case output folder (no report.json)")
            continue
        report = read_json_object(folder / "report.json", "a MedCNNCAD case report.json", ("model",))
        if library is not None and library.holds(row.case_id, report, str(folder)):
            continue  # added before (a resumed batch); another case under its id is an error, not skipped
        if library is None:
            library = Library.create(library_dir, report["model"],
                                     case_retrieval(report, str(folder)).get("radiomics_names", []))
        if with_images and row.view_image is None:
            raise LibraryError(f"case {row.case_id!r}: --with-images needs a view_image column or a channel column")
        library.add_case(folder, row.case_id, row.metadata, row.view_image if with_images else None)
    if library is None:
        raise LibraryError(f"{library_dir}: no case could be added (every segmentation failed); see failures.csv")
    return library


def build_library(csv_path: str | Path, out: str | Path, model: str, device: str = "auto",
                  scheduler: str | None = None, workers: int = 2, serial: bool = False,
                  channels: Sequence[str] = (), with_images: bool = False) -> Library:
    """``medcnncad library build``: segment the rows without a result folder (a cohort run into
    ``out/segmentations``, serial or on Dask; descriptors are computed per case inside it), then add every
    case to a new library at ``out``.

    Args:
        csv_path: the library CSV (:func:`read_library_csv`).
        out: the new library folder (must not hold a library yet).
        model: the segmentation model id or folder (rows to segment).
        device, scheduler, workers, serial: as for :func:`medcnncad.pipeline.cohort.run_cohort`.
        channels: the model's input channel names.
        with_images: store each case's view image and segmentation (see :func:`read_library_csv`).
    """
    out = Path(out)
    if (out / "library.json").exists():
        raise LibraryError(f"{out}: already holds a case library (use 'library add')")
    rows = read_library_csv(csv_path, channels)
    ids = [r.case_id for r in rows]
    to_segment: list[CohortCase] = []
    if any(r.result is None for r in rows):
        wanted = {r.case_id for r in rows if r.result is None}
        to_segment = [c for c in read_cases(csv_path, channels) if c.case_id in wanted]
    elif len(set(ids)) != len(ids):
        raise InputError(f"{csv_path}: case ids are repeated")
    results: dict[str, Path] = {}
    if to_segment:
        run_cohort(to_segment, model, out / "segmentations", device=device, scheduler=scheduler, workers=workers,
                   serial=serial)
        results = {c.case_id: out / "segmentations" / "cases" / c.case_id for c in to_segment}
    try:
        return add_cohort(out, rows, results, with_images)
    except BaseException:  # a half-built library would block the rerun ("already holds a case library")
        (out / "library.json").unlink(missing_ok=True)
        shutil.rmtree(out / "entries", ignore_errors=True)  # the segmentations stay: a rerun skips those cases
        raise
