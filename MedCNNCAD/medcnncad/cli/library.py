"""``medcnncad library build | add | query``: the similar-case library (docs/retrieval.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from medcnncad.cli.options import add, positive_int
from medcnncad.errors import InputError
from medcnncad.io.json_files import read_json_object
from medcnncad.models.registry import describe_model
from medcnncad.pipeline.library import build_library
from medcnncad.retrieval.library import DEFAULT_FEATURES, FEATURES, Library, Neighbour

__all__ = ["add_parsers", "parse_metadata", "query_library"]


def parse_metadata(items: list[str] | None) -> dict[str, str]:
    """``--meta KEY=VALUE`` options as a dict (InputError naming a malformed one)."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--meta {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def _read_report(case: str) -> dict:
    path = Path(case) / "report.json"
    if not path.is_file():
        raise InputError(f"{case}: not a case output folder (no report.json)")
    return read_json_object(path, "a MedCNNCAD case report.json")


def run_build(args: argparse.Namespace) -> int:
    manifest = describe_model(args.model)
    library = build_library(args.cases, args.out, args.model, device=args.device, scheduler=args.scheduler,
                            workers=args.workers, serial=args.serial, channels=manifest.input_names,
                            with_images=args.with_images)
    print(f"library {args.out}: {len(library.entries)} case(s), {len(library.lesions)} lesion(s), model "
          f"{library.model['id']} {library.model['version']}")
    return 0


def run_add(args: argparse.Namespace) -> int:
    library = Library.open(args.library)
    case_id = args.case_id or Path(args.case).resolve().name
    count = library.add_case(args.case, case_id, parse_metadata(args.meta), args.view_image)
    print(f"added {case_id} ({count} lesion(s)); the library holds {len(library.entries)} case(s), "
          f"{len(library.lesions)} lesion(s)")
    return 0


def query_library(library: Library, report: dict, k: int, where: str, exclude: str | None = None,
                  lesion: int | None = None, features: str = DEFAULT_FEATURES,
                  lesions: bool = False) -> list[Neighbour]:
    """``library.query``: the ``k`` nearest library cases, one row each (``lesions``: the ``k`` nearest lesions,
    several possibly of one case); ``exclude`` must be a case of the library (InputError naming it). A neighbour at
    distance 0 (the query lesion's exact descriptors: most likely the query case itself, in the library) gets a
    note on stderr saying how to leave it out."""
    if exclude and not any(entry["case_id"] == exclude for entry in library.entries):
        raise InputError(f"--exclude {exclude}: no such case in the library {library.root}")
    neighbours = library.query(report, k, lesion, features, where=where, exclude_case=exclude,
                               distinct_cases=not lesions)
    same = sorted({n.lesion.case_id for n in neighbours if n.distance == 0.0})
    if same:
        print(f"medcnncad: note: library case(s) {', '.join(same)} hold this lesion's exact descriptors "
              f"(distance 0): most likely {where} itself; --exclude CASE_ID leaves a case out", file=sys.stderr)
    return neighbours


def run_query(args: argparse.Namespace) -> int:
    library = Library.open(args.library)
    report = _read_report(args.case)
    neighbours = query_library(library, report, args.k, str(args.case), args.exclude, args.lesion, args.features,
                               args.lesions)
    if args.json:
        print(json.dumps([n.to_json() for n in neighbours], indent=2))
        return 0
    keys = sorted({k for n in neighbours for k in n.lesion.metadata})
    print("\t".join(["rank", "distance", "case_id", "lesion", "volume_ml", *keys, "thumbnail", "note"]))
    for n in neighbours:
        les = n.lesion
        print("\t".join([str(n.rank), f"{n.distance:.3f}", les.case_id, str(les.lesion_id), f"{les.volume_ml:.2f}",
                         *(les.metadata.get(k, "") for k in keys), str(les.thumbnail or ""), n.inputs_note or ""]))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``library`` with its ``build``, ``add`` and ``query`` commands."""
    p = sub.add_parser("library", help="similar-case library: build from a CSV, add a case, query with a case")
    lsub = p.add_subparsers(dest="action", required=True)

    b = lsub.add_parser("build", help="build a library from a CSV (segmenting cases without a result folder)")
    b.add_argument("--cases", required=True, help="CSV: case_id, result (case output folder) or the model's "
                                                  "channel columns, and metadata columns (diagnosis, grade, ...)")
    add(b, "out", "model", "device", out={"help": "the new library folder"})
    b.add_argument("--scheduler", help="dask scheduler address (tcp://host:port); default a local cluster")
    add(b, "workers", workers={"help": "processes of the local cluster"})
    b.add_argument("--serial", action="store_true", help="segment in this process, without dask")
    b.add_argument("--with-images", action="store_true",
                   help="store each case's view image (view_image column, else its first channel) and segmentation, "
                        "so that Slicer can show a similar case beside the current one (pixel data, no tags)")
    b.set_defaults(func=run_build)

    a = lsub.add_parser("add", help="add one segmented case (its output folder) to a library")
    a.add_argument("--library", required=True, help="the library folder")
    a.add_argument("--case", required=True, help="case output folder (report.json with retrieval descriptors)")
    a.add_argument("--case-id", help="the case's name in the library (default: the folder's name)")
    a.add_argument("--meta", action="append", metavar="KEY=VALUE", help="metadata (repeatable), e.g. grade=HGG")
    a.add_argument("--view-image", help="one of the case's input volumes (file or DICOM folder), stored with its "
                                        "segmentation so that Slicer can show the case (pixel data, no tags)")
    a.set_defaults(func=run_add)

    q = lsub.add_parser("query", help="the k library cases most similar to a case's lesion")
    q.add_argument("--library", required=True, help="the library folder")
    q.add_argument("--case", required=True, help="case output folder (report.json with retrieval descriptors)")
    q.add_argument("-k", type=positive_int, default=5, help="results: library cases, one row each (default 5)")
    add(q, "lesions")
    q.add_argument("--lesion", type=positive_int, help="the query lesion's id (default: the case's largest)")
    q.add_argument("--features", choices=FEATURES, default=DEFAULT_FEATURES,
                   help=f"descriptor used (default {DEFAULT_FEATURES})")
    q.add_argument("--exclude", help="leave this library case out (the query case itself)")
    add(q, "json")
    q.set_defaults(func=run_query)

