"""``medcnncad demo`` and ``medcnncad segment``: one case, read -> segment -> classify -> evaluate -> write."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from medcnncad.cli.options import DEMO_SEED, add, classifier_or_none
from medcnncad.cli.progress import TqdmProgress
from medcnncad.data.phantom import make_phantom, preset, write_phantom
from medcnncad.errors import InputError, MedCNNCADError
from medcnncad.inference.machine_policy import build_segmenter
from medcnncad.io.images import signals_deferred
from medcnncad.metrics.label_conventions import parse_label_map
from medcnncad.models.defaults import DEFAULT_GRADE_CLASSIFIER, DEFAULT_MODEL, DEMO_MODEL
from medcnncad.models.grade_classifier import load_classifier
from medcnncad.models.registry import find_model, load_model
from medcnncad.pipeline.case import process_case
from medcnncad.reporting.case_outputs import report_text, summary_table

__all__ = ["add_parsers", "parse_pairs"]


def parse_pairs(items: Sequence[str], option: str = "--input", form: str = "NAME=PATH") -> dict[str, str]:
    """``NAME=VALUE`` option values as a dict; a malformed or repeated one is an InputError naming it."""
    pairs: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise InputError(f"{option} {item!r}: expected {form}, e.g. T1c=case/t1c.nii.gz")
        if name in pairs:
            raise InputError(f"{option} {name}: given twice")
        pairs[name] = value
    return pairs


def parse_inputs(items: Sequence[str], series_items: Sequence[str] = ()) -> tuple[dict[str, str], dict[str, str]]:
    """``--input`` and ``--series`` values as (channel -> path, channel -> selector).

    ``--input FLAIR,T1,T1c,T2=FILE`` names the volumes of a 4D file in order: each channel gets the file and its
    0-based volume index as selector. A channel named twice, or given a selector both ways, is an InputError.
    """
    inputs: dict[str, str] = {}
    stacked: dict[str, str] = {}
    for names, path in parse_pairs(items).items():
        channels = [name.strip() for name in names.split(",")]
        if len(channels) > 1 and (not all(channels) or len(set(channels)) < len(channels)):
            raise InputError(f"--input {names}={path}: expected distinct channel names, e.g. FLAIR,T1,T1c,T2=FILE")
        if len(channels) > 1 and Path(path).is_dir():
            raise InputError(f"--input {names}={path}: several channels name the volumes of one 4D file, not a "
                             "folder")
        for index, channel in enumerate(channels):
            if channel in inputs:
                raise InputError(f"--input {channel}: given twice")
            inputs[channel] = path
            if len(channels) > 1:
                stacked[channel] = str(index)
    series = parse_pairs(series_items, "--series", "NAME=UID_OR_DESCRIPTION")
    both = sorted(set(series) & set(stacked))
    if both:
        raise InputError(f"--series {both}: their volumes are already named by --input's order")
    return inputs, {**series, **stacked}


def _run_case(model_id: str, inputs: dict[str, str], out: str | Path, device: str, trust: bool,
              reference: str | None, series: dict[str, str] | None = None, dicom_seg: bool = False,
              classifier: str | None = None, tta: bool | None = None, precision: str | None = None,
              dicom_sr: bool = False, reference_labels: dict[int, int] | None = None,
              brain_mask: str | None = None, brain_mask_from: str | None = None) -> dict:
    """Load the model(s), then segment (+ classify, + evaluate) one case and write its outputs."""
    t0 = time.perf_counter()
    segmenter = build_segmenter(load_model(model_id, trust=trust), device, precision)
    loaded_classifier = load_classifier(classifier) if classifier else None
    progress = TqdmProgress()
    try:
        return process_case(segmenter, inputs, out, reference, series, dicom_seg, progress,
                            {"model_load": time.perf_counter() - t0}, loaded_classifier, tta, dicom_sr,
                            reference_labels=reference_labels, brain_mask=brain_mask,
                            brain_mask_from=brain_mask_from)
    finally:
        progress.close()


def _default_classifier(requested: str | None) -> str | None:
    """The demo classifies lesions with the shipped grade classifier unless told otherwise ("none")."""
    if requested:
        return classifier_or_none(requested)
    try:
        find_model(DEFAULT_GRADE_CLASSIFIER)
    except MedCNNCADError:
        return None
    return DEFAULT_GRADE_CLASSIFIER


def run_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    t0 = time.perf_counter()
    model = args.model or (DEMO_MODEL if args.preset == "classic" else DEFAULT_MODEL)
    case = make_phantom(args.seed, preset(args.preset))
    with tempfile.TemporaryDirectory(prefix="medcnncad-demo-") as staging:
        paths = write_phantom(case, staging)
        print(f"{args.preset} phantom case seed {args.seed} (held out from training) made in "
              f"{time.perf_counter() - t0:.1f} s; model {model}", file=sys.stderr)
        inputs = {name: str(paths[name]) for name in case.images}
        report = _run_case(model, inputs, out, args.device, False, str(paths["label"]),
                           classifier=_default_classifier(args.grade_classifier), tta=args.tta,
                           precision=args.precision)
        final = {name: out / "inputs" / path.name for name, path in paths.items()}
        report["inputs"] = {name: str(final[name].resolve()) for name in inputs}  # the copies: same SHA-256
        report["reference"] = str(final["label"].resolve())
        report["phantom"] = {"preset": args.preset, "seed": args.seed}  # the case is synthetic: say which
        with signals_deferred():  # the input case joins the outputs only when they are complete
            (out / "inputs").mkdir(exist_ok=True)
            for name, path in paths.items():
                shutil.copyfile(path, out / "inputs" / f".{path.name}.tmp")
                os.replace(out / "inputs" / f".{path.name}.tmp", final[name])
            (out / ".report.json.tmp").write_text(report_text(report) + "\n")
            os.replace(out / ".report.json.tmp", out / "report.json")  # paths that outlive the demo
    print(summary_table(report))
    print(f"\noutputs in {out}: labels.nii.gz, labels.seg.nrrd, prob_*.nii.gz, overlay.png, report.json, "
          f"and the input case in {out / 'inputs'}")
    return 0


def run_segment(args: argparse.Namespace) -> int:
    grader = classifier_or_none(args.grade_classifier)
    mapping = parse_label_map(args.reference_labels) if args.reference_labels else None
    if mapping and not args.reference:
        raise InputError("--reference-labels needs --reference (the label file it describes)")
    inputs, series = parse_inputs(args.input, args.series or [])
    report = _run_case(args.model, inputs, args.out, args.device, args.trust, args.reference, series,
                       args.dicom_seg, grader, args.tta, args.precision, args.dicom_sr, mapping,
                       args.brain_mask, args.brain_mask_from)
    print(summary_table(report))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``demo`` and ``segment`` to the command line's subparsers."""
    p = sub.add_parser("demo", help="segment a held-out phantom case and evaluate it against its ground truth")
    add(p, "out", "seed", "model", "device", "classifier", "tta", "preset", "precision",
        out={"required": False, "default": "demo_out"}, seed={"default": DEMO_SEED},
        model={"default": None, "help": f"model id or folder; default {DEMO_MODEL} for the classic preset, else "
                                        f"{DEFAULT_MODEL}"},
        preset={"help": "phantom preset: classic (default, fast), realistic (irregular heterogeneous tumors, "
                         "a scanner model; about 20 s to make), ..."},
        precision={"default": "manifest", "help": "execution precision (default manifest: the model's own, so the "
                                                  "demo's numbers are the documented ones; see segment --help)"})
    p.set_defaults(func=run_demo)

    p = sub.add_parser("segment", help="segment one case")
    add(p, "model", model={"help": f"model id or folder (manifest or MONAI bundle); default {DEFAULT_MODEL}"})
    p.add_argument("--input", action="append", required=True, metavar="NAME=PATH",
                   help="input channel (manifest channel name) and its volume file or DICOM folder; a 4D file's "
                        "volumes are named in order: FLAIR,T1,T1c,T2=FILE (the Decathlon's order)")
    add(p, "out", "device", "trust", "classifier")
    add(p, "precision", "tta")
    p.add_argument("--reference", help="reference label map on the first input's grid, or a DICOM SEG of the same "
                   "frame of reference (rasterised onto that grid; value = segment number): adds metrics")
    add(p, "reference_labels")
    p.add_argument("--series", action="append", metavar="NAME=UID_OR_DESCRIPTION",
                   help="pick the DICOM series of channel NAME in a folder holding several (or, for a 4D file, "
                        "its 0-based volume index)")
    p.add_argument("--dicom-seg", action="store_true",
                   help="also write labels.seg.dcm, a DICOM SEG referencing the first channel's DICOM series")
    p.add_argument("--dicom-sr", action="store_true",
                   help="also write labels.sr.dcm, each SEG segment's volume, number of lesions and mean probability "
                        "as a DICOM SR (TID 1500) referencing the SEG (implies --dicom-seg)")
    mask = p.add_mutually_exclusive_group()
    mask.add_argument("--brain-mask", metavar="FILE",
                      help="your own brain mask (non-zero = brain; a volume file or DICOM folder on the first input's "
                           "grid, e.g. a corrected brain_mask.nii.gz of an earlier run) instead of the model's brain "
                           "extraction; for models whose clinical preprocessing extracts the brain")
    mask.add_argument("--brain-mask-from", metavar="NAME",
                      help="extract the brain (deepbet) from this given sequence instead of the model's choice "
                           "(T1, else T2, FLAIR, T1c), e.g. T1c when the T2's mask takes in the eyes")
    p.set_defaults(func=run_segment)
