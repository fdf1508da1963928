"""Case outputs: label map (.nii.gz, .seg.nrrd), probability maps, report.json and PNG overlays.

Everything is first written into a hidden staging folder inside the output folder and
moved into place only when every file was written, so a failure leaves the output
folder as it was.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import json
import math
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medcnncad import INTENDED_USE, __version__
from medcnncad.errors import InputError
from medcnncad.inference.result import SegmentationResult
from medcnncad.inference.scoring import (
    CASE_RULE,
    calibration_words,
    case_calibration_note,
    case_probability,
    case_score,
)
from medcnncad.io.images import UINT8_SCALE, staged_outputs, write_image, write_probability_map
from medcnncad.io.segfile import write_seg_nrrd
from medcnncad.metrics.segmentation import BRATS_2023, DETECTION_RULE, StructureMetrics
from medcnncad.models.registry import model_format_of, model_source
from medcnncad.retrieval.descriptors import LesionDescriptor, descriptors_json

__all__ = ["CaseOutputs", "json_safe", "report_text", "build_report", "write_case_outputs", "render_overlays",
           "OUTPUT_PATTERNS", "REPORT_FILES", "check_inputs_spared",
           "overlay_caption", "model_statement", "summary_table", "render_brain_mask", "brain_mask_caption"]

@dataclass
class CaseOutputs:
    """Paths written for one case."""

    folder: Path
    files: dict[str, Path] = field(default_factory=dict)


def report_text(value: Any, level: int = 0) -> str:
    """JSON text of a report: objects indented by two spaces per level, and each element of an array of
    objects on a line of its own, written compactly by the C encoder (``json.dumps(indent=2)`` runs the
    pure-Python encoder over every value: 0.098 s against 0.040 s for the 4784 lesions of a random-weight
    network, and the report is written twice).
    ``json.loads`` gives back what ``json.dumps`` would (tested); keys must be strings."""
    pad = "  " * (level + 1)
    if isinstance(value, dict) and value:
        items = (f"{pad}{json.dumps(key)}: {report_text(item, level + 1)}" for key, item in value.items())
        return "{\n" + ",\n".join(items) + "\n" + "  " * level + "}"
    if isinstance(value, (list, tuple)) and value and all(isinstance(item, dict) for item in value):
        return "[\n" + ",\n".join(pad + json.dumps(item) for item in value) + "\n" + "  " * level + "]"
    return json.dumps(value)


def json_safe(value: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, tuples -> lists."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def build_report(result: SegmentationResult, metrics: Mapping[str, StructureMetrics] | None = None,
                 inputs: Mapping[str, str] | None = None, outputs: Mapping[str, str] | None = None,
                 extra_timings: Mapping[str, float] | None = None,
                 descriptors: Sequence[LesionDescriptor] | None = None) -> dict[str, Any]:
    """The ``report.json`` content for one case (``retrieval``: the lesions' descriptors, when given)."""
    m = result.manifest
    timings = dict(result.timings)
    timings.update(extra_timings or {})
    report: dict[str, Any] = {
        "medcnncad_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "intended_use": m.intended_use or INTENDED_USE,
        "model": {"id": m.id, "name": m.name, "version": m.version, "weights_sha256": m.weights_sha256,
                  "trained_on": m.trained_on, "folder": str(m.folder), "format": model_format_of(m),
                  "source": model_source(m)},
        "device": result.device,
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "inputs": dict(inputs or {}),
        "missing_channels": result.missing_channels,
        "warnings": result.warnings,
        "grid": {"size_ijk": list(result.reference.GetSize()), "spacing_mm": list(result.reference.GetSpacing()),
                 "origin_lps_mm": list(result.reference.GetOrigin()),
                 "direction": list(result.reference.GetDirection())},
        "labels": [{"name": x.name, "value": x.value, "color": list(x.color)} for x in m.labels],
        "regions": [{"name": r.name, "labels": list(r.labels)} for r in m.regions],
        "lesions": [lesion.to_json() for lesion in result.lesions],
        "lesion_filter": _lesion_filter(m),
        "removed_candidates": _removed_candidates(result),
        "lesion_detection_rule": DETECTION_RULE,
        "lesion_detection_rule_brats2023": BRATS_2023.description,
        "outputs": dict(outputs or {}),
        "probability_maps": _probability_encoding(m.postprocessing.probability_file),
    }
    report["case"] = {"abnormality_probability": case_probability(result), "score_uncalibrated": case_score(result),
                      **case_calibration_note(result), "rule": CASE_RULE}
    if result.uncertainty is not None:
        report["uncertainty"] = {"method": f"test-time augmentation, {result.tta_passes} passes (identity and flips)",
                                 "map": "standard deviation of the foreground probability over the passes",
                                 "cost": f"{result.tta_passes}x the network time",
                                 "max": float(result.uncertainty.max())}
    if result.execution_policy:
        report["execution_policy"] = result.execution_policy
    if result.preprocessing:
        report["clinical_preprocessing"] = result.preprocessing
    if result.classification is not None:
        report["classification"] = result.classification
    if metrics is not None:
        report["metrics"] = {name: s.to_json() for name, s in metrics.items()}
    if descriptors is not None:
        report["retrieval"] = descriptors_json(descriptors, result)
    return json_safe(report)


def _lesion_filter(manifest: Any) -> dict[str, Any]:
    """The manifest's rule for dropping components from the label map (``postprocessing``)."""
    post = manifest.postprocessing
    return {"min_volume_ml": post.min_lesion_ml, "min_max_probability": post.min_lesion_probability,
            "rule": "26-connected foreground components smaller than min_volume_ml, or whose largest foreground "
                    "probability is below min_max_probability, are removed from the label map and the lesion "
                    "list; the probability maps keep them",
            "chosen_with_test_time_augmentation": manifest.inference.test_time_augmentation,
            **_vessel_filter(manifest), **_classifier_filter(post.lesion_filter), **_label_floors(manifest),
            **_core_refinement(manifest)}


def _vessel_filter(manifest: Any) -> dict[str, Any]:
    """The manifest's vessel filter as report JSON, with label names (empty when the model has none)."""
    spec = manifest.postprocessing.vessel_filter
    if spec is None:
        return {}
    names = {x.value: x.name for x in manifest.labels}
    return {"vessel_filter": {
        "enhancing_labels": [names[v] for v in spec.enhancing_labels], "max_radius_mm": spec.max_radius_mm,
        "min_length_mm": spec.min_length_mm, "min_enhancing_fraction": spec.min_enhancing_fraction,
        "max_fill_ratio": spec.max_fill_ratio, "min_ml": spec.min_ml, "description": spec.description,
        "rule": "after the volume and probability floors, before the lesion filter: a component of at least min_ml "
                "whose largest inscribed radius is at most max_radius_mm, whose length along its principal axis is "
                "at least min_length_mm, with at least min_enhancing_fraction of its voxels in enhancing_labels and "
                "solid in its axial array slices (hole-filled volume at most max_fill_ratio x its volume) is removed "
                "as a dural sinus or vessel mimic"}}


def _core_refinement(manifest: Any) -> dict[str, Any]:
    """The manifest's tumor core refinement as report JSON, with label names (empty when the model has none)."""
    spec = manifest.postprocessing.core_refinement
    if spec is None:
        return {}
    names = {x.value: x.name for x in manifest.labels}
    return {"core_refinement": {
        "core_label": names[spec.core_label], "shell_label": names[spec.shell_label],
        "fixed_labels": [names[v] for v in spec.fixed_labels], "required_inputs": list(spec.required_inputs),
        "max_fixed_share": spec.max_fixed_share, "components": spec.components,
        "network_weight": spec.network_weight, "smoothing_mm": spec.smoothing_mm,
        "max_volume_change": spec.max_volume_change,
        "rule": "applied last, only with all required_inputs and when fixed_labels are under max_fixed_share of the "
                "predicted core: inside the predicted tumor the smoothed inputs are clustered (Gaussian mixture), "
                "and a voxel is core where network_weight x the network's core probability + (1 - network_weight) "
                "x its cluster's core vote exceeds 0.5; core components sharing no voxel with the network's core stay "
                "shell, and a case whose core would change volume more than max_volume_change x either way keeps "
                "the network's labels; the whole tumor, the fixed labels and the probability maps do not change "
                "(the case's warnings say when labels were moved)"}}


def _label_floors(manifest: Any) -> dict[str, Any]:
    """The manifest's label volume floors as report JSON, with label names (empty when the model has none)."""
    floors = manifest.postprocessing.label_volume_floors
    if not floors:
        return {}
    names = {0: "background", **{x.value: x.name for x in manifest.labels}}
    return {"label_volume_floors": [{"value": f.value, "name": names[f.value], "min_ml": f.min_ml,
                                     "replace_with": f.replace_with, "replace_with_name": names[f.replace_with]}
                                    for f in floors],
            "label_volume_floors_rule": "last, when a case's total volume of label value is below min_ml, those "
                                        "voxels are relabelled replace_with"}


REMOVED_LISTED = 10


def _removed_candidates(result: Any) -> dict[str, Any]:
    """What post-processing removed from the label map: counts per stage and the largest
    :data:`REMOVED_LISTED` components (the result lists them largest first), centres in LPS and RAS mm."""
    removed = result.removed_candidates
    by_stage: dict[str, int] = {}
    for candidate in removed:
        by_stage[candidate.stage] = by_stage.get(candidate.stage, 0) + 1
    return {"count": len(removed), "by_stage": by_stage,
            "largest": [c.to_json(result.reference) for c in removed[:REMOVED_LISTED]],
            "note": "removed from the label map and the lesion list by the model's post-processing (lesion_filter, "
                    "including its vessel_filter); "
                    "still visible in the probability maps"}


def _classifier_filter(classifier: Any) -> dict[str, Any]:
    """The second-stage (logistic) part of ``lesion_filter`` (empty when the model has none)."""
    if classifier is None:
        return {}
    return {"classifier": {"features": list(classifier.features), "min_probability": classifier.min_probability,
                           "description": classifier.description,
                           "rule": "then components whose classifier probability of being a true lesion is below "
                                   "min_probability are removed too"}}


def _probability_encoding(encoding: str) -> dict[str, Any]:
    """How the ``prob_*.nii.gz`` files store probabilities (manifest ``postprocessing.probability_file``)."""
    if encoding == "uint8":
        return {"encoding": "uint8", "scl_slope": UINT8_SCALE, "max_quantisation_error": UINT8_SCALE / 2,
                "note": "stored value = round(255 p); NIfTI readers return p via scl_slope 1/255"}
    return {"encoding": "float32", "max_quantisation_error": 0.0}


def _display_slices(image: sitk.Image, center_ijk: tuple[float, float, float]) -> list[tuple[str, Any]]:
    """Axial, coronal and sagittal slices of an LPS-oriented image through ``center_ijk``."""
    arr = sitk.GetArrayViewFromImage(image)  # K (S), J (P), I (L)
    i, j, k = (int(round(c)) for c in center_ijk)
    return [("axial", arr[k, :, :]), ("coronal", arr[::-1, j, :]), ("sagittal", arr[::-1, :, i])]


VIEW_EDGES = {"axial": ("R", "L", "A", "P"), "coronal": ("R", "L", "S", "I"), "sagittal": ("A", "P", "S", "I")}
"""The patient directions at each view's left, right, top and bottom edge, for the slices of
:func:`_display_slices` (radiological convention: the patient's right on the image's left)."""


def _mark_edges(ax: Any, view: str, shape: tuple[int, ...]) -> None:
    """Write the patient directions of ``view`` (:data:`VIEW_EDGES`) inside the middle of each edge of its
    (rows, columns) ``shape`` slice drawn in ``ax``."""
    left, right, top, bottom = VIEW_EDGES[view]
    rows, cols = shape
    style = {"color": "yellow", "fontsize": 9, "fontweight": "bold"}
    ax.text(0, rows / 2, left, ha="left", va="center", **style)
    ax.text(cols - 1, rows / 2, right, ha="right", va="center", **style)
    ax.text(cols / 2, 0, top, ha="center", va="top", **style)
    ax.text(cols / 2, rows - 1, bottom, ha="center", va="bottom", **style)


def _aspects(image: sitk.Image) -> list[float]:
    sx, sy, sz = image.GetSpacing()
    return [sy / sx, sz / sx, sz / sy]


def overlay_caption(with_reference: bool) -> str:
    """What the overlay shows: the reference is named only when one was drawn."""
    if with_reference:
        return "AI labels filled, reference outlined in white"
    return "AI labels filled (no reference given)"


def model_statement(intended_use: str, trained_on: str) -> list[str]:
    """The model's own intended-use text (the package's :data:`medcnncad.INTENDED_USE` when the manifest has none) and
    what it was trained on, as the HTML banner and the overlay title state them: one sentence per item."""
    lines = [intended_use.strip() or INTENDED_USE]
    if trained_on.strip():
        lines.append(f"Trained on: {trained_on.strip()}.")
    return lines


def _overlay_title(result: SegmentationResult, with_reference: bool) -> str:
    """The overlay's title: model and caption, then the model's intended use and training data, wrapped to the
    figure's width."""
    m = result.manifest
    lines = [f"{m.name} - {overlay_caption(with_reference)}", *model_statement(m.intended_use, m.trained_on)]
    return "\n".join(textwrap.fill(line, 170) for line in lines)


def render_overlays(result: SegmentationResult, background: sitk.Image, out_png: str | Path,
                    reference_labels: np.ndarray | None = None, title: str = "") -> Path:
    """Three orthogonal slices (radiological convention) through the largest lesion, each edge marked with its
    patient direction (R/L, A/P, S/I).

    AI labels are filled in their manifest colours; reference boundaries (if given) are
    drawn as white contours.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def lps(img: sitk.Image) -> sitk.Image:  # no copy when already LPS-aligned (most volumes)
        return img if np.allclose(img.GetDirection(), np.eye(3).ravel()) else sitk.DICOMOrient(img, "LPS")

    bg = lps(background)  # its own pixel type: the three slices become floats, not the volume
    labels = lps(result.label_image())
    ref = None
    if reference_labels is not None:
        ref_img = sitk.GetImageFromArray(reference_labels.astype(np.uint8))
        ref_img.CopyInformation(result.reference)
        ref = lps(ref_img)
    largest = max(result.lesions, key=lambda les: les.voxel_count, default=None)
    if largest is not None:
        center = labels.TransformPhysicalPointToContinuousIndex(largest.centroid_lps_mm)
    else:
        center = tuple((n - 1) / 2 for n in labels.GetSize())
    colors = np.zeros((256, 4))
    for x in result.manifest.labels:
        colors[x.value] = (*x.color, 0.45)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4), facecolor="black")
    for ax, (name, img), (_, lab), aspect in zip(axes, _display_slices(bg, center), _display_slices(labels, center),
                                                  _aspects(bg)):
        img = img.astype(np.float32)
        lo, hi = np.percentile(img, [1, 99.5]) if img.any() else (0, 1)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
        ax.imshow(colors[lab], aspect=aspect, interpolation="nearest")
        ax.set_title(name, color="white", fontsize=10)
        ax.axis("off")
        _mark_edges(ax, name, img.shape)
    if ref is not None:
        for ax, (_, rl) in zip(axes, _display_slices(ref, center)):
            if rl.any():
                ax.contour(rl > 0, levels=[0.5], colors="white", linewidths=0.8)
    fig.suptitle(title or _overlay_title(result, ref is not None), color="white", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90, facecolor="black")
    plt.close(fig)
    return Path(out_png)


BRAIN_OUTLINE = (1.0, 0.8, 0.1)
"""The brain mask's outline colour: bright, to stand out on grey skull and scalp."""


BRAIN_MASK_SLICES = 8
"""Axial slices of the brain-mask figure, evenly through the mask's extent."""


def brain_mask_caption(step: Mapping[str, Any] | None) -> str:
    """The brain-mask figure's caption: where the mask came from and what to check (``step``: the report's
    brain-mask step of the clinical preprocessing)."""
    how = "given by the reader" if step and step.get("mode") == "given" else \
        f"deepbet on {step.get('source')}" if step else "the clinical chain's"
    return (f"Brain mask ({how}), outlined on {BRAIN_MASK_SLICES} axial slices through it, highest first: "
            "nothing outside it was segmented. Check that it leaves out the eyes, sinuses and skull and cuts no "
            "tumor")


def brain_mask_levels(inside_kji: np.ndarray, count: int = BRAIN_MASK_SLICES) -> np.ndarray:
    """Up to ``count`` axial slice indices (K) evenly inside the extent of a (K, J, I) mask, lowest first: its first
    and last slice are left out unless the mask is thinner than ``count`` slices (then each slice comes once)."""
    levels = np.flatnonzero(inside_kji.any(axis=(1, 2)))
    return np.unique(np.linspace(levels[0], levels[-1], count + 2).round().astype(int)[1:-1])


def render_brain_mask(result: SegmentationResult, background: sitk.Image, out_png: str | Path) -> Path:
    """The brain mask the model was shown, outlined on :data:`BRAIN_MASK_SLICES` axial slices of ``background`` (the
    reference sequence as read, so that what the mask left out shows too)
    evenly from the mask's lowest to its highest slice (radiological convention, LPS-oriented): where a reader sees
    at a glance whether it takes in the eyes or sinuses or cuts the brain. ``result.brain_mask`` is (K, J, I) on the
    result's reference grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert result.brain_mask is not None
    mask_image = sitk.GetImageFromArray(result.brain_mask)
    mask_image.CopyInformation(result.reference)
    bg, mask = (sitk.DICOMOrient(image, "LPS") for image in (background, mask_image))
    arr, inside = sitk.GetArrayViewFromImage(bg), sitk.GetArrayViewFromImage(mask) > 0
    picks = brain_mask_levels(inside)
    aspect = bg.GetSpacing()[1] / bg.GetSpacing()[0]
    fig, axes = plt.subplots(2, BRAIN_MASK_SLICES // 2, figsize=(12, 6.4), facecolor="black")
    for ax in axes.ravel():
        ax.axis("off")
    for ax, k in zip(axes.ravel(), picks[::-1]):  # top row: highest slices, as a radiologist scrolls up
        img = arr[k].astype(np.float32)
        lo, hi = np.percentile(img, [1, 99.5]) if img.any() else (0, 1)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
        if inside[k].any():
            ax.contour(inside[k], levels=[0.5], colors=[BRAIN_OUTLINE], linewidths=1.4)
        ax.set_title(f"slice {k + 1} of {arr.shape[0]}", color="white", fontsize=8)
        _mark_edges(ax, "axial", img.shape)
    step = next((s for s in result.preprocessing if s.get("step") == "brain_mask"), None)
    fig.suptitle(brain_mask_caption(step), color="white", fontsize=8, wrap=True)
    fig.tight_layout()
    fig.savefig(out_png, dpi=80, facecolor="black")
    plt.close(fig)
    return Path(out_png)


OUTPUT_PATTERNS = ("labels.nii.gz", "labels.seg.nrrd", "overlay.png", "report.json", "prob_*.nii.gz",
                   "uncertainty.nii.gz", "brain_mask.nii.gz", "brain_mask.png", "labels.seg.dcm", "labels.sr.dcm",
                   "lesion_*.png")
"""The names a case run may write into its output folder (``*``: a channel name or a lesion id)."""

REPORT_FILES = ("report.html", "report.pdf")
"""What ``medcnncad report`` writes into a case folder (:func:`medcnncad.reporting.html.case_report`,
:func:`~medcnncad.reporting.html.html_to_pdf`): made from one run's report.json, so a new run removes them."""


def check_inputs_spared(out_dir: str | Path, paths: Iterable[str | Path | None]) -> None:
    """Refuse a run whose outputs would replace one of its own input files (e.g. ``--out`` the folder that holds the
    reference ``labels.nii.gz``), before anything runs.

    Raises:
        InputError: naming the input file and the output folder.
    """
    if not str(out_dir).strip():
        raise InputError("output folder: empty path (give a folder, e.g. --out results/case1)")
    folder = Path(out_dir).resolve()
    for path in paths:
        if path is None or not Path(path).is_file():
            continue
        given = Path(path).absolute()  # the name in its folder (a symlink's own), and the file it points to
        for parent, name in ((given.parent.resolve(), given.name), (given.resolve().parent, given.resolve().name)):
            if parent == folder and any(fnmatch.fnmatch(name.lower(), p) for p in OUTPUT_PATTERNS):
                raise InputError(f"{path}: this run would replace it with its own {name.lower()} in {out_dir}; "
                                 "write the outputs to another folder")


def _stale_outputs(out: Path, written: Iterable[str]) -> list[Path]:
    """Files an earlier run listed in ``out``'s report.json (``outputs``) that this run does not write again (its
    uncertainty map after a run without test-time augmentation, another case's lesion thumbnails), and the HTML/PDF
    report made from that run (:data:`REPORT_FILES`): removed, so that the folder holds one run. Only names of
    :data:`OUTPUT_PATTERNS` and :data:`REPORT_FILES` are touched, and only beside an earlier run's report.json."""
    try:
        earlier = json.loads((out / "report.json").read_text()).get("outputs") or {}
    except (OSError, ValueError, AttributeError):
        return []
    keep = set(written)
    listed = [name for name in earlier.values() if isinstance(name, str) and name not in keep
              and Path(name).name == name and any(fnmatch.fnmatch(name, p) for p in OUTPUT_PATTERNS)]
    return [out / name for name in [*listed, *REPORT_FILES] if (out / name).is_file()]


def write_case_outputs(result: SegmentationResult, out_dir: str | Path, background: sitk.Image | None = None,
                       metrics: Mapping[str, StructureMetrics] | None = None,
                       reference_labels: np.ndarray | None = None, inputs: Mapping[str, str] | None = None,
                       extra_timings: Mapping[str, float] | None = None,
                       dicom_sources: list[str] | None = None, dicom_sr: bool = False,
                       descriptors: Sequence[LesionDescriptor] | Callable[[], Sequence[LesionDescriptor]] | None = None
                       ) -> CaseOutputs:
    """Write every output of one case atomically into ``out_dir``.

    Files: ``labels.nii.gz``, ``labels.seg.nrrd``, ``prob_<channel>.nii.gz``,
    ``overlay.png``, ``report.json``, ``uncertainty.nii.gz`` (with test-time augmentation),
    ``brain_mask.nii.gz`` and ``brain_mask.png`` (when the clinical chain used a brain mask: :func:`render_brain_mask`)
    and, with ``dicom_sources`` (the files of the DICOM series the result's grid comes
    from), ``labels.seg.dcm``; with ``descriptors`` (similar-case retrieval), report.json's
    ``retrieval`` block and a thumbnail ``lesion_<id>.png`` per retrieval lesion. ``descriptors`` may be a
    function that computes them: it then runs here while the volumes compress in two threads, and its time
    is the report's ``retrieval_descriptors``.
    """
    out = Path(out_dir)
    stale: list[Path] = []  # an earlier run's files this one does not write: removed as the new ones appear
    with staged_outputs(out, stale) as staging:  # all files appear together, or none does
        names = {"labels": "labels.nii.gz", "segmentation": "labels.seg.nrrd", "overlay": "overlay.png",
                 "report": "report.json"}
        names.update({f"prob_{channel}": f"prob_{channel}.nii.gz" for channel in result.probabilities})
        if result.uncertainty is not None:
            names["uncertainty"] = "uncertainty.nii.gz"
        if result.brain_mask is not None:
            names["brain_mask"] = "brain_mask.nii.gz"
            names["brain_mask_figure"] = "brain_mask.png"
        # The volumes compress in two threads while this one writes the rest; leaving the with
        # block (also on an error or Ctrl-C) waits for them, before the staging folder goes.
        with ThreadPoolExecutor(max_workers=2) as pool:
            jobs = [pool.submit(write_image, result.label_image(), staging / names["labels"])]
            encoding = result.manifest.postprocessing.probability_file
            jobs += [pool.submit(write_probability_map, probs, result.reference, staging / names[f"prob_{channel}"],
                                 encoding) for channel, probs in result.probabilities.items()]
            if result.uncertainty is not None:
                jobs.append(pool.submit(write_image, result.uncertainty_image(), staging / names["uncertainty"]))
            if result.brain_mask is not None:
                jobs.append(pool.submit(write_image, result.brain_mask_image(), staging / names["brain_mask"]))
            if callable(descriptors):
                t0 = time.perf_counter()
                descriptors = descriptors()
                extra_timings = {**(extra_timings or {}), "retrieval_descriptors": time.perf_counter() - t0}
            write_seg_nrrd(result.label_map, result.reference, result.manifest, staging / names["segmentation"])
            render_overlays(result, background if background is not None else result.reference,
                            staging / names["overlay"], reference_labels)
            if result.brain_mask is not None:  # on the sequence as read: what the mask left out shows too
                shown = result.unmasked_reference if result.unmasked_reference is not None else result.reference
                render_brain_mask(result, shown, staging / names["brain_mask_figure"])
            for job in jobs:
                job.result()
        if dicom_sources:
            # lazy: highdicom + pydicom take ~1 s to import and only --dicom-seg needs them (and Slicer's
            # run path must not require them)
            from medcnncad.reporting.dicom_seg import write_dicom_seg

            names["dicom_seg"] = "labels.seg.dcm"
            write_dicom_seg(result.label_map, result.manifest, dicom_sources, staging / names["dicom_seg"])
            if dicom_sr:
                from medcnncad.reporting.dicom_sr import write_dicom_sr  # lazy: as the SEG writer (highdicom)

                names["dicom_sr"] = "labels.sr.dcm"
                write_dicom_sr(result, staging / names["dicom_seg"], dicom_sources, staging / names["dicom_sr"])
        for descriptor in descriptors or ():
            key = f"lesion_{descriptor.lesion_id}"
            names[key] = f"{key}.png"
            sitk.WriteImage(sitk.GetImageFromArray(descriptor.thumbnail), str(staging / names[key]))
        report = build_report(result, metrics, inputs, names, extra_timings, descriptors)
        (staging / names["report"]).write_text(report_text(report) + "\n")
        stale += _stale_outputs(out, names.values())
    return CaseOutputs(out, {key: out / name for key, name in names.items()})


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def summary_table(report: Mapping[str, Any]) -> str:
    """A short plain-text summary of a report (model, lesions, post-processing notes, metrics)."""
    model = report["model"]
    lines = [f"MedCNNCAD {report['medcnncad_version']} - {report['intended_use']}",
             f"model {model['id']} {model['version']} (sha256 {model['weights_sha256'][:12]}...), "
             f"trained on: {model['trained_on']}",
             f"device {report['device']}, total {sum(report['timings_s'].values()):.2f} s"]
    structures = [x["name"] for x in report["labels"]] + [r["name"] for r in report["regions"]]
    lesions = report["lesions"]
    lines.append("")
    lines.append(f"{'structure':<10}{'lesions':>8}{'volume mL':>11}{'max diam mm':>13}")
    for name in structures:
        mine = [les for les in lesions if les["structure"] == name]
        lines.append(f"{name:<10}{len(mine):>8}{sum(les['volume_ml'] for les in mine):>11.2f}"
                     f"{max((les['longest_diameter_mm'] for les in mine), default=0.0):>13.1f}")
    classification = report.get("classification")
    if classification:
        positive = classification["positive_class"]
        lines.append("")
        lines.append(f"lesion grade classifier {classification['model']['id']} {classification['model']['version']} "
                     f"(trained on: {classification['model']['trained_on']})")
        for les in classification["lesions"]:
            spread = "" if les["uncertainty"] is None else f" +- {les['uncertainty']:.3f}"
            lines.append(f"  {classification['structure']} lesion {les['lesion_id']}: P({positive}) "
                         f"{les['positive_probability']:.3f}{spread} -> {les['predicted']}")
        case = classification["case"]
        if case["predicted"] is not None:
            lines.append(f"  case: P({positive}) {case[f'probability_{positive}']:.3f} -> {case['predicted']}")
    removed = report.get("removed_candidates", {})
    if removed.get("count"):
        stages = ", ".join(f"{n} by {stage}" for stage, n in removed["by_stage"].items())
        lines.append(f"{removed['count']} candidate component(s) removed by the model's post-processing ({stages}); "
                     "listed in report.json (removed_candidates), still in the probability maps")
    lines += [f"note: {warning}" for warning in report.get("warnings", [])]  # e.g. labels the post-processing moved
    lines.append(f"case abnormality probability {report['case']['abnormality_probability']:.3f} "
                 f"({calibration_words(report['case'])})")
    if "metrics" in report:
        lines.append("")
        lines.append(f"{'structure':<10}{'Dice':>7}{'HD95 mm':>9}{'ASSD mm':>9}{'sens':>7}{'prec':>7}{'dVol mL':>9}")
        for name, m in report["metrics"].items():
            lines.append(f"{name:<10}{_fmt(m['dice']):>7}{_fmt(m['hd95_mm'], 2):>9}{_fmt(m['assd_mm'], 2):>9}"
                         f"{_fmt(m['sensitivity'], 2):>7}{_fmt(m['precision'], 2):>7}{m['volume_diff_ml']:>9.2f}")
    return "\n".join(lines)
