"""``medcnncad`` command line.

Stable syntax (scripts and docs rely on it)::

    medcnncad demo [--out DIR]
    medcnncad segment --model ID_OR_PATH --input NAME=PATH [--input NAME=PATH ...] --out DIR
                      [--device auto|cpu|cuda] [--trust] [--reference PATH]
                      [--series NAME=UID_OR_DESCRIPTION ...] [--dicom-seg]
    medcnncad evaluate --pred PATH --ref PATH [--json] [--model ID_OR_PATH]
    medcnncad phantom --out DIR [--seed N]
    medcnncad train segmentation --template MANIFEST --out DIR [...]
    medcnncad batch --cases cases.csv --out DIR [--model ID] [--scheduler tcp://host:port] [--serial] [--report]
    medcnncad report FOLDER [--pdf]
    medcnncad evaluate-phantoms [--model ID] [--n 20] [--json]
    medcnncad models
    medcnncad trust BUNDLE_FOLDER

Bad input exits with code 2 and one line naming the file and the problem.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from medcnncad import INTENDED_USE, __version__
from medcnncad.errors import InputError, MedCNNCADError
from medcnncad.models.defaults import DEFAULT_GRADE_CLASSIFIER as DEFAULT_CLASSIFIER
from medcnncad.models.defaults import DEFAULT_MODEL

__all__ = ["main", "build_parser", "DEMO_SEED"]

DEMO_SEED = 900_000  # the first held-out phantom: never seen in training
TTA_HELP = ("test-time augmentation (identity and flips averaged): uncertainty map and per-lesion uncertainty, "
            "4x network time; default: the model's (manifest inference.test_time_augmentation)")


class _TqdmProgress:
    """Progress callback that shows one tqdm bar per stage."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._bar = None
        self._stage = ""

    def __call__(self, stage: str, fraction: float) -> None:
        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = self._tqdm(total=100, desc=f"{stage:<11}", unit="%", leave=False, file=sys.stderr, disable=None,
                                   bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")
        if self._bar is not None:
            self._bar.n = int(round(fraction * 100))
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _parse_inputs(items: Sequence[str], option: str = "--input", form: str = "NAME=PATH") -> dict[str, str]:
    inputs: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InputError(f"{option} {item!r}: expected {form}, e.g. T1c=case/t1c.nii.gz")
        if name in inputs:
            raise InputError(f"{option} {name}: given twice")
        inputs[name] = path
    return inputs


def _run_case(model_id: str, inputs: dict[str, str], out: Path, device: str, trust: bool,
              reference: str | None, series: dict[str, str] | None = None, dicom_seg: bool = False,
              classifier: str | None = None, tta: bool | None = None, precision: str | None = None) -> dict:
    """Load the model(s), then segment (+ classify, + evaluate) one case and write its outputs."""
    from medcnncad.inference.segmenter import Segmenter
    from medcnncad.models.registry import load_model
    from medcnncad.pipeline.case import process_case

    t0 = time.perf_counter()
    segmenter = Segmenter(load_model(model_id, trust=trust), device=device, precision=precision)
    loaded_classifier = None
    if classifier:
        from medcnncad.classification.grade import load_classifier

        loaded_classifier = load_classifier(classifier)
    progress = _TqdmProgress()
    try:
        return process_case(segmenter, inputs, out, reference, series, dicom_seg, progress,
                            {"model_load": time.perf_counter() - t0}, loaded_classifier, tta)
    finally:
        progress.close()


def _default_classifier(requested: str | None) -> str | None:
    """The demo classifies lesions with the shipped grade classifier unless told otherwise ("none")."""
    if requested:
        return None if requested.lower() == "none" else requested
    from medcnncad.models.registry import find_model

    try:
        find_model(DEFAULT_CLASSIFIER)
    except MedCNNCADError:
        return None
    return DEFAULT_CLASSIFIER


def cmd_demo(args: argparse.Namespace) -> int:
    import os
    import shutil

    from medcnncad.data.phantom import make_phantom, write_phantom
    from medcnncad.io.images import signals_deferred
    from medcnncad.reporting.case_outputs import summary_table

    out = Path(args.out)
    t0 = time.perf_counter()
    case = make_phantom(args.seed)
    with tempfile.TemporaryDirectory(prefix="medcnncad-demo-") as staging:
        paths = write_phantom(case, staging)
        print(f"phantom case seed {args.seed} (held out from training) made in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
        inputs = {name: str(paths[name]) for name in case.images}
        report = _run_case(args.model, inputs, out, args.device, False, str(paths["label"]),
                           classifier=_default_classifier(args.classifier), tta=args.tta)
        final = {name: out / "inputs" / path.name for name, path in paths.items()}
        report["inputs"] = {name: str(final[name]) for name in inputs}
        report["reference"] = str(final["label"])
        with signals_deferred():  # the input case joins the outputs only when they are complete
            (out / "inputs").mkdir(exist_ok=True)
            for name, path in paths.items():
                shutil.copyfile(path, out / "inputs" / f".{path.name}.tmp")
                os.replace(out / "inputs" / f".{path.name}.tmp", final[name])
            (out / ".report.json.tmp").write_text(json.dumps(report, indent=2) + "\n")
            os.replace(out / ".report.json.tmp", out / "report.json")  # paths that outlive the demo
    print(summary_table(report))
    print(f"\noutputs in {out}: labels.nii.gz, labels.seg.nrrd, prob_*.nii.gz, overlay.png, report.json, "
          f"and the input case in {out / 'inputs'}")
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from medcnncad.reporting.case_outputs import summary_table

    report = _run_case(args.model, _parse_inputs(args.input), Path(args.out), args.device, args.trust,
                       args.reference, _parse_inputs(args.series or [], "--series", "NAME=UID_OR_DESCRIPTION"),
                       args.dicom_seg, args.classifier, args.tta, args.precision)
    print(summary_table(report))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from medcnncad.io.images import read_volume
    from medcnncad.metrics.segmentation import check_label_image, compute_metrics, structures_for_labels
    from medcnncad.reporting.case_outputs import json_safe

    ref_img = read_volume(args.ref)
    pred_img = read_volume(args.pred)
    ref = check_label_image(ref_img, args.ref)
    pred = check_label_image(pred_img, args.pred, ref_img, args.ref)
    if args.model:
        from medcnncad.models.manifest import load_manifest
        from medcnncad.models.registry import find_model

        structures = load_manifest(find_model(args.model)).structures()
    else:
        values = sorted(int(v) for v in np.union1d(np.unique(pred), np.unique(ref)) if v)
        structures = structures_for_labels(values, {"foreground": values} if len(values) > 1 else None)
    metrics = compute_metrics(pred, ref, ref_img.GetSpacing(), structures)
    payload = {"pred": args.pred, "ref": args.ref, "metrics": {k: v.to_json() for k, v in metrics.items()}}
    if args.json:
        print(json.dumps(json_safe(payload), indent=2))
        return 0
    print(f"{'structure':<12}{'Dice':>7}{'Jacc':>7}{'prec':>7}{'recall':>7}{'spec':>8}{'HD95':>8}{'ASSD':>8}"
          f"{'dVol mL':>9}")
    for name, m in metrics.items():
        f = lambda v, d=3: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
        print(f"{name:<12}{f(m.dice):>7}{f(m.jaccard):>7}{f(m.precision):>7}{f(m.recall):>7}"
              f"{f(m.specificity, 4):>8}{f(m.hd95_mm, 2):>8}{f(m.assd_mm, 2):>8}{m.volume_diff_ml:>9.2f}")
    return 0


def cmd_phantom(args: argparse.Namespace) -> int:
    from medcnncad.data.phantom import make_phantom, preset, write_phantom

    paths = write_phantom(make_phantom(args.seed, preset(args.preset)), args.out)
    for name, path in paths.items():
        print(f"{name}\t{path}")
    return 0


def cmd_sample_data(args: argparse.Namespace) -> int:
    from medcnncad.data.phantom import write_sample_case
    from medcnncad.models.manifest import load_manifest, sha256_file
    from medcnncad.models.registry import find_model

    out = Path(args.out)
    paths = write_sample_case(out, load_manifest(find_model(args.model)), seed=args.seed)
    index = {"seed": args.seed, "recipe": f"medcnncad sample-data --out {out} --seed {args.seed}",
             "files": {k: {"file": v.name, "sha256": sha256_file(v)} for k, v in paths.items()}}
    (out / "MedCNNCADPhantom.json").write_text(json.dumps(index, indent=2) + "\n")
    for name, path in paths.items():
        print(f"{name}\t{path}\t{index['files'][name]['sha256']}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from medcnncad.errors import ModelError
    from medcnncad.models.manifest import load_manifest
    from medcnncad.models.registry import list_models

    for folder in list_models():
        if (folder / "manifest.json").is_file():
            try:
                m = load_manifest(folder)
            except ModelError as exc:
                print(f"{folder}\tINVALID: {exc}")
                continue
            is_classifier = m.task == "classification"
            outputs = (f"classes {','.join(m.class_names)} of {m.lesion_structure} lesions" if is_classifier
                       else f"labels {','.join(f'{x.name}={x.value}' for x in m.labels)}")
            print(f"{m.id}\t{m.version}\t{m.task}\tinputs {','.join(m.input_names)}\t{outputs}\t"
                  f"trained on: {m.trained_on or 'unknown'}\t{folder}")
        else:
            print(f"{folder.name}\t(MONAI bundle)\t\t\t\t{folder}")
    return 0


def cmd_trust(args: argparse.Namespace) -> int:
    from medcnncad.models.bundle import bundle_code_entries, trust_bundle

    folder = Path(args.bundle)
    if not (folder / "configs" / "metadata.json").is_file():
        raise InputError(f"{folder}: not a MONAI bundle folder (no configs/metadata.json)")
    code = bundle_code_entries(folder)
    digest = trust_bundle(folder)
    print(f"trusted {folder} (sha256 {digest}); {len(code)} executable config entries will run")
    return 0


def _channel_list(text: str | None) -> list[str] | None:
    """``--channels T1c,FLAIR`` as a list of names (None when the option is absent: every input)."""
    return [c.strip() for c in text.split(",")] if text else None


def cmd_evaluate_phantoms(args: argparse.Namespace) -> int:
    from medcnncad.evaluation.phantoms import evaluate_on_phantoms, format_table

    channels = _channel_list(args.channels)
    summary = evaluate_on_phantoms(args.model, n_cases=args.n, seed_base=args.seed_base, device=args.device,
                                   preset=args.preset, channels=channels, tta=args.tta, tumor_free=args.tumor_free)
    print(json.dumps(summary, indent=2) if args.json else format_table(summary))
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from medcnncad.models.registry import describe_model
    from medcnncad.pipeline.cohort import read_cases, run_cohort, summary_markdown

    manifest = describe_model(args.model)
    cases = read_cases(args.cases, manifest.input_names)
    summary = run_cohort(cases, args.model, args.out, device=args.device, scheduler=args.scheduler,
                         workers=args.workers, serial=args.serial)
    if args.report:
        from medcnncad.reporting.html import case_report, cohort_report

        for case in cases:
            if (Path(args.out) / "cases" / case.case_id / "report.json").is_file():
                case_report(Path(args.out) / "cases" / case.case_id, _screenshots())
        print(cohort_report(args.out, {c.case_id: c.label for c in cases}))
    print(summary_markdown(summary))
    print(f"per-case outputs in {Path(args.out) / 'cases'}; cohort.csv, failures.csv, summary.json, summary.md "
          f"in {args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from medcnncad.reporting.html import case_report, cohort_report, html_to_pdf

    folder = Path(args.folder)
    if (folder / "summary.json").is_file():
        path = cohort_report(folder, _labels_from_cohort_csv(folder))
    elif (folder / "report.json").is_file():
        path = case_report(folder, _screenshots())
    else:
        raise InputError(f"{folder}: neither a case folder (report.json) nor a cohort folder (summary.json)")
    print(path)
    if args.pdf:
        print(html_to_pdf(path))
    return 0


def _screenshots():
    """Slicer slice views for HTML reports when ``slicer-core`` is installed (None: the overlay only).

    Imported here, lazily, because ``slicer-core`` is optional outside Slicer and costs ~1 s to import.
    """
    try:
        from medcnncad.slicer.screenshots import case_screenshots
    except ImportError:
        return None
    return case_screenshots


def _labels_from_cohort_csv(folder: Path) -> dict[str, int | None]:
    import csv

    labels: dict[str, int | None] = {}
    with open(folder / "cohort.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            labels[row["case_id"]] = int(row["label"]) if row.get("label") else None
    return labels


def cmd_train(args: argparse.Namespace) -> int:
    from medcnncad.training.segmentation import TrainConfig, train_segmentation

    cfg = TrainConfig(n_train=args.n_train, n_val=args.n_val, epochs=args.epochs,
                      steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
                      patch=tuple(args.patch), lr=args.lr, seed=args.seed, workers=args.workers,
                      phantom_preset=args.phantoms, data=args.data, val_fraction=args.val_fraction,
                      augmentation=args.augmentation, channel_drop=args.channel_drop, init=args.init,
                      negative_share=args.negative_share, region_loss=args.region_loss,
                      pretrained_lr_scale=args.pretrained_lr_scale, freeze_pretrained=args.freeze_pretrained,
                      device=args.device, loader_workers=args.loader_workers)
    command = "medcnncad " + " ".join(shlex.quote(a) for a in args.argv)
    out = train_segmentation(args.template, args.out, cfg, resume=args.resume, command=command)
    print(f"model written to {out}")
    return 0


def cmd_train_classification(args: argparse.Namespace) -> int:
    from medcnncad.training.classification import ClassifierTrainConfig, train_classification

    cfg = ClassifierTrainConfig(n_train=args.n_train, n_val=args.n_val, epochs=args.epochs,
                                steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, views=args.views,
                                lr=args.lr, seed=args.seed, workers=args.workers, phantom_preset=args.phantoms,
                                data=args.data, channel_drop=args.channel_drop)
    command = "medcnncad " + " ".join(shlex.quote(a) for a in args.argv)
    out = train_classification(args.template, args.out, cfg, resume=args.resume, command=command)
    print(f"classifier written to {out}")
    return 0


def cmd_calibrate_classifier(args: argparse.Namespace) -> int:
    from medcnncad.models.registry import find_model
    from medcnncad.training.classification import recalibrate, write_calibration

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


def cmd_evaluate_classifier(args: argparse.Namespace) -> int:
    from medcnncad.reporting.case_outputs import json_safe
    from medcnncad.training.classification import evaluate_classifier

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


def cmd_calibrate_case(args: argparse.Namespace) -> int:
    from medcnncad.evaluation.phantoms import calibration_helps, fit_case_calibration, write_case_calibration
    from medcnncad.models.registry import find_model

    channels = _channel_list(args.channels)
    cal = fit_case_calibration(args.model, n_cases=args.n, preset=args.preset, tumor_free=args.tumor_free,
                               seed_base=args.seed_base, device=args.device, channels=channels)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medcnncad", description=f"MedCNNCAD {__version__}. {INTENDED_USE}")
    parser.add_argument("--version", action="version", version=f"medcnncad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="segment a held-out phantom case and evaluate it against its ground truth")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--seed", type=int, default=DEMO_SEED)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--device", default="auto")
    p.add_argument("--classifier", help=f"lesion classifier (default {DEFAULT_CLASSIFIER}; 'none' for none)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, help=TTA_HELP)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("segment", help="segment one case")
    p.add_argument("--model", required=True, help="model id or folder (manifest or MONAI bundle)")
    p.add_argument("--input", action="append", required=True, metavar="NAME=PATH",
                   help="input channel (manifest channel name) and its volume file or DICOM folder")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    p.add_argument("--trust", action="store_true", help="allow a MONAI bundle's executable config for this run")
    p.add_argument("--classifier", help="lesion classifier model (id or folder), e.g. brats-grade-densenet")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="override the model's execution precision (auto: fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, help=TTA_HELP)
    p.add_argument("--reference", help="reference label map on the first input's grid: adds metrics")
    p.add_argument("--series", action="append", metavar="NAME=UID_OR_DESCRIPTION",
                   help="pick the DICOM series of channel NAME in a folder holding several")
    p.add_argument("--dicom-seg", action="store_true",
                   help="also write labels.seg.dcm, a DICOM SEG referencing the first channel's DICOM series")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("evaluate", help="metrics between a predicted and a reference label map")
    p.add_argument("--pred", required=True)
    p.add_argument("--ref", required=True)
    p.add_argument("--json", action="store_true")
    p.add_argument("--model", help="take label names and regions from this model's manifest")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("phantom", help="write one synthetic BraTS-like case with its label map")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="classic",
                   help="phantom preset: classic, graded, robust, heldout, clinical-like")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("batch", help="segment and evaluate a cohort from a CSV (resumable, on dask)")
    p.add_argument("--cases", required=True, help="CSV: case_id, one column per channel, [reference], [label]")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--device", default="auto")
    p.add_argument("--scheduler", help="dask scheduler address (tcp://host:port); default a local cluster")
    p.add_argument("--workers", type=int, default=2, help="processes of the local cluster")
    p.add_argument("--serial", action="store_true", help="run in this process, without dask")
    p.add_argument("--report", action="store_true", help="also write HTML reports per case and for the cohort")
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("report", help="HTML report (and --pdf) of a case or cohort output folder")
    p.add_argument("folder")
    p.add_argument("--pdf", action="store_true", help="also print it to PDF with headless Chromium")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("evaluate-phantoms", help="evaluate a model on held-out phantoms (never trained on)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--seed-base", type=int, default=DEMO_SEED)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.add_argument("--preset", default="classic", help="phantom preset (e.g. heldout, clinical-like)")
    p.add_argument("--channels", help="comma-separated sequences given to the model (e.g. T1c); others absent")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, help=TTA_HELP)
    p.add_argument("--tumor-free", type=float, help="share of tumor-free cases, replacing the preset's "
                                                    "(1: normal heads only, to count false positives)")
    p.set_defaults(func=cmd_evaluate_phantoms)

    p = sub.add_parser("sample-data", help="write the compact sample case registered with Slicer's Sample Data")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=DEMO_SEED)
    p.add_argument("--model", default=DEFAULT_MODEL, help="model whose label names the reference uses")
    p.set_defaults(func=cmd_sample_data)

    p = sub.add_parser("models", help="list installed models")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("trust", help="trust a MONAI bundle (by the hash of its configs and weights)")
    p.add_argument("bundle")
    p.set_defaults(func=cmd_trust)

    p = sub.add_parser("train", help="train a model")
    tsub = p.add_subparsers(dest="task", required=True)
    t = tsub.add_parser("segmentation", help="train (or fine-tune) a segmentation model on phantoms or your cases")
    t.add_argument("--template", required=True, help="manifest JSON describing the model to train")
    t.add_argument("--data", help="CSV of cases or folder of case folders (default: phantoms generated on the fly)")
    t.add_argument("--val-fraction", type=float, default=0.15, help="validation share of --data cases")
    t.add_argument("--phantoms", default="classic",
                   help="phantom preset (classic, graded, robust, robust-head, ...) or several, "
                        "comma-separated, dealt in turn")
    t.add_argument("--augmentation", default="light", choices=["light", "robust"])
    t.add_argument("--channel-drop", type=float, default=0.0,
                   help="probability of zeroing random input sequences (missing-sequence robustness)")
    t.add_argument("--init", help="start from this model's weights (matching layers kept, the rest re-initialised)")
    t.add_argument("--pretrained-lr-scale", type=float, default=0.1,
                   help="learning-rate factor for layers taken from --init (new layers use --lr)")
    t.add_argument("--freeze-pretrained", action="store_true", help="do not train layers taken from --init")
    t.add_argument("--out", required=True)
    t.add_argument("--n-train", type=int, default=48)
    t.add_argument("--n-val", type=int, default=6)
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--steps-per-epoch", type=int, default=50)
    t.add_argument("--batch-size", type=int, default=2)
    t.add_argument("--negative-share", type=float, default=1 / 3,
                   help="share of training patches centred on background (scalp, air) rather than on a label")
    t.add_argument("--region-loss", type=float, default=0.0, metavar="WEIGHT",
                   help="add WEIGHT x soft Dice on the manifest's nested regions (e.g. WT, TC) to the "
                        "Dice+CE loss (region-based training; default 0: labels only)")
    t.add_argument("--patch", type=int, nargs=3, default=[64, 64, 64])
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--workers", type=int, default=2, help="processes preparing the cases (phantoms, resampling)")
    t.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    t.add_argument("--loader-workers", type=int, default=None,
                   help="processes running the augmentation during training (0: the training process; default: "
                        "up to 8 on a GPU, where the augmentation sets the pace, 0 on the CPU)")
    t.add_argument("--resume", action="store_true")
    t.set_defaults(func=cmd_train)

    c = tsub.add_parser("classification", help="train and calibrate a lesion classifier (e.g. tumor grade)")
    c.add_argument("--template", required=True, help="classifier manifest JSON describing the model to train")
    c.add_argument("--out", required=True)
    c.add_argument("--data", help="CSV with input columns, 'label' and 'class' (default: phantoms)")
    c.add_argument("--phantoms", default="robust", help="phantom preset (grade is its hidden variable)")
    c.add_argument("--n-train", type=int, default=400)
    c.add_argument("--n-val", type=int, default=100)
    c.add_argument("--epochs", type=int, default=20)
    c.add_argument("--steps-per-epoch", type=int, default=60)
    c.add_argument("--batch-size", type=int, default=16)
    c.add_argument("--views", type=int, default=2, help="jittered patches per training lesion")
    c.add_argument("--lr", type=float, default=1e-3)
    c.add_argument("--channel-drop", type=float, default=0.3)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--workers", type=int, default=2)
    c.add_argument("--resume", action="store_true")
    c.set_defaults(func=cmd_train_classification)

    p = sub.add_parser("calibrate-case", help="fit Platt scaling of a model's case abnormality probability "
                                              "on validation phantoms (half tumor-free)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--preset", default="robust")
    p.add_argument("--tumor-free", type=float, default=0.5)
    p.add_argument("--channels", help="comma-separated sequences given to the model (default all); the "
                                      "calibration applies only to runs given exactly these")
    p.add_argument("--seed-base", type=int, default=250_000,
                   help="first phantom seed (default 250000, validation side: never training, never the 900000+ "
                        "test seeds)")
    p.add_argument("--device", default="auto")
    p.add_argument("--write", action="store_true", help="store the calibration in the model's manifest "
                                                         "(replacing one fitted with the same sequences) when "
                                                         "its leave-one-out log loss beats the raw score's")
    p.add_argument("--force", action="store_true", help="with --write: store it even when it does not")
    p.add_argument("--json", action="store_true", help="print everything, per-case scores included, as JSON")
    p.set_defaults(func=cmd_calibrate_case)

    p = sub.add_parser("calibrate-classifier", help="refit a lesion classifier's temperature and operating "
                                                    "point on more validation phantoms")
    p.add_argument("--model", default=DEFAULT_CLASSIFIER)
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--preset", default="robust")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--write", action="store_true", help="store the result in the classifier's manifest")
    p.set_defaults(func=cmd_calibrate_classifier)

    p = sub.add_parser("evaluate-classifier", help="AUC, operating point, Brier, ECE of a lesion classifier on "
                                                   "held-out phantoms, with a reliability diagram")
    p.add_argument("--model", default=DEFAULT_CLASSIFIER)
    p.add_argument("--n", type=int, default=200, help="phantom cases (tumor-free ones have no lesion)")
    p.add_argument("--preset", default="heldout")
    p.add_argument("--seed-base", type=int, default=None)
    p.add_argument("--tta", action="store_true")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--diagram", help="write the reliability diagram PNG here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate_classifier)
    return parser


def _one_line(text: str) -> str:
    """Messages from libraries may hold newlines and terminal colour codes: one plain line."""
    import re

    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad input, 130 when interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None  # SIGTERM = Ctrl-C
    try:
        return int(args.func(args))
    except MedCNNCADError as exc:
        print(f"medcnncad: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = exc.filename or ""
        print(f"medcnncad: error: {where}: {_one_line(exc.strerror or str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medcnncad: interrupted; no partial outputs were kept", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug: one line for the user, the traceback in a log
        import traceback

        log = Path(tempfile.gettempdir()) / "medcnncad-error.log"
        log.write_text(traceback.format_exc())
        print(f"medcnncad: internal error: {type(exc).__name__}: {_one_line(str(exc))[:300]} "
              f"(please report it with {log})", file=sys.stderr)
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
