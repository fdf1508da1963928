"""``medcnncad batch`` (a cohort from a CSV, on Dask) and ``medcnncad report`` (HTML/PDF of a case or cohort)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medcnncad.cli.library import query_library
from medcnncad.cli.options import add, positive_int
from medcnncad.errors import InputError
from medcnncad.io.json_files import read_json_object
from medcnncad.models.registry import describe_model
from medcnncad.pipeline.cohort import read_cases, read_csv_rows, run_cohort, summary_markdown
from medcnncad.pipeline.library import add_cohort, read_library_csv
from medcnncad.reporting.html import Screenshots, case_report, cohort_report, html_to_pdf
from medcnncad.retrieval.library import Library

__all__ = ["add_parsers"]


def _screenshots() -> Screenshots | None:
    """Slicer slice views for HTML reports when ``slicer-core`` is installed (None: the overlay only).

    Imported here, lazily, because ``slicer-core`` is optional outside Slicer and costs ~1 s to import.
    """
    try:
        from medcnncad.slicer.screenshots import case_screenshots
    except ImportError:
        return None
    return case_screenshots


def _labels_from_cohort_csv(folder: Path) -> dict[str, int | None]:
    """Case id -> the 0/1 label of ``folder``'s cohort.csv (None where blank); an unreadable file or a label that is
    not 0 or 1 is an InputError naming the file and line."""
    path = folder / "cohort.csv"
    labels: dict[str, int | None] = {}
    for line, row in read_csv_rows(path):
        value = (row.get("label") or "").strip()
        if value not in ("", "0", "1") or "case_id" not in row:
            raise InputError(f"{path}: line {line}: expected a case_id and a label 0, 1 or blank, got label {value!r}")
        labels[row["case_id"]] = int(value) if value else None
    return labels


def run_batch(args: argparse.Namespace) -> int:
    manifest = describe_model(args.model)
    cases = read_cases(args.cases, manifest.input_names)
    if args.library and Path(args.library).exists() and not Path(args.library).is_dir():  # before the cohort runs
        raise InputError(f"--library {args.library}: a file, not a library folder")
    summary = run_cohort(cases, args.model, args.out, device=args.device, scheduler=args.scheduler,
                         workers=args.workers, serial=args.serial, dicom_seg=args.dicom_seg, dicom_sr=args.dicom_sr,
                         precision=args.precision)
    if args.report:
        for case in cases:
            if (Path(args.out) / "cases" / case.case_id / "report.json").is_file():
                case_report(Path(args.out) / "cases" / case.case_id, _screenshots())
        print(cohort_report(args.out, {c.case_id: c.label for c in cases}))
    if args.library:
        rows = read_library_csv(args.cases, manifest.input_names)
        library = add_cohort(args.library, rows, {c.case_id: Path(args.out) / "cases" / c.case_id for c in cases})
        print(f"library {args.library}: {len(library.entries)} case(s), {len(library.lesions)} lesion(s)")
    print(summary_markdown(summary))
    print(f"per-case outputs in {Path(args.out) / 'cases'}; cohort.csv, failures.csv, summary.json, summary.md "
          f"in {args.out}")
    if cases and not summary["completed"]:  # every case failed: not a success
        print(f"medcnncad: error: no case completed ({len(summary.get('failed_cases', []))} failed; the reasons are "
              f"in {Path(args.out) / 'failures.csv'})", file=sys.stderr)
        return 2
    return 0


def run_report(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    if (folder / "summary.json").is_file():
        path = cohort_report(folder, _labels_from_cohort_csv(folder))
    elif (folder / "report.json").is_file():
        similar = None
        if args.library:
            report = read_json_object(folder / "report.json", "a MedCNNCAD case report.json", ("model",))
            similar = [n.to_json() for n in query_library(Library.open(args.library), report, args.k, str(folder),
                                                       args.exclude, lesions=args.lesions)]
        path = case_report(folder, _screenshots(), similar)
    else:
        raise InputError(f"{folder}: neither a case folder (report.json) nor a cohort folder (summary.json)")
    print(path)
    if args.pdf:
        print(html_to_pdf(path))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``batch`` and ``report``."""
    p = sub.add_parser("batch", help="segment and evaluate a cohort from a CSV (resumable, on dask)")
    p.add_argument("--cases", required=True, help="CSV: case_id, one column per channel, [reference], [label]")
    add(p, "out", "model", "device", "precision")
    p.add_argument("--scheduler", help="dask scheduler address (tcp://host:port); default a local cluster")
    add(p, "workers", workers={"help": "processes of the local cluster"})
    p.add_argument("--serial", action="store_true", help="run in this process, without dask")
    p.add_argument("--report", action="store_true", help="also write HTML reports per case and for the cohort")
    p.add_argument("--dicom-seg", action="store_true", help="also a DICOM SEG per case (DICOM inputs)")
    p.add_argument("--dicom-sr", action="store_true",
                   help="also each SEG segment's measurements as a DICOM SR (TID 1500) per case (DICOM inputs)")
    p.add_argument("--library", help="then add every segmented case (descriptors, thumbnails, the CSV's other "
                                     "columns as metadata) to this similar-case library (created when absent)")
    p.set_defaults(func=run_batch)

    p = sub.add_parser("report", help="HTML report (and --pdf) of a case or cohort output folder")
    p.add_argument("folder")
    p.add_argument("--pdf", action="store_true", help="also print it to PDF with headless Chromium")
    p.add_argument("--library", help="a case's report: add its k most similar library cases (thumbnails, metadata)")
    p.add_argument("-k", type=positive_int, default=3, help="similar cases shown with --library, one row per library "
                                                           "case (default 3)")
    add(p, "lesions")
    p.add_argument("--exclude", metavar="CASE_ID", help="with --library: leave this library case out (the case itself, "
                                                        "when it is in the library)")
    p.set_defaults(func=run_report)
