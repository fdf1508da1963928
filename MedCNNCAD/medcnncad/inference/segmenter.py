"""The segmentation pipeline: validate inputs, preprocess, sliding-window inference, map back.

Usage::

    >>> model = load_model("brats-demo-unet")                       # doctest: +SKIP
    >>> result = Segmenter(model).run({"T1": t1, "T1c": t1c, ...})   # doctest: +SKIP
    >>> result.label_map.shape   # (K, J, I) of the first input channel

Probabilities come back on the first input channel's grid, as float arrays in [0, 1]
in (K, J, I) order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from medcnncad.errors import InputError
from medcnncad.inference.refine import refine_core
from medcnncad.inference.stitch import stream_sliding_window, window_slices
from medcnncad.io.images import available_memory_bytes, check_finite, geometry_text, read_volume, same_space
from medcnncad.lesions.components import Lesion, boxed_components, find_lesions, mask_from_box
from medcnncad.lesions.lesion_filter import RemovedCandidate, apply_lesion_classifier, removed_candidates
from medcnncad.models.loaded import LoadedModel
from medcnncad.models.manifest import LabelVolumeFloor, Manifest
from medcnncad.models.preprocessing import lps_to_ras, to_metatensor
from medcnncad.models.registry import load_model

__all__ = ["ProgressCallback", "SegmentationResult", "Segmenter", "resolve_device", "label_map_from_probabilities",
           "remove_small_components", "apply_label_volume_floors", "foreground_probability_at", "cached_segmenter"]

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, float], None]
"""Called with (stage name, fraction 0-1 of that stage)."""


def _no_progress(stage: str, fraction: float) -> None:
    return None


def resolve_device(device: str) -> torch.device:
    """``auto`` = CUDA when available, else CPU; ``cuda`` without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InputError(f"device {device!r}: expected auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r}: CUDA is not available on this machine (use --device cpu or auto)")
    return torch.device(device)


@dataclass
class SegmentationResult:
    """What one run returns. Arrays are (K, J, I) on ``reference``'s grid.

    Attributes:
        label_map: uint8 label values of the manifest (0 = background).
        probabilities: output channel name -> float probabilities in [0, 1]
            (background channel omitted).
        reference: the first input channel's image; defines the grid (LPS, mm).
        lesions: connected components per label and region.
        manifest: the model's manifest (id, version, labels, regions).
        device: the torch device that ran the network.
        timings: stage name -> seconds.
        missing_channels: optional channels that were absent and filled with zeros.
        warnings: human-readable notes (e.g. channels resampled onto the first).
        images: the input channels that were given, as read (float32, on ``reference``'s grid).
        uncertainty: with test-time augmentation, the standard deviation over the flipped
            passes of the foreground probability (K, J, I), else ``None``.
        tta_passes: number of network passes per window (1 without test-time augmentation).
        classification: lesion-classifier summary (model, case probability, rule) when a
            classifier ran (:func:`medcnncad.classification.grade.attach_classification`).
        removed_candidates: the foreground components post-processing removed from the label
            map (volume, probability floor, lesion classifier), largest first; the probability
            maps keep them.
        lesion_classifier_max: with a second-stage lesion classifier, the largest probability it
            gave any candidate component (0 when none survived the floors); else ``None``.
    """

    label_map: np.ndarray
    probabilities: dict[str, np.ndarray]
    reference: sitk.Image
    lesions: list[Lesion]
    manifest: Manifest
    device: str
    timings: dict[str, float] = field(default_factory=dict)
    missing_channels: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    images: dict[str, sitk.Image] = field(default_factory=dict, repr=False)
    uncertainty: np.ndarray | None = None
    tta_passes: int = 1
    classification: dict | None = None
    removed_candidates: list[RemovedCandidate] = field(default_factory=list)
    lesion_classifier_max: float | None = None

    def label_image(self) -> sitk.Image:
        """The label map as a SimpleITK image on the reference grid."""
        image = sitk.GetImageFromArray(self.label_map)
        image.CopyInformation(self.reference)
        return image

    def probability_image(self, name: str) -> sitk.Image:
        image = sitk.GetImageFromArray(self.probabilities[name].astype(np.float32, copy=False))
        image.CopyInformation(self.reference)
        return image

    def uncertainty_image(self) -> sitk.Image:
        """The test-time-augmentation uncertainty map on the reference grid (ValueError without TTA)."""
        if self.uncertainty is None:
            raise ValueError("no uncertainty map: run with test-time augmentation (tta=True)")
        image = sitk.GetImageFromArray(self.uncertainty.astype(np.float32, copy=False))
        image.CopyInformation(self.reference)
        return image


