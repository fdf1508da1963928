"""``medcnncad train segmentation|classification|candidate|soup``, ``calibrate-classifier``, ``evaluate-classifier``."""

from __future__ import annotations

import argparse
import json
import shlex

from medcnncad.cli.options import (
    add,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
)
from medcnncad.models.registry import find_model
from medcnncad.reporting.case_outputs import json_safe
from medcnncad.training.candidate import make_candidate
from medcnncad.training.classification import (
    ClassifierTrainConfig,
    evaluate_classifier,
    recalibrate,
    train_classification,
    write_calibration,
)
from medcnncad.training.segmentation import TrainConfig, train_segmentation
from medcnncad.training.soup import make_soup

__all__ = ["add_parsers", "train_config"]


def name_weights(text: str) -> tuple[tuple[str, float], ...]:
    """``"t1c=6,flair=2"`` -> ``(("t1c", 6.0), ("flair", 2.0))``; argparse reports a malformed pair."""
    pairs = []
    for item in text.split(","):
        name, sep, weight = item.partition("=")
        try:
            value = float(weight)
        except ValueError:
            value = None
        if not sep or not name.strip() or value is None:
            raise argparse.ArgumentTypeError(f"{item!r}: expected NAME=WEIGHT, e.g. t1c=6")
        pairs.append((name.strip(), value))
    return tuple(pairs)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed ``train segmentation`` options: every field whose name is an
    option (``--n-train`` -> ``n_train``); ``patch`` as a tuple."""
    values = {name: getattr(args, name) for name in TrainConfig.__dataclass_fields__ if hasattr(args, name)}
    values["patch"] = tuple(values["patch"])
    values["phantom_preset"] = args.phantoms
    values["transplant_from"] = tuple(values.get("transplant_from") or ())
    values["real_from"] = tuple(values.get("real_from") or ())
    values["keep_weights"] = tuple(values.get("keep_weights") or ())
    return TrainConfig(**values)


def run_train_segmentation(args: argparse.Namespace) -> int:
    command = "medcnncad " + " ".join(shlex.quote(a) for a in args.argv)
    out = train_segmentation(args.template, args.out, train_config(args), resume=args.resume, command=command)
    print(f"model written to {out}")
    if args.init:  # its manifest is the template's: none of the init model's chain, filters or calibration
        print(f"to score it as {args.init} runs (its clinical chain, filters and calibration): "
              f"medcnncad train candidate --run {out} --like {args.init} --out <new folder>")
    return 0


def run_train_classification(args: argparse.Namespace) -> int:
    values = {name: getattr(args, name) for name in ClassifierTrainConfig.__dataclass_fields__ if hasattr(args, name)}
    cfg = ClassifierTrainConfig(**{**values, "phantom_preset": args.phantoms})
    command = "medcnncad " + " ".join(shlex.quote(a) for a in args.argv)
    out = train_classification(args.template, args.out, cfg, resume=args.resume, command=command)
    print(f"classifier written to {out}")
    return 0


def run_train_candidate(args: argparse.Namespace) -> int:
    out = make_candidate(args.run, args.like, args.out)
    print(f"candidate written to {out}: the weights of {args.run} with {args.like}'s manifest "
          f"(clinical chain, filters and calibration fitted for {args.like}'s own weights)")
    return 0


def run_train_soup(args: argparse.Namespace) -> int:
    out = make_soup(args.members, args.out)
    print(f"soup of {len(args.members)} runs written to {out}; to score it as a shipped model runs: "
          f"medcnncad train candidate --run {out} --like <model> --out <new folder>")
    return 0


def run_calibrate_classifier(args: argparse.Namespace) -> int:
    blocks = recalibrate(args.model, n_cases=args.n, preset=args.preset, workers=args.workers)
    cal = blocks["calibration"]
    for when in ("validation_before", "validation_after"):
        r = cal[when]
        print(f"{when}: AUC {r['auc']:.3f} Brier {r['brier']:.4f} ECE {r['ece_10_bins']:.4f}")
    print(f"temperature {cal['temperature']:.4f}, threshold {blocks['operating_point']['threshold']:.4f} "
          f"({cal['fitted_on']})")
    if args.write:
        write_calibration(find_model(args.model), blocks)
        print(f"written to {find_model(args.model) / 'manifest.json'}")
    return 0


def run_evaluate_classifier(args: argparse.Namespace) -> int:
    report = evaluate_classifier(args.model, n_cases=args.n, preset=args.preset, seed_base=args.seed_base,
                                 tta=args.tta, workers=args.workers, diagram=args.diagram)
    if args.json:
        print(json.dumps(json_safe(report), indent=2))
        return 0
    c, u = report["calibrated"], report["uncalibrated"]
    cm = c["confusion_matrix"]
    print(f"{report['model']} {report['version']}: {report['lesions']} held-out lesions, preset {report['preset']}, "
          f"seeds {report['seeds'][0]}-{report['seeds'][1]}")
    print(f"AUC {c['auc']:.3f}  at threshold {c['threshold']:.3f}: sensitivity {c['sensitivity']:.3f} "
          f"specificity {c['specificity']:.3f}  (TP {cm['tp']} FN {cm['fn']} FP {cm['fp']} TN {cm['tn']})")
    print(f"calibrated (T={report['temperature']:.3f}): Brier {c['brier']:.4f} ECE {c['ece_10_bins']:.4f}; "
          f"uncalibrated: Brier {u['brier']:.4f} ECE {u['ece_10_bins']:.4f}")
    if args.diagram:
        print(f"reliability diagram: {args.diagram}")
    return 0


def _add_train_segmentation(tsub: argparse._SubParsersAction) -> None:
    t = tsub.add_parser("segmentation", help="train (or fine-tune) a segmentation model on phantoms or your cases")
    t.add_argument("--template", required=True, help="manifest JSON describing the model to train")
    t.add_argument("--data", help="CSV of cases or folder of case folders (default: phantoms generated on the fly)")
    t.add_argument("--val-fraction", type=fraction, default=0.15, help="validation share of --data cases")
    t.add_argument("--phantoms", default="classic",
                   help="phantom preset (classic, graded, robust, robust-head, realistic, ...) or several, "
                        "comma-separated, dealt in turn")
    add(t, "transplant-from", **{"transplant-from": {"help": "real labelled case folders (training patients only: "
                                                            "leave-patient-out) whose tumors --transplant-share of "
                                                            "the training phantoms carry instead of a synthetic one"}})
    t.add_argument("--transplant-share", type=probability, default=0.0,
                   help="share of training phantoms with a real tumor from --transplant-from (default 0: none)")
    t.add_argument("--real-from", nargs="+", default=[], metavar="CASE_DIR",
                   help="whole labelled real patient scans (training patients only: leave-patient-out) added to the "
                        "training cases, through the clinical chain: a case folder, or a folder of them / a "
                        "Decathlon or nnU-Net dataset (every labelled case evaluate-real reads there, each with its "
                        "own label convention); the training record lists their case ids")
    t.add_argument("--real-copies", type=positive_int, default=1,
                   help="times each --real-from scan enters the training list (default 1)")
    t.add_argument("--clinical-chain", action="store_true",
                   help="put the phantoms through the clinical chain as at inference (deepbet brain extraction of "
                        "skull-on heads); whole real scans always go through it")
    t.add_argument("--augmentation", default="light", choices=["light", "robust"])
    t.add_argument("--channel-drop", type=probability, default=0.0,
                   help="probability of zeroing random input sequences (missing-sequence robustness)")
    t.add_argument("--single-share", type=probability, default=0.5,
                   help="share of the channel-dropped samples that keep exactly one sequence (default 0.5)")
    t.add_argument("--keep-weights", type=name_weights, default=(), metavar="NAME=W,...",
                   help="weights choosing that one sequence, e.g. t1c=6,flair=2 (unnamed inputs weigh 1; "
                        "default t1c=3,flair=2)")
    t.add_argument("--init", help="start from this model's weights (matching layers kept, the rest re-initialised)")
    t.add_argument("--pretrained-lr-scale", type=non_negative_float, default=0.1,
                   help="learning-rate factor for layers taken from --init (new layers use --lr)")
    t.add_argument("--freeze-pretrained", action="store_true", help="do not train layers taken from --init")
    add(t, "out")
    t.add_argument("--n-train", type=positive_int, default=48)
    t.add_argument("--n-val", type=positive_int, default=6)
    t.add_argument("--epochs", type=positive_int, default=40)
    t.add_argument("--steps-per-epoch", type=positive_int, default=50)
    t.add_argument("--batch-size", type=positive_int, default=2)
    t.add_argument("--negative-share", type=probability, default=1 / 3,
                   help="share of training patches centred on background (scalp, air) rather than on a label")
    t.add_argument("--region-loss", type=non_negative_float, default=0.0, metavar="WEIGHT",
                   help="add WEIGHT x soft Dice on the manifest's nested regions (e.g. WT, TC) to the "
                        "Dice+CE loss (region-based training; default 0: labels only)")
    t.add_argument("--patch", type=positive_int, nargs=3, default=[64, 64, 64])
    t.add_argument("--lr", type=positive_float, default=2e-3)
    add(t, "seed", "workers", "device", workers={"help": "processes preparing the cases (phantoms, resampling)"})
    t.add_argument("--loader-workers", type=non_negative_int, default=None,
                   help="processes running the augmentation during training (0: the training process; default: "
                        "up to 8 on a GPU, where the augmentation sets the pace, 0 on the CPU)")
    add(t, "resume")
    t.set_defaults(func=run_train_segmentation)


def _add_train_classification(tsub: argparse._SubParsersAction) -> None:
    c = tsub.add_parser("classification", help="train and calibrate a lesion grade classifier")
    c.add_argument("--template", required=True, help="classifier manifest JSON describing the model to train")
    add(c, "out")
    c.add_argument("--data", help="CSV with input columns, 'label' and 'class' (default: phantoms)")
    c.add_argument("--phantoms", default="robust", help="phantom preset (grade is its hidden variable)")
    c.add_argument("--n-train", type=positive_int, default=400)
    c.add_argument("--n-val", type=positive_int, default=100)
    c.add_argument("--epochs", type=positive_int, default=20)
    c.add_argument("--steps-per-epoch", type=positive_int, default=60)
    c.add_argument("--batch-size", type=positive_int, default=16)
    c.add_argument("--views", type=positive_int, default=2, help="jittered patches per training lesion")
    c.add_argument("--lr", type=positive_float, default=1e-3)
    c.add_argument("--channel-drop", type=probability, default=0.3)
    add(c, "seed", "workers", "resume")
    c.set_defaults(func=run_train_classification)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``train`` (with ``segmentation`` and ``classification``), ``calibrate-classifier`` and
    ``evaluate-classifier``."""
    p = sub.add_parser("train", help="train a model")
    tsub = p.add_subparsers(dest="task", required=True)
    _add_train_segmentation(tsub)
    _add_train_classification(tsub)
    t = tsub.add_parser("candidate", help="a training run's weights with a shipped model's manifest (clinical "
                                          "chain, inference settings, filters, calibration): the folder to score")
    t.add_argument("--run", required=True, help="training run folder (medcnncad train segmentation --out)")
    t.add_argument("--like", required=True, help="model id or folder whose manifest the candidate takes")
    t.add_argument("--out", required=True, help="new (or empty) folder to write")
    t.set_defaults(func=run_train_candidate)
    t = tsub.add_parser("soup", help="the uniform mean of the weights of runs fine-tuned from one start (a seed "
                                     "soup), written as a training run")
    t.add_argument("--members", nargs="+", required=True, help="two or more training-run or model folders")
    t.add_argument("--out", required=True, help="new (or empty) folder to write")
    t.set_defaults(func=run_train_soup)

    p = sub.add_parser("calibrate-classifier", help="refit a lesion grade classifier's temperature and operating "
                                                    "point on more validation phantoms")
    add(p, "grade-classifier-model", "n", "preset", "workers", "write", n={"default": 300},
        preset={"default": "robust"})
    p.set_defaults(func=run_calibrate_classifier)

    p = sub.add_parser("evaluate-classifier", help="AUC, operating point, Brier, ECE of a lesion grade classifier "
                                                   "on held-out phantoms, with a reliability diagram")
    add(p, "grade-classifier-model", "n", "preset", "seed-base", n={"default": 200,
        "help": "phantom cases (tumor-free ones have no lesion)"}, preset={"default": "heldout"},
        seed_base={"default": None})
    p.add_argument("--tta", action="store_true")
    add(p, "workers")
    p.add_argument("--diagram", help="write the reliability diagram PNG here")
    add(p, "json")
    p.set_defaults(func=run_evaluate_classifier)
