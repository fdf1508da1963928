"""The segmentation run: a loaded model applied to one case at a time.

Usage::

    >>> model = load_model("brats-demo-unet")                       # doctest: +SKIP
    >>> result = Segmenter(model).run({"T1": t1, "T1c": t1c, ...})   # doctest: +SKIP
    >>> result.label_map.shape   # (K, J, I) of the first input channel

Each stage is a function of its own module: :mod:`~medcnncad.inference.inputs` (read, validate,
one grid), :mod:`~medcnncad.models.preprocessing` (the manifest's transforms),
:mod:`~medcnncad.inference.windows` (sliding window under an execution policy),
:mod:`~medcnncad.inference.tta` (test-time augmentation), :mod:`~medcnncad.inference.resample`
(back onto the input grid), :mod:`~medcnncad.inference.postprocess` (label map and filters) and
:func:`medcnncad.lesions.components.find_lesions`. Probabilities come back on the first input
channel's grid, as float arrays in [0, 1] in (K, J, I) order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from medcnncad.errors import InputError
from medcnncad.inference.background_norm import BackgroundStatistics
from medcnncad.inference.inputs import (
    check_memory,
    crop_to_foreground,
    in_manifest_order,
    on_one_grid,
    read_inputs,
)
from medcnncad.inference.layout import to_channels_last
from medcnncad.inference.postprocess import (
    apply_label_volume_floors,
    foreground_probability_at,
    label_map_from_probabilities,
    mode_warning,
    postprocess,
    remove_small_components,
    restrict_to_mask,
    softmax_background,
)
from medcnncad.inference.resample import background_only, to_input_grid
from medcnncad.inference.resident import (
    averaged_on_device,
    back_to_input_grid,
    back_with_labels,
    clock,
    network_input_on,
    preprocess_on,
)
from medcnncad.inference.result import ProgressCallback, SegmentationResult, no_progress
from medcnncad.inference.tta import TTA_FLIPS
from medcnncad.inference.windows import ExecutionPolicy, check_output_count, fit_roi, infer
from medcnncad.lesions.components import find_lesions
from medcnncad.models.loaded import LoadedModel
from medcnncad.preprocessing.brain_mask import BrainMaskChoice
from medcnncad.preprocessing.chain import PreparedCase, check_model_takes_choice, prepare_case

__all__ = ["ProgressCallback", "SegmentationResult", "Segmenter", "resolve_device",
           "PRECISIONS", "TTA_FLIPS",
           # the post-processing steps, re-exported for existing callers
           "label_map_from_probabilities", "remove_small_components", "apply_label_volume_floors",
           "foreground_probability_at"]


def resolve_device(device: str) -> torch.device:
    """``auto`` = CUDA when available, else CPU; ``cuda`` without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InputError(f"device {device!r}: expected auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r}: CUDA is not available on this machine (use --device cpu or auto)")
    return torch.device(device)


CROP_MARGIN = 8  # voxels around the non-zero box when the engine crops (``crop_foreground``)

PRECISIONS: dict[str, torch.dtype | None] = {"auto": None, "fp32": None, "bf16": torch.bfloat16,
                                             "fp16": torch.float16}