PRECISIONS: dict[str, torch.dtype | None] = {"auto": None, "fp32": None, "bf16": torch.bfloat16,
                                             "fp16": torch.float16}

_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32}

TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (1,), (2,), (3,))
"""Test-time augmentation passes: identity and a flip along each spatial axis of (C, I, J, K)."""


def remove_small_components(label_map: np.ndarray, min_ml: float, voxel_ml: float,
                            foreground_at: Callable[[np.ndarray], np.ndarray] | None = None,
                            min_probability: float = 0.0,
                            removed: list[RemovedCandidate] | None = None) -> np.ndarray:
    """Zero the 26-connected foreground components of a (K, J, I) label map that are smaller
    than ``min_ml`` or whose largest foreground probability is below ``min_probability``
    (in place; returned). ``foreground_at(mask)`` gives the foreground probability at the
    voxels of a boolean (K, J, I) mask, in C order. ``removed``: when given, a
    :class:`~medcnncad.lesions.lesion_filter.RemovedCandidate` per removed component is appended."""
    by_probability = min_probability > 0 and foreground_at is not None
    found = boxed_components(label_map) if min_ml > 0 or by_probability else None
    if found is None:
        return label_map
    box, labelled, count = found  # labelled inside the occupied box only: same components, less work
    rows = 16  # bincount and fancy indexing convert to int64: a few slices at a time, not a full-size copy
    sizes = np.zeros(count + 1, np.int64)
    for k in range(0, labelled.shape[0], rows):
        sizes += np.bincount(labelled[k:k + rows].ravel(), minlength=count + 1)
    small = sizes * voxel_ml < min_ml
    drop = small.copy()
    peak = None
    if by_probability:
        inside = labelled > 0
        peak = np.zeros(count + 1, np.float32)
        np.maximum.at(peak, labelled[inside],  # type: ignore[misc]
                      foreground_at(mask_from_box(label_map.shape, box, inside)))
        drop |= peak < min_probability
    drop[0] = False
    if removed is not None:
        ids = np.flatnonzero(drop)
        stages = ["volume" if small[i] else "probability floor" for i in ids]
        removed += removed_candidates(labelled, ids, stages, sizes, voxel_ml, peak, None, box)
    inner = label_map[box]  # a view: zeroing it zeroes the label map
    for k in range(0, labelled.shape[0], rows):
        inner[k:k + rows][drop[labelled[k:k + rows]]] = 0
    return label_map


def apply_label_volume_floors(label_map: np.ndarray, floors: Sequence[LabelVolumeFloor], voxel_ml: float,
                              applied: list[tuple[LabelVolumeFloor, float]] | None = None) -> np.ndarray:
    """Relabel each floor's ``value`` as ``replace_with`` where its total volume in the (K, J, I) label
    map is below ``min_ml`` (in place; returned). ``voxel_ml``: one voxel's volume in mL;
    ``applied``: when given, ``(floor, volume_ml)`` is appended for each floor that relabelled voxels."""
    for floor in floors:
        mask = label_map == floor.value
        volume_ml = float(mask.sum()) * voxel_ml
        if 0 < volume_ml < floor.min_ml:
            label_map[mask] = floor.replace_with
            if applied is not None:
                applied.append((floor, volume_ml))
    return label_map


