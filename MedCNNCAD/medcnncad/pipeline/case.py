"""One case end to end: read (files or DICOM series), segment, evaluate, write every output.

Shared by ``medcnncad segment``/``demo`` and the cohort runner, which keeps the loaded model
(:class:`~medcnncad.inference.segmenter.Segmenter`) across cases.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medcnncad.classification.grade import attach_classification
from medcnncad.data.dataset_json import (
    declared_contradicts,
    declared_volumes,
    engine_channel,
    model_engine_channels,
    reference_convention,
)
from medcnncad.data.real_cases import dicom_seg_segments, is_dicom_seg, read_dicom_seg_labels_on_grid
from medcnncad.errors import InputError
from medcnncad.inference.segmenter import ProgressCallback, Segmenter
from medcnncad.io.dicom_series import check_multiframe_geometry, series_files
from medcnncad.io.images import atomic_path, is_dicom_file, read_header, read_picked_volumes, read_volume, volume_index
from medcnncad.metrics.label_conventions import check_reference_values, relabel
from medcnncad.metrics.segmentation import check_label_image, check_same_grid, compute_metrics
from medcnncad.models.channels import display_channel
from medcnncad.models.manifest import Manifest
from medcnncad.preprocessing.brain_mask import brain_mask_choice
from medcnncad.preprocessing.chain import check_model_takes_choice
from medcnncad.reporting.case_outputs import check_inputs_spared, report_text, write_case_outputs
from medcnncad.reporting.input_files import file_fingerprint, input_fingerprints, resolved_paths
from medcnncad.retrieval.descriptors import case_descriptors

__all__ = ["process_case"]


def _read_inputs(inputs: dict[str, str], series: dict[str, str], picked: dict[str, int]) -> dict:
    """DICOM folders (with their series selector) and the ``picked`` volumes of 4D files (:func:`_volume_indices`;
    a file shared by several channels is read once) are read here; other files are left to the engine."""
    read: dict = {name: read_volume(path, series.get(name)) if Path(path).is_dir() else path
                  for name, path in inputs.items() if name not in picked}
    read.update(read_picked_volumes({name: inputs[name] for name in picked}, picked))
    return {name: read[name] for name in inputs}


def _volume_indices(inputs: dict[str, str], series: dict[str, str],
                    engine_names: Mapping[str, str | None] | None = None) -> dict[str, int]:
    """Channel -> 0-based volume index, for the channels whose input is a file with a selector (a 4D file). A file
    of a dataset folder (the Decathlon's 4D files, nnU-Net's ``<case>_XXXX``) must not be given as a channel its
    ``dataset.json`` says it is not (a swap would go unseen; ``engine_names``: the model's channel -> the engine
    channel it is, :func:`medcnncad.data.dataset_json.model_engine_channels`). A selector for a channel without an
    input is an error."""
    unknown = sorted(set(series) - set(inputs))
    if unknown:
        raise InputError(f"--series {unknown}: no --input with that channel name")
    picked = {name: volume_index(inputs[name], selector) for name, selector in series.items()
              if Path(inputs[name]).is_file()}
    files = {name: path for name, path in inputs.items() if Path(path).is_file()}
    orders = {path: declared_volumes(path) for path in set(files.values())}  # each file's once
    for name, path in files.items():
        declared = orders[path]
        if declared is None or (name not in picked and len(declared) > 1):  # a 4D file without a selector: the
            continue                                                         # reader asks for one
        index = picked.get(name, 0)
        channel = engine_names[name] if engine_names is not None and name in engine_names else engine_channel(name)
        if index in declared and declared_contradicts(declared[index], channel):
            raise InputError(f"{path}: volume {index} is {declared[index]} by its dataset.json, not {name} "
                             f"(its order: {', '.join(declared[i] for i in sorted(declared))})")
    return picked


def _dicom_sources(model_inputs, inputs: dict[str, str], series: dict[str, str]) -> list[str]:
    """Files of the DICOM series the result's grid comes from (the first channel given): a series folder's files, or
    one enhanced multi-frame DICOM file given as the input itself (or as a series' one file)."""
    first = next(c.name for c in model_inputs if c.name in inputs)
    path = Path(inputs[first])
    if not path.exists():  # said as the reader says it, not as a DICOM question
        raise InputError(f"{inputs[first]}: file not found (input {first})")
    if path.is_file() and is_dicom_file(path):
        files = [str(path)]
    elif path.is_dir():
        files = series_files(inputs[first], series.get(first))
    else:
        raise InputError(f"--dicom-seg: input {first} ({inputs[first]}) is not a DICOM series folder or DICOM file; "
                         f"a DICOM SEG must reference the series it was computed on")
    if len(files) == 1:
        _check_frames_referable(files[0], first)
    return files


def _check_frames_referable(path: str, channel: str) -> None:
    """Refuse, before the run, a multi-frame DICOM file the SEG cannot reference frame by frame: one without
    per-frame positions (not an enhanced image: an MR Image Storage object with NumberOfFrames has one position for
    all its frames; :func:`check_multiframe_geometry` refuses it, as the reader does, and frames out of spatial order;
    the message below is for a file pydicom cannot read)."""
    frames = read_header(path).GetSize()[2:3]
    if frames > (1,) and check_multiframe_geometry(path) is None:
        raise InputError(f"--dicom-seg: {path} (input {channel}) holds {frames[0]} frames without per-frame "
                         "positions (not an enhanced multi-frame image): a DICOM SEG cannot reference them frame by "
                         "frame")


def _read_reference(path: str, mapping: Mapping[int, int] | None,
                    manifest: Manifest) -> tuple[sitk.Image | None, np.ndarray]:
    """The reference label image and its (K, J, I) values in the model's convention (``mapping`` applied).

    A DICOM SEG has no grid of its own to compare: its image is ``None`` and its values here are its segment
    numbers, checked before the run; :func:`_reference_on_grid` rasterises it onto the first input's grid.
    """
    if is_dicom_seg(path):
        image, values = None, np.array(list(dicom_seg_segments(path)), np.uint8)
    else:
        image = read_volume(path)
        values = check_label_image(image, path)
    if mapping:
        values = relabel(values, mapping, path)
    check_reference_values(values, (label.value for label in manifest.labels), path)
    return image, values


def _dicom_seg_labels(path: str, mapping: Mapping[int, int] | None, manifest: Manifest) -> Mapping[int, int] | None:
    """The label map of a DICOM SEG reference: ``mapping`` when given, else its segments matched to the model's labels
    by name (the engine's own SEG: NCR, ED, ET -> 1, 2, 4); ``mapping`` unchanged for any other reference.

    Raises:
        InputError: a SEG whose segments are not all named as the model's labels and no ``mapping`` (a one-segment
            "Glioma" outline read as segment 1 would silently be the model's label 1).
    """
    if mapping or not is_dicom_seg(path):
        return mapping
    by_name = {label.name.casefold(): label.value for label in manifest.labels}
    segments = dicom_seg_segments(path)
    unnamed = {number: name for number, name in segments.items() if name.casefold() not in by_name}
    if unnamed:
        raise InputError(f"{path}: DICOM SEG segment(s) {unnamed} are not named as the model's labels "
                         f"({', '.join(label.name for label in manifest.labels)}); say which label each segment "
                         "number is with --reference-labels / reference_labels (e.g. 1=2 for a whole-tumor outline, "
                         "then read only WT)")
    return {number: by_name[name.casefold()] for number, name in segments.items()}


def _reference_on_grid(path: str, ref: tuple[sitk.Image | None, np.ndarray], mapping: Mapping[int, int] | None,
                       grid: sitk.Image) -> np.ndarray:
    """The reference's (K, J, I) values on ``grid`` (the first input's): a label file must lie on it already; a
    DICOM SEG's segments are rasterised onto it by scanner coordinates (value = segment number, then ``mapping``)."""
    image, values = ref
    if image is not None:
        check_same_grid(image, path, grid, "the first input channel")
        return values
    numbers = sitk.GetArrayFromImage(read_dicom_seg_labels_on_grid(path, grid))
    return relabel(numbers, mapping, path) if mapping else numbers


def process_case(segmenter: Segmenter, inputs: dict[str, str], out: str | Path, reference: str | None = None,
                 series: dict[str, str] | None = None, dicom_seg: bool = False,
                 progress: ProgressCallback | None = None, extra_timings: dict[str, float] | None = None,
                 classifier=None, tta: bool | None = None, dicom_sr: bool = False,
                 descriptors: bool = True, reference_labels: Mapping[int, int] | None = None,
                 brain_mask: str | None = None, brain_mask_from: str | None = None) -> dict:
    """Segment (+ classify lesions, + evaluate against ``reference``) one case; write its outputs.

    Returns the report (also written as ``out/report.json``; it names the inputs and the reference by resolved
    absolute paths, with each file's size and SHA-256: :mod:`medcnncad.reporting.input_files`). ``series`` picks
    DICOM series by
    channel name; ``dicom_seg`` adds ``labels.seg.dcm`` and ``dicom_sr`` the lesion measurements as
    ``labels.sr.dcm`` (TID 1500, referencing that SEG); ``classifier`` (a
    :class:`~medcnncad.classification.grade.LoadedClassifier`) classifies the lesions; ``tta`` adds
    test-time augmentation (4x the network time) and the uncertainty map (``None``: the model's default);
    ``descriptors`` adds each lesion's similar-case retrieval descriptors and thumbnail
    (:func:`medcnncad.retrieval.descriptors.case_descriptors`: one encoder pass per lesion, computed by the
    writer while it compresses the volumes). ``reference_labels`` maps the reference's label values onto the
    model's (:func:`medcnncad.metrics.label_conventions.parse_label_map`, e.g. BraTS 2023's 3 -> 4); a label file of
    a dataset folder's ``labelsTr/`` is read in its ``dataset.json``'s convention, and one given against that is
    refused (:func:`medcnncad.data.dataset_json.reference_convention`); a reference holding a value that is none of
    the model's, after it, is refused before the network runs. ``brain_mask`` (a mask file on the first input's
    grid) or ``brain_mask_from`` (a given sequence) replace the model's rule for the brain mask of its clinical
    preprocessing (:func:`medcnncad.preprocessing.brain_mask.brain_mask_choice`; the report's ``brain_mask_file``
    names the file with its SHA-256).
    """
    progress = progress or (lambda stage, fraction: None)
    check_inputs_spared(out, [*inputs.values(), reference, brain_mask])  # before the network runs; "" is refused
    out = Path(out)
    series = series or {}
    sources = _dicom_sources(segmenter.manifest.inputs, inputs, series) if dicom_seg or dicom_sr else None
    extra = dict(extra_timings or {})
    t0 = time.perf_counter()
    read_files = input_fingerprints(inputs)  # what this run reads, for the HTML report's check (input_files.py)
    reference_file = file_fingerprint(reference) if reference else None
    mask_file = file_fingerprint(brain_mask) if brain_mask else None
    named = f"brain mask {Path(brain_mask).resolve()}" if brain_mask else None  # as the report names the inputs
    check_model_takes_choice(segmenter.manifest.clinical, bool(brain_mask or brain_mask_from),
                             f"model {segmenter.manifest.id}")  # before the mask is read
    choice = brain_mask_choice(brain_mask, brain_mask_from, named)
    if reference:  # a label file of a dataset folder is read in its dataset.json's convention
        reference_labels = reference_convention(reference, reference_labels, segmenter.manifest)
        reference_labels = _dicom_seg_labels(reference, reference_labels, segmenter.manifest)
    ref = _read_reference(reference, reference_labels, segmenter.manifest) if reference else None
    reading_s = time.perf_counter() - t0
    volumes = _volume_indices(inputs, series, model_engine_channels(segmenter.manifest))
    result = segmenter.run(_read_inputs(inputs, series, volumes), progress=progress, tta=tta,
                           keep_network_input=descriptors, brain_mask=choice)
    if classifier is not None:
        progress("classify", 0.0)
        attach_classification(result, classifier)
    metrics = ref_array = None
    if reference and ref is not None:
        t0 = time.perf_counter()
        ref_array = _reference_on_grid(reference, ref, reference_labels, result.reference)
        metrics = compute_metrics(result.label_map, ref_array, result.reference.GetSpacing(),
                                  result.manifest.structures())
        extra["metrics"] = reading_s + time.perf_counter() - t0

    def described() -> list:  # run by the writer while the volumes compress
        progress("descriptors", 0.0)
        found = case_descriptors(result, segmenter.model, segmenter.device)
        progress("write", 0.5)
        return found

    if not descriptors:
        progress("write", 0.0)
    t0 = time.perf_counter()
    try:
        outputs = write_case_outputs(result, out, background=_display_channel(result), metrics=metrics,
                                     reference_labels=ref_array, inputs=resolved_paths(inputs), extra_timings=extra,
                                     dicom_sources=sources, dicom_sr=dicom_sr,
                                     descriptors=described if descriptors else None)
    finally:
        result.network_input = None  # held for the descriptors only
    report = json.loads(outputs.files["report"].read_text())
    timings = report["timings_s"]
    timings["write"] = round(time.perf_counter() - t0 - timings.get("retrieval_descriptors", 0.0), 4)
    report["reference"] = str(Path(reference).resolve()) if reference else None
    report["input_files"] = read_files  # channel -> size and SHA-256 of its file (not for DICOM folders)
    if reference_file is not None:
        report["reference_file"] = reference_file
    if brain_mask:  # path, and size and SHA-256 when it is a file (not a DICOM folder)
        report["brain_mask_file"] = {"path": str(Path(brain_mask).resolve()), **(mask_file or {})}
    if volumes:
        report["input_volumes"] = volumes  # channel -> 0-based volume of its 4D input file
    if reference and reference_labels:
        report["reference_labels"] = {str(k): int(v) for k, v in sorted(reference_labels.items())}
    with atomic_path(outputs.files["report"]) as tmp:  # the report is replaced whole or not at all
        tmp.write_text(report_text(report) + "\n")
    return report


def _display_channel(result):
    """The image shown under the overlay: a post-contrast channel when given, else the first."""
    name = display_channel(list(result.images))
    return result.images[name] if name is not None else result.reference
