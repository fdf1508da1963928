"""``medcnncad evaluate``, ``evaluate-phantoms`` and ``calibrate-case``: agreement and calibration."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medcnncad.cli.options import add, channel_list, classifier_or_none, non_negative_int
from medcnncad.data.dataset_json import declared_labels, reference_convention
from medcnncad.errors import InputError
from medcnncad.evaluation.phantoms import (
    calibration_helps,
    evaluate_on_phantoms,
    fit_case_calibration,
    format_table,
    write_case_calibration,
)
from medcnncad.evaluation.real import (
    VARIANTS,
    compare_real_reports,
    evaluate_real,
    format_comparison,
    format_real_table,
    read_real_report,
)
from medcnncad.evaluation.retrieval import evaluate_retrieval, format_retrieval_table
from medcnncad.io.images import atomic_path, read_volume
from medcnncad.metrics.label_conventions import check_reference_values, parse_label_map, relabel
from medcnncad.metrics.segmentation import check_label_image, compute_metrics, structures_for_labels
from medcnncad.models.registry import describe_segmentation_model, find_model
from medcnncad.reporting.case_outputs import json_safe

__all__ = ["add_parsers"]


def run_evaluate(args: argparse.Namespace) -> int:
    ref_img = read_volume(args.ref)
    pred_img = read_volume(args.pred)
    ref = check_label_image(ref_img, args.ref)
    pred = check_label_image(pred_img, args.pred, ref_img, args.ref)
    given = parse_label_map(args.reference_labels) if args.reference_labels else None
    manifest = describe_segmentation_model(args.model) if args.model else None
    if manifest is not None:  # a dataset folder's label file: its dataset.json's convention, onto the model's labels
        given = reference_convention(args.ref, given, manifest)
    elif given is None and declared_labels(args.ref) is not None:
        print(f"note: {args.ref} is a dataset folder's label file; without --model its values are compared as they "
              "are (give --model to read it in its dataset.json's convention)", file=sys.stderr)
    if given:
        ref = relabel(ref, given, args.ref)
    if manifest is not None:  # a value that is none of the model's labels would drop out of every structure
        check_reference_values(ref, (label.value for label in manifest.labels), args.ref)
        check_reference_values(pred, (label.value for label in manifest.labels), args.pred,
                               "a prediction of another model? name that model, or leave --model out to compare the "
                               "values as they are")
        structures = manifest.structures()
    else:
        values = sorted(int(v) for v in np.union1d(np.unique(pred), np.unique(ref)) if v)
        structures = structures_for_labels(values, {"foreground": values} if len(values) > 1 else None)
        _note_one_sided_values(pred, ref, args.ref)
    metrics = compute_metrics(pred, ref, ref_img.GetSpacing(), structures)
    payload = {"pred": args.pred, "ref": args.ref, "metrics": {k: v.to_json() for k, v in metrics.items()}}
    if args.json:
        print(json.dumps(json_safe(payload), indent=2))
        return 0
    print(f"{'structure':<12}{'Dice':>7}{'Jacc':>7}{'prec':>7}{'recall':>7}{'spec':>8}{'HD95':>8}{'ASSD':>8}"
          f"{'dVol mL':>9}")
    for name, m in metrics.items():
        f = lambda v, d=3: "n/a" if v is None else f"{v:.{d}f}"
        print(f"{name:<12}{f(m.dice):>7}{f(m.jaccard):>7}{f(m.precision):>7}{f(m.recall):>7}"
              f"{f(m.specificity, 4):>8}{f(m.hd95_mm, 2):>8}{f(m.assd_mm, 2):>8}{m.volume_diff_ml:>9.2f}")
    return 0


def _note_one_sided_values(pred: np.ndarray, ref: np.ndarray, ref_name: str) -> None:
    """Without a model, labels are compared value by value: say on stderr when each file has a value the other
    lacks (BraTS 2023's enhancing tumor is 3 where BraTS 2021's is 4), which a label convention may explain."""
    in_pred, in_ref = set(np.unique(pred).tolist()) - {0}, set(np.unique(ref).tolist()) - {0}
    if in_pred - in_ref and in_ref - in_pred:
        print(f"note: label values {sorted(in_ref - in_pred)} are only in {ref_name} and {sorted(in_pred - in_ref)} "
              "only in the prediction; if the files use different label conventions, name the reference's with "
              "--reference-labels (e.g. brats2023) or give --model", file=sys.stderr)


def run_evaluate_phantoms(args: argparse.Namespace) -> int:
    summary = evaluate_on_phantoms(args.model, n_cases=args.n, seed_base=args.seed_base, device=args.device,
                                   preset=args.preset, channels=channel_list(args.channels), tta=args.tta,
                                   tumor_free=args.tumor_free)
    print(json.dumps(summary, indent=2) if args.json else format_table(summary))
    return 0


def _check_out_file(out: str | None) -> None:
    """Refuse an ``--out`` file that cannot be written before a long evaluation runs (a folder, or in no folder)."""
    if not out:
        return
    path = Path(out)
    if path.is_dir():
        raise InputError(f"--out {out}: a folder; give a file name for the JSON report")
    if not path.resolve().parent.is_dir():
        raise InputError(f"--out {out}: folder {path.resolve().parent} does not exist")


def run_evaluate_real(args: argparse.Namespace) -> int:
    _check_out_file(args.out)
    report = evaluate_real(args.data, args.model, device=args.device, variants=channel_list(args.variants) or VARIANTS,
                           tta=args.tta, cases=channel_list(args.cases),
                           grade_classifier=classifier_or_none(args.grade_classifier),
                           precision=args.precision,
                           reference_labels=parse_label_map(args.reference_labels) if args.reference_labels else None)
    return _emit(report, args, format_real_table)


def run_compare_real(args: argparse.Namespace) -> int:
    reports = [read_real_report(path) for path in (args.before, args.after)]
    comparison = compare_real_reports(reports[0], reports[1], names=(args.before, args.after))
    print(json.dumps(json_safe(comparison), indent=2) if args.json else format_comparison(comparison))
    return 0


def run_evaluate_retrieval(args: argparse.Namespace) -> int:
    _check_out_file(args.out)
    report = evaluate_retrieval(args.model, n=args.n, seed_base=args.seed_base, preset_name=args.preset,
                                data=args.data, device=args.device)
    return _emit(report, args, format_retrieval_table)


def _emit(report: dict, args: argparse.Namespace, table: Callable[[dict], str]) -> int:
    """The report as JSON into ``--out`` (when given), and as JSON (``--json``) or a table on stdout."""
    if args.out:
        with atomic_path(args.out) as tmp:  # the report appears whole or not at all
            tmp.write_text(json.dumps(json_safe(report), indent=2) + "\n")
    print(json.dumps(json_safe(report), indent=2) if args.json else table(report))
    return 0


def run_calibrate_case(args: argparse.Namespace) -> int:
    cal = fit_case_calibration(args.model, n_cases=args.n, preset=args.preset, tumor_free=args.tumor_free,
                               seed_base=args.seed_base, device=args.device, channels=channel_list(args.channels))
    out = sys.stderr if args.json else sys.stdout
    if args.json:
        print(json.dumps(cal, indent=2))
    else:
        for when, words in (("before", "uncalibrated"), ("after", "calibrated, same cases"),
                            ("leave_one_out", "calibrated, leave-one-out")):
            r = cal[when]
            print(f"{words:>26}: AUC {r['auc']:.3f} Brier {r['brier']:.4f} log loss {r['log_loss']:.3f} "
                  f"ECE {r['ece_10_bins']:.4f} sensitivity {r['sensitivity']:.2f} specificity "
                  f"{r['specificity']:.2f} at 0.5")
        empty = cal.get("no_candidate_probability")
        print(f"Platt a={cal['a']:.4f} b={cal['b']:.4f}" + ("" if empty is None else
              f", cases without candidate: {empty:.3f}") + f" ({cal['fitted_on']})")
    if args.write and not (calibration_helps(cal) or args.force):
        print(f"not written: leave-one-out log loss {cal['leave_one_out']['log_loss']:.3f} is not below the "
              f"uncalibrated score's {cal['before']['log_loss']:.3f} (--force writes it anyway)", file=out)
    elif args.write:
        write_case_calibration(str(find_model(args.model)), cal)
        print(f"written to {find_model(args.model) / 'manifest.json'}", file=out)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``evaluate``, ``evaluate-phantoms`` and ``calibrate-case``."""
    p = sub.add_parser("evaluate", help="metrics between a predicted and a reference label map")
    p.add_argument("--pred", required=True)
    p.add_argument("--ref", required=True)
    add(p, "json", "model", "reference_labels",
        model={"default": None, "help": "take label names and regions from this model's manifest"})
    p.set_defaults(func=run_evaluate)

    p = sub.add_parser("evaluate-phantoms", help="evaluate a model on held-out phantoms (never trained on)")
    add(p, "model", "n", "seed-base", "device", "json", "preset", "channels", "tta", "tumor-free")
    p.set_defaults(func=run_evaluate_phantoms)

    p = sub.add_parser("evaluate-real", help="run the full chain on real patients' scans (a realdata folder) and "
                                             "score it against their references")
    p.add_argument("--data", required=True,
                   help="folder of real case folders: ../shared/realdata's layouts, BraTS 2017-2021 "
                        "(<case>_t1ce.nii.gz, _seg: labels 1, 2, 4) or BraTS 2023 (<case>-t1c.nii.gz, -seg: 1, 2, 3), "
                        "or a Decathlon / nnU-Net dataset folder (dataset.json)")
    add(p, "model", "device", "tta", "json", "classifier", "precision", "reference_labels",
        precision={"default": "manifest", "help": "execution precision (default manifest: the model's own, as every "
                                                  "score in docs/models.md; see segment --help)"},
        reference_labels={"help": "the label convention of every case's reference, instead of the one its layout "
                                  "says (e.g. brats2024: BraTS 2024 post-treatment, whose 4 is the resection cavity)"})
    p.add_argument("--variants", help=f"comma-separated input variants (default {','.join(VARIANTS)})")
    p.add_argument("--cases", help="comma-separated case ids (default: every labelled case)")
    p.add_argument("--out", help="also write the JSON report to this file")
    p.set_defaults(func=run_evaluate_real)

    p = sub.add_parser("compare-real", help="two evaluate-real reports row by row: the change of WT Dice with a "
                                            "95 %% interval resampling patients, and the rows whose outcome changed")
    p.add_argument("--before", required=True, help="evaluate-real --out JSON of the model compared against")
    p.add_argument("--after", required=True, help="evaluate-real --out JSON of the new model or setting")
    add(p, "json")
    p.set_defaults(func=run_compare_real)

    p = sub.add_parser("evaluate-retrieval", help="similar-case retrieval: precision@k / mAP@k of same grade / tumor "
                                                  "type on held-out phantoms and real patients (leave one out)")
    add(p, "model", "n", "seed-base", "device", "json", "preset", preset={"default": "graded"},
        n={"type": non_negative_int, "help": "held-out phantoms (0: none)"})
    p.add_argument("--data", help="also the real cases of this folder (../shared/realdata; leave one patient out)")
    p.add_argument("--out", help="also write the JSON report to this file")
    p.set_defaults(func=run_evaluate_retrieval)

    p = sub.add_parser("calibrate-case", help="fit Platt scaling of a model's case abnormality probability "
                                              "on validation phantoms (half tumor-free)")
    add(p, "model", "n", "preset", "tumor-free", "channels", "seed-base", "device", "write",
        n={"default": 40}, preset={"default": "robust"}, tumor_free={"default": 0.5},
        channels={"help": "comma-separated sequences given to the model (default all); the calibration "
                          "applies only to runs given exactly these"},
        seed_base={"default": 250_000, "help": "first phantom seed (default 250000, validation side: never "
                                               "training, never the 900000+ test seeds)"},
        write={"help": "store the calibration in the model's manifest (replacing one fitted with the same "
                       "sequences) when its leave-one-out log loss beats the raw score's"})
    p.add_argument("--force", action="store_true", help="with --write: store it even when it does not")
    add(p, "json", json={"help": "print everything, per-case scores included, as JSON"})
    p.set_defaults(func=run_calibrate_case)