def _softmax_background(manifest: Manifest) -> int | None:
    """Index of the one background output channel of a softmax model (foreground = 1 - it), else None."""
    background = [i for i, c in enumerate(manifest.postprocessing.channels) if c.value == 0]
    return background[0] if manifest.postprocessing.activation == "softmax" and len(background) == 1 else None


def foreground_probability_at(probabilities: np.ndarray, manifest: Manifest) -> Callable[[np.ndarray], np.ndarray]:
    """``mask -> foreground probability`` at the mask's voxels of (C, K, J, I) output probabilities:
    1 - background for a softmax model with one background channel, else the largest
    foreground channel."""
    background = _softmax_background(manifest)
    if background is not None:
        return lambda mask: 1.0 - probabilities[background][mask]
    foreground = [i for i, c in enumerate(manifest.postprocessing.channels) if c.value != 0]
    return lambda mask: np.max([probabilities[i][mask] for i in foreground], axis=0)


def label_map_from_probabilities(probabilities: np.ndarray, manifest: Manifest, rows: int = 16) -> np.ndarray:
    """Apply the manifest's rule to (C, K, J, I) probabilities of all output channels; uint8 (K, J, I).

    softmax: value of the arg-max channel. sigmoid: channels painted in order where
    probability > threshold (later channels overwrite earlier ones). Works ``rows`` slices
    at a time, so no full-size index array is ever allocated.
    """
    post = manifest.postprocessing
    values = np.array([c.value for c in post.channels], dtype=np.uint8)
    out = np.zeros(probabilities.shape[1:], dtype=np.uint8)
    for k in range(0, out.shape[0], rows):
        part = probabilities[:, k:k + rows]
        if post.activation == "softmax":
            out[k:k + rows] = values[np.argmax(part, axis=0)]
            continue
        for index, channel in enumerate(post.channels):
            out[k:k + rows][part[index] > post.threshold] = channel.value
    return out


def _overlap_fraction(a: sitk.Image, b: sitk.Image) -> float:
    """Fraction of ``a``'s physical bounding box (LPS, axis-aligned) covered by ``b``'s."""
    def box(img: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
        corners = [img.TransformContinuousIndexToPhysicalPoint([c * (n - 0.5) - 0.5 * (1 - c) for c, n in
                                                                 zip(bits, img.GetSize())])
                   for bits in np.ndindex(2, 2, 2)]
        pts = np.asarray(corners)
        return pts.min(0), pts.max(0)
    (alo, ahi), (blo, bhi) = box(a), box(b)
    inter = np.clip(np.minimum(ahi, bhi) - np.maximum(alo, blo), 0, None).prod()
    return float(inter / max(np.prod(ahi - alo), 1e-9))


def _read_files(paths: Mapping[str, str | Path]) -> dict[str, sitk.Image]:
    """Read (and validate) several image files, two at a time.

    Decompression and ITK's readers release the GIL, so two threads read four BraTS
    sequences about 1.5x faster than one. An unreadable file raises its ``InputError``
    (the first one in ``paths`` order), after the other reads have finished.
    """
    if len(paths) < 2:
        return {name: read_volume(path) for name, path in paths.items()}
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(paths, pool.map(read_volume, paths.values())))


