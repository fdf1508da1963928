"""Fit the lesion filter of a segmentation model (medcnncad/lesions/lesion_filter.py): the logistic second stage
that removes false-positive components (manifest postprocessing.lesion_filter; not the grade classifier).

Three steps, each reproducible from seeds (docs/models.md has the exact commands used):

  collect   segment phantoms with the model and save, per case, the label map (after the
            model's own floors), the foreground probability and the reference (npz); ``--tta``
            / ``--no-tta`` choose the mode (default: the model's; fit the second stage in the mode the
            model will run in), ``--probability-floor`` replaces the model's probability floor (also for fit/floors);
  fit       logistic regression (scikit-learn) on the features of every candidate component of
            the training-side cases, true = it overlaps the reference; then, on validation-side
            cases, the lesion sensitivity, false positives per case and Dice at each threshold;
  floors    on the same validation-side cases, after the classifier at the chosen threshold:
            Dice and lesion sensitivity for a grid of label volume floors (e.g. ET -> NCR below x mL);
  write     put the classifier, the chosen threshold and a label floor (and, with ``--probability-floor``
            and ``--tta``, that floor and test-time augmentation as the default) into the model's manifest.

Phantom sets are ``--set NAME:PRESET:INPUTS:FIRST_SEED:N``; INPUTS is ``all``, one sequence name, or
``mixed`` (per seed: all / T1c / T1c / FLAIR / all / 2-3 random sequences, the training mix). Your
own cases are ``--cases NAME:PATH`` (a CSV or a folder of case folders, the layouts
``medcnncad train segmentation --data`` reads). Keep training-side and validation-side cases apart.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medcnncad.lesions.components import components
from medcnncad.lesions.lesion_filter import component_features, feature_names
from medcnncad.metrics.segmentation import (
    BRATS_2023,
    STRICT,
    dice,  # (1 when both are empty, as evaluate-phantoms counts it)
    lesion_detection,
)
from medcnncad.models.manifest import LesionFilter

SEQUENCES = ["T1", "T1c", "T2", "FLAIR"]
REGIONS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}


def _inputs(kind: str, seed: int) -> list[str]:
    """The input sequences of case ``seed`` for an INPUTS spec."""
    if kind == "mixed":
        kind = ["all", "T1c", "T1c", "FLAIR", "all", "subset"][(seed // 2) % 6]
        if kind == "subset":
            rng = np.random.default_rng(seed)
            return sorted(str(s) for s in rng.choice(SEQUENCES, int(rng.integers(2, 4)), replace=False))
    return SEQUENCES if kind == "all" else [kind]


def _save(path: Path, result, reference: sitk.Image) -> None:
    np.savez_compressed(path, label=result.label_map, fg=sum(result.probabilities.values()).astype(np.float16),
                        ref=sitk.GetArrayFromImage(reference).astype(np.uint8),
                        spacing=np.array(reference.GetSpacing()))


def _segmenter(model: str, min_probability: float | None = None):
    """The model's segmenter with its floors (the probability floor replaced by ``min_probability``
    when given) but without any classifier or label floor it already has: the candidates are what
    the second stage will see."""
    import torch

    from medcnncad.inference.segmenter import Segmenter
    from medcnncad.models.registry import load_model

    torch.set_num_threads(2)
    loaded = load_model(model)
    post = dataclasses.replace(_with_floor(loaded.manifest.postprocessing, min_probability), lesion_filter=None,
                               label_volume_floors=())
    manifest = dataclasses.replace(loaded.manifest, postprocessing=post)
    return Segmenter(dataclasses.replace(loaded, manifest=manifest), "cpu")


def collect_files(model: str, out: Path, specs: list[str], tta: bool | None = None,
                  min_probability: float | None = None) -> None:
    """Segment the cases of a CSV or folder (``NAME:PATH``, the layouts ``medcnncad train --data``
    reads); each reference label must lie on its case's first input's grid."""
    from medcnncad.errors import InputError
    from medcnncad.io.images import same_space
    from medcnncad.training.data import file_cases

    segmenter = _segmenter(model, min_probability)
    for spec in specs:
        name, source = spec.split(":", 1)
        (out / name).mkdir(parents=True, exist_ok=True)
        for case in file_cases(source, segmenter.manifest):
            path = out / name / f"{case['id']}.npz"
            if path.exists():
                continue
            result = segmenter.run(case["inputs"], tta=tta)
            reference = sitk.ReadImage(case["label"])
            if not same_space(reference, result.reference):
                raise InputError(f"{case['label']}: not on the grid of case {case['id']}'s first input")
            _save(path, result, reference)
            print(name, case["id"], flush=True)


def collect(model: str, out: Path, sets: list[str], tta: bool | None = None,
            min_probability: float | None = None, donors: tuple[str, ...] = ()) -> None:
    """Segment the phantoms of each set (``tta``: flips averaged, as ``--tta`` does; ``None``: the
    model's default mode); one npz per case (skipped when present: resumable). With ``donors``
    (real labelled case folders: training patients only), every phantom carries one of their tumors
    (:func:`medcnncad.data.transplant.transplant_phantom`)."""
    from medcnncad.data.phantom import make_phantom, preset
    from medcnncad.data.transplant import transplant_phantom

    segmenter = _segmenter(model, min_probability)
    for spec in sets:
        name, preset_spec, kind, first, n = spec.split(":")
        presets = preset_spec.split(",")
        (out / name).mkdir(parents=True, exist_ok=True)
        for seed in range(int(first), int(first) + int(n)):
            path = out / name / f"{seed}.npz"
            if path.exists():
                continue
            config = preset(presets[seed % len(presets)])
            case = transplant_phantom(seed, donors, config) if donors else make_phantom(seed, config)
            _save(path, segmenter.run({c: case.images[c] for c in _inputs(kind, seed)}, tta=tta), case.label)
            print(name, seed, flush=True)


def _with_floor(post, min_probability: float | None):
    """``post`` (a manifest's postprocessing) with its lesion probability floor replaced by ``min_probability``
    when given."""
    return post if min_probability is None else dataclasses.replace(post, min_lesion_probability=min_probability)


def _postprocessing(model: str, min_probability: float | None = None):
    """The model's postprocessing, its lesion probability floor replaced by ``min_probability`` when given."""
    from medcnncad.models.registry import load_model
    return _with_floor(load_model(model).manifest.postprocessing, min_probability)


def _cases(folder: str, post):
    """Per saved case, after the model's own floors (``post``: its postprocessing): label map,
    reference, spacing, component map and candidate features."""
    from medcnncad.inference.segmenter import remove_small_components

    channels = [(c.name, c.value) for c in post.channels if c.value]
    for path in sorted(glob.glob(f"{folder}/*.npz")):
        d = np.load(path)
        fg, ref, spacing = d["fg"].astype(np.float32), d["ref"], tuple(float(s) for s in d["spacing"])
        voxel_ml = float(np.prod(spacing)) / 1000
        label = remove_small_components(d["label"].copy(), post.min_lesion_ml, voxel_ml, lambda m, fg=fg: fg[m],
                                        post.min_lesion_probability)
        labelled, count = components(label > 0)
        x = component_features(labelled, count, label, fg[labelled > 0], voxel_ml, channels)
        yield label, ref, spacing, labelled, x


def _summary(cases, keep, floors=()) -> dict[str, float]:
    """Over cases, after dropping the components not in ``keep`` and applying label volume ``floors``:
    WT lesion sensitivity and FP per case (any-overlap rule), ET lesion sensitivity (BraTS 2023 rule)
    and mean Dice per region."""
    from medcnncad.inference.segmenter import apply_label_volume_floors

    agg = collections.defaultdict(list)
    for (label, ref, spacing, labelled, _), k in zip(cases, keep):
        out = np.where(np.concatenate([[False], k])[labelled], label, 0).astype(np.uint8)
        apply_label_volume_floors(out, floors, float(np.prod(spacing)) / 1000)
        wt = lesion_detection(out > 0, ref > 0, STRICT, spacing)
        et = lesion_detection(out == 4, ref == 4, BRATS_2023, spacing)
        for key, value in (("tp", wt.true_positive), ("n", wt.reference_lesions), ("fp", wt.false_positive),
                           ("et_tp", et.true_positive), ("et_n", et.reference_lesions)):
            agg[key].append(value)
        for region, values in REGIONS.items():
            agg[region].append(dice(np.isin(out, values), np.isin(ref, values)))
    return {"sensitivity": sum(agg["tp"]) / max(1, sum(agg["n"])), "fp_per_case": sum(agg["fp"]) / len(keep),
            "et_sensitivity": sum(agg["et_tp"]) / max(1, sum(agg["et_n"])),
            **{r: float(np.mean(agg[r])) for r in REGIONS}}


def _line(s: dict[str, float]) -> str:
    return (f"WT lesions: sensitivity {s['sensitivity']:.3f} FP/case {s['fp_per_case']:5.2f} | ET lesion sensitivity "
            f"{s['et_sensitivity']:.3f} | Dice WT {s['WT']:.3f} TC {s['TC']:.3f} ET {s['ET']:.3f}")


def fit(model: str, train: list[str], validation: list[str], thresholds: list[float],
        probability_floor: float | None = None) -> dict:
    """Fit on ``train``'s candidates (after the model's floors, its probability floor replaced by
    ``probability_floor`` when given); print the validation table; return the classifier as manifest JSON."""
    from sklearn.linear_model import LogisticRegression

    post = _postprocessing(model, probability_floor)
    channels = [(c.name, c.value) for c in post.channels if c.value]
    xs, ys = [], []
    for _label, ref, _, labelled, x in (case for folder in train for case in _cases(folder, post)):
        hit = np.zeros(len(x) + 1, bool)
        hit[labelled[(ref > 0) & (labelled > 0)]] = True
        xs.append(x)
        ys.append(hit[1:])
    x, y = np.concatenate(xs), np.concatenate(ys)
    mean, scale = x.mean(0), x.std(0) + 1e-6
    lr = LogisticRegression(C=1.0, max_iter=1000).fit((x - mean) / scale, y)
    names = feature_names(channels)
    print(f"training candidates: {len(y)} ({y.sum()} true)")
    for name, c in zip(names, lr.coef_[0]):
        print(f"  {name:28} {c:+.3f}")
    classifier = LesionFilter(names, tuple(mean), tuple(scale), tuple(lr.coef_[0]), float(lr.intercept_[0]), 0.0)
    for folder in validation:
        cases = list(_cases(folder, post))
        print(folder)
        for t in [0.0, *thresholds]:
            print(f"  t {t:4.2f} " + _line(_summary(cases, [classifier.probability(c[4]) >= t for c in cases])),
                  flush=True)
    return {"features": list(names), "mean": mean.tolist(), "scale": scale.tolist(),
            "coefficients": lr.coef_[0].tolist(), "intercept": float(lr.intercept_[0])}


def floors(model: str, classifier_json: Path, min_probability: float, validation: list[str], value: int,
           replace_with: int, grid: list[float], probability_floor: float | None = None) -> None:
    """Print the validation table for label volume floors of ``value`` after the classifier."""
    from medcnncad.models.manifest import LabelVolumeFloor

    post = _postprocessing(model, probability_floor)
    data = json.loads(classifier_json.read_text())
    classifier = LesionFilter(tuple(data["features"]), tuple(data["mean"]), tuple(data["scale"]),
                                  tuple(data["coefficients"]), data["intercept"], min_probability)
    for folder in validation:
        cases = list(_cases(folder, post))
        keep = [classifier.probability(c[4]) >= min_probability for c in cases]
        print(folder)
        for min_ml in grid:
            print(f"  label {value} -> {replace_with} below {min_ml:4.2f} mL: "
                  + _line(_summary(cases, keep, [LabelVolumeFloor(value, min_ml, replace_with)])), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    floor_help = "replace the model's lesion probability floor (postprocessing.min_lesion_probability)"
    p = sub.add_parser("collect")
    p.add_argument("--probability-floor", type=float, help=floor_help)
    p.add_argument("--model", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--set", dest="sets", action="append", default=[], help="NAME:PRESET:INPUTS:FIRST_SEED:N")
    p.add_argument("--transplant-from", nargs="+", default=[],
                   help="real labelled case folders (training patients only): every phantom of --set carries one "
                        "of their tumors")
    p.add_argument("--cases", action="append", default=[],
                   help="NAME:PATH, your own cases: a CSV or a folder of case folders, as for medcnncad train --data")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction,
                   help="segment with (without) test-time augmentation; default: the model's default mode")
    p = sub.add_parser("fit")
    p.add_argument("--probability-floor", type=float, help=floor_help)
    p.add_argument("--model", required=True)
    p.add_argument("--train", nargs="+", required=True, help="folders of training-side npz cases")
    p.add_argument("--validation", nargs="+", required=True, help="folders of validation-side npz cases")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    p.add_argument("--save", type=Path, help="write the fitted classifier (JSON) here")
    p = sub.add_parser("floors")
    p.add_argument("--probability-floor", type=float, help=floor_help)
    p.add_argument("--model", required=True)
    p.add_argument("--classifier", type=Path, required=True, help="JSON from fit --save")
    p.add_argument("--min-probability", type=float, required=True)
    p.add_argument("--validation", nargs="+", required=True)
    p.add_argument("--value", type=int, default=4)
    p.add_argument("--replace-with", type=int, default=1)
    p.add_argument("--grid", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0])
    p = sub.add_parser("write")
    p.add_argument("--probability-floor", type=float, help="also write this lesion probability floor")
    p.add_argument("--tta", action="store_true", help="also make test-time augmentation the model's default")
    p.add_argument("--classifier", type=Path, required=True, help="JSON from fit --save")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--min-probability", type=float, required=True)
    p.add_argument("--description", default="")
    p.add_argument("--label-floor", help="VALUE:MIN_ML:REPLACE_WITH, e.g. 4:0.2:1")
    args = parser.parse_args()
    if args.command == "collect":
        collect(args.model, args.out, args.sets, args.tta, args.probability_floor, tuple(args.transplant_from))
        collect_files(args.model, args.out, args.cases, args.tta, args.probability_floor)
    elif args.command == "floors":
        floors(args.model, args.classifier, args.min_probability, args.validation, args.value, args.replace_with,
               args.grid, args.probability_floor)
    elif args.command == "fit":
        fitted = fit(args.model, args.train, args.validation, args.thresholds, args.probability_floor)
        if args.save:
            args.save.write_text(json.dumps(fitted, indent=2))
    else:
        manifest = json.loads(args.manifest.read_text())
        manifest["postprocessing"].pop("lesion_classifier", None)  # the schema_version 1 name
        manifest["postprocessing"]["lesion_filter"] = {
            **json.loads(args.classifier.read_text()), "min_probability": args.min_probability,
            "description": args.description}
        if args.probability_floor is not None:
            manifest["postprocessing"]["min_lesion_probability"] = args.probability_floor
        if args.tta:
            manifest["inference"]["test_time_augmentation"] = True
        if args.label_floor:
            value, min_ml, replace_with = args.label_floor.split(":")
            manifest["postprocessing"]["label_volume_floors"] = [
                {"value": int(value), "min_ml": float(min_ml), "replace_with": int(replace_with)}]
        args.manifest.write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    import sys

    from medcnncad.errors import MedCNNCADError

    try:
        main()
    except MedCNNCADError as exc:  # bad input: one line and exit 2, as the medcnncad command line does
        print(f"fit_lesion_filter: error: {exc}", file=sys.stderr)
        sys.exit(2)