class Segmenter:
    """Runs one loaded model on cases; construction and weights are paid once.

    Args:
        model: from :func:`medcnncad.models.registry.load_model`.
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: ``auto``/``fp32``/``bf16``/``fp16``, overriding the manifest's ``inference.precision``.
        channels_last: overrides the manifest's ``inference.channels_last`` (GroupNorm layers on the CPU
            then normalise contiguous copies: :mod:`medcnncad.inference.layout`).
        probability_dtype: ``float32``/``float16`` (how probabilities are held), overriding the
            manifest's ``postprocessing.probability_dtype``.
        policy_reason: why this precision and layout (reported); default: "as asked" or the manifest's.
        crop_foreground: cut the inputs to their non-zero box (+ :data:`CROP_MARGIN` voxels) before the
            model's preprocessing: the engine's crop for models that do not crop themselves (MONAI bundles).
        fit_roi: shrink the sliding window to the image, rounded up to this multiple (overrides the manifest).
        background_statistics: GroupNorm layers normalise each (fitted) window with the statistics of the
            manifest's own window filled around it with background (zeros): see
            :mod:`medcnncad.inference.background_norm`.
        resident: keep the case on the device from preprocessing to the resampled probabilities
            (:mod:`medcnncad.inference.resident`); default: on CUDA, not on the CPU.

    Raises:
        InputError: an unknown device, precision or probability dtype.
        UnsupportedNetwork: ``background_statistics`` for a network it cannot run.
    """

    def __init__(self, model: LoadedModel, device: str = "auto", precision: str | None = None,
                 channels_last: bool | None = None, probability_dtype: str | None = None,
                 policy_reason: str | None = None, crop_foreground: bool = False, fit_roi: int | None = None,
                 background_statistics: bool = False, resident: bool | None = None) -> None:
        self.model = model
        self.manifest = model.manifest
        self.crop_foreground = crop_foreground
        self.background_statistics = background_statistics
        if fit_roi is not None:  # the execution policy's window, fitted to the (cropped) image
            self.manifest = replace(self.manifest, inference=replace(self.manifest.inference, fit_roi=int(fit_roi)))
        self.device = resolve_device(device)
        self.resident = self.device.type == "cuda" if resident is None else bool(resident)
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
            self.network = to_channels_last(self.network, self.device)
        if background_statistics:  # the manifest's own window, before any fit_roi
            self.network = BackgroundStatistics(self.network, model.manifest.inference.roi_size)
        self.policy_reason = policy_reason or ("as asked" if precision or channels_last is not None else
                                               "the model's manifest (inference.precision, channels_last)")

    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype of the execution policy on this device (None: plain fp32)."""
        if self.precision == "auto":
            return torch.float16 if self.device.type == "cuda" else None
        return PRECISIONS[self.precision]

    def policy_note(self) -> dict[str, Any]:
        """What the report says about the execution policy: precision, layout, autocast dtype and why."""
        dtype = self.autocast_dtype()
        if self.model.predict is not None:  # the format's predictor runs its own windows and precision
            return {"runner": f"the model format's own predictor ({self.model.source})", "device": str(self.device),
                    "reason": f"{self.model.source} models run through their own predictor (its windows, "
                              f"mirroring and precision), which returns probabilities to the engine"}
        runner = "engine"
        return {"precision": self.precision, "autocast": str(dtype).replace("torch.", "") if dtype else "none",
                "channels_last": self.channels_last, "crop_foreground": self.crop_foreground,
                "fit_roi": self.manifest.inference.fit_roi, "background_statistics": self.background_statistics,
                "device": str(self.device), "resident": self.resident, "reason": self.policy_reason, "runner": runner}

    def policy(self) -> ExecutionPolicy:
        """The execution policy this segmenter runs the network under."""
        return ExecutionPolicy(self.device, self.autocast_dtype(), self.channels_last, self.probability_dtype,
                               self.manifest.inference.sw_batch_size)

    def roi_for(self, shape: Sequence[int]) -> list[int]:
        """Window size for an image of ``shape`` (I, J, K) (see :func:`medcnncad.inference.windows.fit_roi`)."""
        return fit_roi(self.manifest, shape)

    def _clinical_preprocessing(self, given: dict[str, sitk.Image], warnings: list[str],
                                progress: ProgressCallback,
                                brain_mask: BrainMaskChoice | None = None) -> PreparedCase | None:
        """The manifest's clinical preprocessing chain on the given inputs (None when it has none);
        ``brain_mask``: the reader's choice of the brain mask (refused for a model without that step)."""
        spec = self.manifest.clinical
        # a model without the step is refused by name here; prepare_case checks the rest of the choice
        check_model_takes_choice(spec, brain_mask is not None and not brain_mask.empty, f"model {self.manifest.id}")
        if spec is None:
            return None
        progress("clinical preprocessing", 0.0)
        prepared = prepare_case(given, spec, use_gpu=self.device.type == "cuda", choice=brain_mask)
        warnings += prepared.warnings
        return prepared

    def _infer(self, image: torch.Tensor, progress: ProgressCallback, warnings: list[str]) -> torch.Tensor:
        """Sliding-window probabilities (C_out, I, J, K) of one (C, I, J, K) tensor (benchmarks, tests)."""
        return infer(self.network, self.manifest, image, self.policy(), progress, warnings)[0]

    def _to_input_grid(self, probs: torch.Tensor, affine: torch.Tensor, reference: sitk.Image,
                       raw: bool = False) -> np.ndarray:
        """:func:`medcnncad.inference.resample.to_input_grid` for this model (benchmarks, tests)."""
        return to_input_grid(self.manifest, probs, affine, reference, raw)

    def _own_predictor(self, images: list[sitk.Image], mirror: bool, warnings: list[str]) -> np.ndarray:
        """Probabilities (C_out, K, J, I) on the first input's grid from the model format's own
        predictor; ``mirror``: its test-time mirroring (no uncertainty map is made). A predictor giving
        another number of channels than the manifest declares is a ModelError (:func:`check_output_count`)."""
        assert self.model.predict is not None
        stack = np.stack([sitk.GetArrayViewFromImage(image) for image in images]).astype(np.float32)
        spacing = tuple(float(v) for v in reversed(images[0].GetSpacing()))
        if mirror:
            warnings.append(f"test-time augmentation: {self.model.source}'s own mirroring (no uncertainty map)")
        probs = self.model.predict(stack, spacing, mirror, self.device)
        check_output_count(self.manifest, probs.shape[0])
        return probs.astype(np.float16 if self.probability_dtype == torch.float16 else np.float32, copy=False)

    def run(self, inputs: Mapping[str, sitk.Image | str | Path],
            progress: ProgressCallback | None = None,
            tta: bool | Sequence[tuple[int, ...]] | None = None,
            keep_network_input: bool = False,
            brain_mask: BrainMaskChoice | None = None) -> SegmentationResult:
        """Segment one case.

        Args:
            inputs: channel name (as in the manifest) -> image or path.
            progress: optional callback (stage, fraction).
            tta: test-time augmentation: ``True`` averages the :data:`TTA_FLIPS` passes
                (4x the network time) and returns an uncertainty map; a sequence of flip
                dimension tuples of the (C, I, J, K) input chooses the passes; ``None``: the
                model's default (manifest ``inference.test_time_augmentation``).
            keep_network_input: return the network's input in ``network_input`` (held through
                post-processing: more peak memory) when it is the model's preprocessing of the whole
                inputs (not with the engine's crop, nor for a format with its own predictor).
            brain_mask: the reader's own brain mask for this case, or the sequence deepbet should read
                (:class:`~medcnncad.preprocessing.brain_mask.BrainMaskChoice`); None: the model's rule. Only for
                a model whose clinical preprocessing extracts the brain (else an InputError, before any work).
        """
        if tta is None:
            tta = self.manifest.inference.test_time_augmentation
        progress = progress or no_progress
        timings: dict[str, float] = {}
        warnings: list[str] = []
        t0 = clock(self.device)
        progress("read", 0.0)
        given = read_inputs(self.manifest, inputs)
        timings["read"] = clock(self.device) - t0
        t0 = clock(self.device)
        read_first = next(iter(given.values()), None)  # the reference sequence as read, before any mask
        prepared = self._clinical_preprocessing(given, warnings, progress, brain_mask)
        if prepared is not None:
            given = prepared.images
            timings.update({f"clinical_{s.name}": s.seconds for s in prepared.steps})
        images, missing = in_manifest_order(self.manifest, given if prepared else on_one_grid(given, warnings))
        if missing:
            warnings.append(f"optional channel(s) {missing} absent: filled with zeros")
        warnings += self.manifest.warnings_for([name for name in self.manifest.input_names if name not in missing])
        t0 = clock(self.device)
        progress("preprocess", 0.0)
        on = self.device if self.resident and self.model.predict is None else None
        pre = preprocess_on(self.model.preprocess, network_input_on(crop_to_foreground(images, CROP_MARGIN)
                                                                    if self.crop_foreground else images, on,
                                                                    warnings), on, warnings)
        affine = torch.as_tensor(pre.affine, dtype=torch.float64).clone()
        check_memory(self.manifest, self.probability_dtype, pre, images[0])
        timings["preprocess"] = clock(self.device) - t0
        t0 = clock(self.device)
        flips = list(TTA_FLIPS if tta is True else (tta or [()]))
        warnings += mode_warning(self.manifest, len(flips) > 1)
        uncertainty = None
        device = self.device
        kept: tuple[np.ndarray, np.ndarray] | None = None
        label_map: np.ndarray | None = None
        if self.model.predict is not None:  # the format's own predictor (nnU-Net) does windows to grid
            del pre
            probs = self._own_predictor(images, len(flips) > 1, warnings)
            timings["inference"] = clock(self.device) - t0
            t0 = clock(self.device)
        elif min(pre.shape[1:]) == 0:  # nothing but zeros in every channel: nothing to segment
            warnings.append("the input has no non-zero voxels; the result is empty")
            probs = background_only(self.manifest, images[0], self.probability_dtype)
            uncertainty = np.zeros(probs.shape[1:], np.float32) if len(flips) > 1 else None
        else:
            ran_on = [self.device]

            def infer_once(image: torch.Tensor, report: ProgressCallback, on_device: bool) -> torch.Tensor:
                probs, ran_on[0] = infer(self.network, self.manifest, image, self.policy(), report, warnings,
                                         on_device=on_device)
                return probs

            mean, spread = averaged_on_device(infer_once, pre.as_tensor(), flips, softmax_background(self.manifest),
                                              progress, self.probability_dtype, self.resident, warnings)
            device = ran_on[0]
            if keep_network_input and not self.crop_foreground:
                kept = (np.asarray(pre.as_tensor().cpu(), dtype=np.float32), affine.numpy())
            del pre  # the network input is not needed any more (peak memory), unless kept
            timings["inference"] = clock(self.device) - t0
            t0 = clock(self.device)
            progress("postprocess", 0.0)
            probs, label_map = back_with_labels(self.manifest, mean, affine, images[0], warnings, self.resident)
            del mean
            if spread is not None:
                uncertainty = back_to_input_grid(self.manifest, spread[None], affine, images[0], warnings, raw=True,
                                                 resident=self.resident)[0]
        if label_map is None:  # the format's own predictor, or an empty input: labels from host probabilities
            label_map = label_map_from_probabilities(probs, self.manifest)
        voxel_ml = float(np.prod(images[0].GetSpacing())) / 1000.0
        given = {c.name: image for c, image in zip(self.manifest.inputs, images) if c.name not in missing}
        mask = _mask_array(prepared)
        clinical = self.manifest.clinical
        brain = mask > 0 if mask is not None and clinical is not None and clinical.results_inside_mask else None
        removed, classifier_max = postprocess(self.manifest, label_map, probs, voxel_ml, given, warnings, brain)
        if brain is not None:  # after the floors and the filter: they see the candidates they were fitted on
            restrict_to_mask(probs, label_map, brain, self.manifest, uncertainty)
        probabilities = {c.name: probs[i] for i, c in enumerate(self.manifest.postprocessing.channels)
                         if c.value != 0}
        timings["postprocess"] = clock(self.device) - t0
        t0 = clock(self.device)
        progress("lesions", 0.0)
        lesions = find_lesions(label_map, images[0], self.manifest, probabilities, uncertainty)
        timings["lesions"] = clock(self.device) - t0
        progress("done", 1.0)
        return SegmentationResult(label_map, probabilities, images[0], lesions, self.manifest, str(device),
                                  timings, missing, warnings, given, uncertainty, len(flips),
                                  removed_candidates=removed, lesion_filter_max=classifier_max,
                                  brain_mask=mask, preprocessing=_steps(prepared),
                                  execution_policy=self.policy_note(), network_input=kept,
                                  unmasked_reference=read_first if mask is not None else None)


def _mask_array(prepared: PreparedCase | None) -> np.ndarray | None:
    """The brain mask as a uint8 (K, J, I) array on the reference grid, when the chain computed one."""
    if prepared is None or prepared.brain_mask is None:
        return None
    return sitk.GetArrayFromImage(prepared.brain_mask).astype(np.uint8)


def _steps(prepared: PreparedCase | None) -> list[dict]:
    return [s.to_json() for s in prepared.steps] if prepared is not None else []