class Segmenter:
    """Runs one loaded model on cases; construction and weights are paid once.

    Args:
        model: from :func:`medcnncad.models.registry.load_model`.
        device: ``auto``, ``cpu`` or ``cuda``.
    """

    def __init__(self, model: LoadedModel, device: str = "auto", precision: str | None = None,
                 channels_last: bool | None = None, probability_dtype: str | None = None) -> None:
        """``precision`` (auto/fp32/bf16/fp16), ``channels_last`` and ``probability_dtype``
        (float32/float16: how probabilities are held) override the manifest's execution policy
        (``inference.precision``, ``inference.channels_last``, ``postprocessing.probability_dtype``)."""
        self.model = model
        self.manifest = model.manifest
        self.device = resolve_device(device)
        self.precision = precision or self.manifest.inference.precision
        if self.precision not in PRECISIONS:
            raise InputError(f"precision {self.precision!r}: choose from {sorted(PRECISIONS)}")
        self.channels_last = self.manifest.inference.channels_last if channels_last is None else channels_last
        self.network = model.network.to(self.device).eval()
        held = probability_dtype or self.manifest.postprocessing.probability_dtype
        if held not in ("float32", "float16"):
            raise InputError(f"probability dtype {held!r}: choose float32 or float16")
        self.probability_dtype = torch.float16 if held == "float16" else torch.float32
        if self.channels_last:
            self.network = self.network.to(memory_format=torch.channels_last_3d)

    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype of the execution policy on this device (None: plain fp32)."""
        if self.precision == "auto":
            return torch.float16 if self.device.type == "cuda" else None
        return PRECISIONS[self.precision]

    # -- inputs -------------------------------------------------------------------------
    def _gather_inputs(self, inputs: Mapping[str, sitk.Image | str | Path],
                       warnings: list[str]) -> tuple[list[sitk.Image], list[str]]:
        known = {c.name: c for c in self.manifest.inputs}
        unknown = sorted(set(inputs) - set(known))
        if unknown:
            raise InputError(f"input channel(s) {unknown} not in model {self.manifest.id} "
                             f"(expects {self.manifest.input_names})")
        missing_required = [c.name for c in self.manifest.inputs if c.required and c.name not in inputs]
        if missing_required:
            raise InputError(f"model {self.manifest.id} needs input channel(s) {missing_required} "
                             f"(expects {self.manifest.input_names})")
        present = [c.name for c in self.manifest.inputs if c.name in inputs]
        images = _read_files({name: inputs[name] for name in present if not isinstance(inputs[name], sitk.Image)})
        for name in present:
            value = inputs[name]
            if not isinstance(value, sitk.Image):
                continue
            if value.GetDimension() != 3 or value.GetNumberOfComponentsPerPixel() != 1:
                raise InputError(f"input {name}: expected a 3D scalar volume, got {value.GetDimension()}D "
                                 f"with {value.GetNumberOfComponentsPerPixel()} component(s)")
            check_finite(value, f"input {name}")
            images[name] = value
        first_name = present[0]
        first = images[first_name]
        for name in present[1:]:
            img = images[name]
            if same_space(first, img):
                continue
            if _overlap_fraction(first, img) < 0.5:
                raise InputError(f"input {name}: not in the same physical space as {first_name} "
                                 f"({name}: {geometry_text(img)}; {first_name}: {geometry_text(first)})")
            message = f"input {name} was resampled onto the grid of {first_name} (grids differ)"
            log.warning(message)
            warnings.append(message)
            images[name] = sitk.Resample(img, first, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        missing = [c.name for c in self.manifest.inputs if c.name not in images]
        ordered = []
        for channel in self.manifest.inputs:
            if channel.name in images:  # kept in its own pixel type: to_metatensor makes the one float32 copy
                ordered.append(images[channel.name])
            else:  # optional channel absent: zeros, as the model was trained with channel dropout
                zero = sitk.Image(first.GetSize(), sitk.sitkFloat32)
                zero.CopyInformation(first)
                ordered.append(zero)
        return ordered, missing

    # -- network ------------------------------------------------------------------------
    def _check_memory(self, image: torch.Tensor, reference: sitk.Image) -> None:
        """Refuse a case whose estimated CPU memory need exceeds what is available (before any work)."""
        n_out = len(self.manifest.postprocessing.channels)
        p = 2 if self.probability_dtype == torch.float16 else 4
        pre_voxels = int(np.prod(image.shape[1:]))
        ref_voxels = int(np.prod(reference.GetSize()))
        window = int(np.prod(self.manifest.inference.roi_size)) * self.manifest.inference.sw_batch_size
        slab = int(self.manifest.inference.roi_size[0]) * pre_voxels // max(int(image.shape[1]), 1)
        # float32 inputs on both grids, probabilities (streamed: no full-size logits) on both grids,
        # one float32 channel while resampling, the label map, the stitching band (output + count)
        # and network activations of one window batch (~64 float channels)
        need = (4 * (pre_voxels + ref_voxels) * image.shape[0] + p * n_out * (pre_voxels + ref_voxels)
                + 4 * ref_voxels + ref_voxels + 4 * slab * (n_out + 1) + 4 * window * 64)
        available = available_memory_bytes()
        if available is not None and need > available:
            raise InputError(f"this case needs about {need / 2**30:.1f} GiB of memory for model "
                             f"{self.manifest.id} but {available / 2**30:.1f} GiB are available; "
                             f"crop the volume or use a machine with more memory")

    def roi_for(self, shape: Sequence[int]) -> list[int]:
        """Window size for an image of ``shape`` (I, J, K): the manifest's ``roi_size``, shrunk with
        ``fit_roi = m`` to the image rounded up to a multiple of ``m`` (no work on padding)."""
        inf = self.manifest.inference
        if not inf.fit_roi:
            return list(inf.roi_size)
        return [min(r, -(-int(s) // inf.fit_roi) * inf.fit_roi) for r, s in zip(inf.roi_size, shape)]

    def _infer(self, image: torch.Tensor, progress: ProgressCallback, warnings: list[str]) -> torch.Tensor:
        """Sliding-window probabilities for a (C, I, J, K) tensor: (C_out, I, J, K) on the CPU, in the
        manifest's ``probability_dtype``.

        Windows stream through :func:`medcnncad.inference.stitch.stream_sliding_window`, so no full-size
        float32 logits are held. On CUDA out-of-memory the run is repeated with one window at a
        time and stitching on the CPU, then entirely on the CPU; each fall-back is logged and reported.
        """
        inf = self.manifest.inference
        roi = self.roi_for(image.shape[1:])
        total = max(1, len(window_slices(image.shape[1:], roi, inf.overlap)))
        done = [0]
        dtype = self.autocast_dtype()
        n_out = len(self.manifest.postprocessing.channels)
        # stored (C, K, J, I) like the input grid's arrays, seen as (C, I, J, K): when the model grid is the
        # input grid, _to_input_grid hands this very array on (no second full-size copy)
        storage = np.empty((n_out, *image.shape[1:][::-1]), dtype=_NUMPY_DTYPES[self.probability_dtype])
        probs = torch.from_numpy(storage).permute(0, 3, 2, 1)

        def predictor(window: torch.Tensor) -> torch.Tensor:
            if self.channels_last:
                window = window.contiguous(memory_format=torch.channels_last_3d)
            with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
                out = self.network(window)
            done[0] += window.shape[0]
            progress("inference", min(1.0, done[0] / total))
            return out.float()

        def sink(i0: int, i1: int, logits: torch.Tensor) -> None:
            probs[:, i0:i1] = self._activate(logits).to("cpu", self.probability_dtype)

        attempts = [(inf.sw_batch_size, self.device), (1, torch.device("cpu"))]
        with torch.inference_mode():
            for attempt, (sw_batch, stitch) in enumerate(attempts + [(1, None)]):
                if stitch is None:  # last resort: the whole run on the CPU
                    self.device = torch.device("cpu")
                    self.network = self.network.to(self.device)
                    stitch = self.device
                try:
                    done[0] = 0
                    stream_sliding_window(torch.as_tensor(image, dtype=torch.float32), predictor, roi, inf.overlap,
                                          inf.blend_mode, sink, sw_batch, self.device, stitch)
                    return probs
                except torch.OutOfMemoryError:
                    if attempt == len(attempts):
                        raise
                    message = (f"out of memory on {self.device}; retrying with one window at a time and "
                               f"stitching on the CPU" if attempt == 0 else
                               f"out of memory on {self.device} again; running on the CPU")
                    log.warning(message)
                    warnings.append(message)
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
        raise AssertionError("unreachable")

    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax or sigmoid over the channel axis (first) of logits (C_out, ...)."""
        if self.manifest.postprocessing.activation == "softmax":
            return torch.softmax(logits, dim=0)
        return torch.sigmoid(logits)

    def _to_input_grid(self, probs: torch.Tensor, affine: torch.Tensor, reference: sitk.Image,
                       raw: bool = False) -> np.ndarray:
        """Resample (C, I', J', K') probabilities with RAS ``affine`` onto the reference grid (C, K, J, I).

        Linear interpolation with SimpleITK (multi-threaded; 2.5x faster here than MONAI's
        SpatialResample, same values to 3e-3), one channel at a time, into an array of the
        probabilities' dtype; a plain transpose when the model grid is the reference grid. For a
        softmax model only the foreground channels are resampled; the background is 1 - their
        sum, which also makes everything outside the cropped field of view background.
        """
        channels = self.manifest.postprocessing.channels if not raw else [None] * probs.shape[0]
        background = [i for i, c in enumerate(channels) if c is not None and c.value == 0]
        softmax = self.manifest.postprocessing.activation == "softmax" and len(background) == 1
        keep = [i for i in range(len(channels)) if not (softmax and i in background)]
        lps = lps_to_ras(np.asarray(affine, dtype=np.float64))
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        grid = sitk.Image([int(v) for v in probs.shape[1:]], sitk.sitkUInt8)
        grid.SetSpacing(tuple(float(v) for v in spacing))
        grid.SetOrigin(tuple(float(v) for v in lps[:3, 3]))
        grid.SetDirection(tuple(float(v) for v in (lps[:3, :3] / spacing).ravel()))
        identical = same_space(grid, reference)
        if identical:  # the stitched array itself (a copy only when it is not laid out as (C, K, J, I))
            out = np.ascontiguousarray(probs.permute(0, 3, 2, 1).numpy())
            keep = []
        else:
            out = np.empty((len(channels), *reference.GetSize()[::-1]), dtype=_NUMPY_DTYPES[probs.dtype])
        for index in keep:
            image = sitk.GetImageFromArray(np.ascontiguousarray(probs[index].numpy().transpose(2, 1, 0),
                                                                dtype=np.float32))
            image.CopyInformation(grid)
            resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            del image
            out[index] = np.clip(sitk.GetArrayViewFromImage(resampled), 0.0, 1.0)
        if softmax:  # background = 1 - the foreground channels, a few slices at a time (float32 sums)
            foreground = [i for i in range(len(channels)) if i != background[0]]
            for k in range(0, out.shape[1], 16):
                rest = np.zeros(out[background[0], k:k + 16].shape, np.float32)
                for index in foreground:
                    rest += out[index, k:k + 16]
                out[background[0], k:k + 16] = np.clip(1.0 - rest, 0.0, 1.0)
        return out

    def _background_only(self, reference: sitk.Image) -> np.ndarray:
        """Probabilities (C, K, J, I) of an empty result: background 1 (softmax), everything else 0."""
        channels = self.manifest.postprocessing.channels
        probs = np.zeros((len(channels), *reference.GetSize()[::-1]), dtype=_NUMPY_DTYPES[self.probability_dtype])
        if self.manifest.postprocessing.activation == "softmax":
            probs[[i for i, c in enumerate(channels) if c.value == 0]] = 1.0
        return probs

    # -- public -------------------------------------------------------------------------
    def _probabilities(self, image: torch.Tensor, progress: ProgressCallback, warnings: list[str],
                       flips: Sequence[tuple[int, ...]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Probabilities (C_out, I, J, K) and, for several ``flips``, the standard deviation over
        the passes of the foreground probability (I, J, K); each pass is un-flipped before averaging."""
        if len(flips) <= 1 and not (flips and flips[0]):
            return self._infer(image, progress, warnings), None
        background = _softmax_background(self.manifest)
        total = mean_fg = m2 = None  # running sums; Welford's update for the spread (no stack of passes)
        for n, dims in enumerate(flips):
            def scaled(stage: str, fraction: float, n: int = n) -> None:
                progress(stage, (n + fraction) / len(flips))
            flipped = torch.flip(image, dims) if dims else image
            probs = self._infer(flipped, scaled, warnings).float()
            probs = torch.flip(probs, dims) if dims else probs
            foreground = 1.0 - probs[background] if background is not None else probs.amax(0)
            if total is None:
                total, mean_fg, m2 = probs.clone(), foreground.clone(), torch.zeros_like(foreground)
                continue
            total += probs
            delta = foreground - mean_fg
            mean_fg += delta / (n + 1)
            m2 += delta * (foreground - mean_fg)
        spread = (m2 / len(flips)).clamp_min(0.0).sqrt()
        return (total / len(flips)).to(self.probability_dtype), spread

    def _mode_warning(self, augmented: bool) -> list[str]:
        """A warning when the run's test-time augmentation differs from the mode the model's lesion
        filters were chosen in (they act on peak probabilities, which averaging lowers)."""
        post, chosen = self.manifest.postprocessing, self.manifest.inference.test_time_augmentation
        filtered = post.min_lesion_probability > 0 or post.lesion_classifier is not None or post.label_volume_floors
        if augmented == chosen or not filtered:
            return []
        return [f"{self.manifest.id}'s lesion filters were chosen {'with' if chosen else 'without'} test-time "
                f"augmentation and this run {'used' if augmented else 'did not use'} it: expect "
                f"{'more' if augmented else 'fewer'} candidates removed than the model's evaluation shows"]

    def _postprocess(self, label_map: np.ndarray, probs: np.ndarray, voxel_ml: float, given: Mapping[str, sitk.Image],
                     warnings: list[str]) -> tuple[list[RemovedCandidate], float | None]:
        """The manifest's post-processing of a (K, J, I) label map, in place: volume and probability
        floors, the lesion classifier, label volume floors (a warning for each that fires), then the
        core refinement (a warning when it changes labels). ``probs``: (C, K, J, I) output probabilities;
        ``voxel_ml`` in mL; ``given``: the inputs present, on the label map's grid. Returns what was
        removed and, with a lesion classifier, the largest probability it gave (0 without candidates)."""
        post = self.manifest.postprocessing
        foreground_at = foreground_probability_at(probs, self.manifest)
        removed: list[RemovedCandidate] = []
        remove_small_components(label_map, post.min_lesion_ml, voxel_ml, foreground_at, post.min_lesion_probability,
                                removed)
        scores: list[float] = []
        if post.lesion_classifier is not None:
            apply_lesion_classifier(label_map, foreground_at, voxel_ml,
                                    [(c.name, c.value) for c in post.channels if c.value != 0], post.lesion_classifier,
                                    removed, scores)
        applied: list[tuple[LabelVolumeFloor, float]] = []
        apply_label_volume_floors(label_map, post.label_volume_floors, voxel_ml, applied)
        names = {0: "background", **{x.value: x.name for x in self.manifest.labels}}
        warnings += [f"{names[f.value]} totalled {ml:.3f} mL (< {f.min_ml:g} mL): relabelled {names[f.replace_with]} "
                     "(model post-processing, label_volume_floors)" for f, ml in applied]
        warnings += self._refine_core(label_map, probs, voxel_ml, given)
        removed.sort(key=lambda c: -c.volume_ml)  # largest first, as reports and Slicer list them
        return removed, (max(scores, default=0.0) if post.lesion_classifier is not None else None)

    def _refine_core(self, label_map: np.ndarray, probs: np.ndarray, voxel_ml: float,
                     given: Mapping[str, sitk.Image]) -> list[str]:
        """The manifest's core refinement (:mod:`medcnncad.inference.refine`), in place; a message when it
        relabelled voxels."""
        spec = self.manifest.postprocessing.core_refinement
        if spec is None:
            return []
        channels = self.manifest.postprocessing.channels
        core = [i for i, c in enumerate(channels) if c.value in (spec.core_label, *spec.fixed_labels)]
        outcome = refine_core(label_map, [probs[i] for i in core], given, spec, voxel_ml)
        if not outcome.applied or outcome.to_core_ml + outcome.to_shell_ml == 0:
            return []
        names = {x.value: x.name for x in self.manifest.labels}
        return [f"tumor core re-read in this case's own contrast (model post-processing, core_refinement): "
                f"{outcome.to_core_ml:.2f} mL {names[spec.shell_label]} -> {names[spec.core_label]}, "
                f"{outcome.to_shell_ml:.2f} mL {names[spec.core_label]} -> {names[spec.shell_label]}"]

    def run(self, inputs: Mapping[str, sitk.Image | str | Path],
            progress: ProgressCallback | None = None,
            tta: bool | Sequence[tuple[int, ...]] | None = None) -> SegmentationResult:
        """Segment one case.

        Args:
            inputs: channel name (as in the manifest) -> image or path.
            progress: optional callback (stage, fraction).
            tta: test-time augmentation: ``True`` averages the :data:`TTA_FLIPS` passes
                (4x the network time) and returns an uncertainty map; a sequence of flip
                dimension tuples of the (C, I, J, K) input chooses the passes; ``None``: the
                model's default (manifest ``inference.test_time_augmentation``).
        """
        if tta is None:
            tta = self.manifest.inference.test_time_augmentation
        progress = progress or _no_progress
        timings: dict[str, float] = {}
        warnings: list[str] = []
        t0 = time.perf_counter()
        progress("read", 0.0)
        images, missing = self._gather_inputs(inputs, warnings)
        if missing:
            warnings.append(f"optional channel(s) {missing} absent: filled with zeros")
        timings["read"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        progress("preprocess", 0.0)
        pre = self.model.preprocess(to_metatensor(images))
        affine = torch.as_tensor(pre.affine, dtype=torch.float64).clone()
        self._check_memory(pre, images[0])
        timings["preprocess"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        flips = list(TTA_FLIPS if tta is True else (tta or [()]))
        warnings += self._mode_warning(len(flips) > 1)
        uncertainty = None
        if min(pre.shape[1:]) == 0:  # nothing but zeros in every channel: nothing to segment
            warnings.append("the input has no non-zero voxels; the result is empty")
            probs = self._background_only(images[0])
            uncertainty = np.zeros(probs.shape[1:], np.float32) if len(flips) > 1 else None
        else:
            mean, spread = self._probabilities(pre.as_tensor(), progress, warnings, flips)
            del pre  # the network input is not needed any more (peak memory)
            timings["inference"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            progress("postprocess", 0.0)
            probs = self._to_input_grid(mean, affine, images[0])
            del mean
            if spread is not None:
                uncertainty = self._to_input_grid(spread[None], affine, images[0], raw=True)[0]
        label_map = label_map_from_probabilities(probs, self.manifest)
        voxel_ml = float(np.prod(images[0].GetSpacing())) / 1000.0
        given = {c.name: image for c, image in zip(self.manifest.inputs, images) if c.name not in missing}
        removed, classifier_max = self._postprocess(label_map, probs, voxel_ml, given, warnings)
        probabilities = {c.name: probs[i] for i, c in enumerate(self.manifest.postprocessing.channels)
                         if c.value != 0}
        timings["postprocess"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        progress("lesions", 0.0)
        lesions = find_lesions(label_map, images[0], self.manifest, probabilities, uncertainty)
        timings["lesions"] = time.perf_counter() - t0
        progress("done", 1.0)
        return SegmentationResult(label_map, probabilities, images[0], lesions, self.manifest, str(self.device),
                                  timings, missing, warnings, given, uncertainty, len(flips),
                                  removed_candidates=removed, lesion_classifier_max=classifier_max)


_SEGMENTERS: dict[tuple[str, str, bool], Segmenter] = {}


def cached_segmenter(model: str, device: str = "auto", trust: bool = False) -> Segmenter:
    """A :class:`Segmenter` per (model, device, trust) and process: the model loads once.

    Used by the worker process, the cohort workers and the Slicer Logic's console API.
    """
    key = (str(model), device, trust)
    if key not in _SEGMENTERS:
        _SEGMENTERS[key] = Segmenter(load_model(model, trust=trust), device=device)
    return _SEGMENTERS[key]
