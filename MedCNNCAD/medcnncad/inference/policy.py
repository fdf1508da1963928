"""Execution policy accuracy gate: a speed-up that changes numerics is allowed only if it agrees.

A policy (autocast precision, channels-last layout) is compared with the plain fp32 run on
the same case: every label's Dice between the two label maps must be >= 0.99 and every
probability within 0.02. :func:`choose_policy` returns the fastest candidate that passes
(measured in the same process), so a trick that loses accuracy stays off.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medcnncad.inference.background_norm import UnsupportedNetwork
from medcnncad.inference.segmenter import Segmenter
from medcnncad.metrics.segmentation import dice_per_label

__all__ = ["DICE_MIN", "PROB_TOL", "ENGINE_CROP_FIT_ROI", "CROP_MODES", "agreement", "choose_policy"]

DICE_MIN = 0.99
PROB_TOL = 0.02


def agreement(reference, candidate) -> dict[str, float]:
    """Minimum per-label Dice and maximum absolute probability difference of two results."""
    dice = dice_per_label(candidate.label_map, reference.label_map,
                          [label.value for label in reference.manifest.labels]).values()
    diff = max(float(np.abs(candidate.probabilities[k].astype(np.float32) -
                            reference.probabilities[k].astype(np.float32)).max()) for k in reference.probabilities)
    return {"dice_min": float(min(dice)), "max_probability_difference": diff}


Candidate = tuple  # (precision, channels_last) or (precision, channels_last, crop) with crop a CROP_MODES key
ENGINE_CROP_FIT_ROI = 16  # window multiple with the engine's crop (networks downsampling up to 2**4)
CROP_MODES: dict[str, tuple[bool, int | None, bool]] = {  # mode -> (crop_foreground, fit_roi, background stats)
    "none": (False, None, False),           # the model's own window over the whole image
    "crop": (True, None, False),            # cut to the non-zero box; the model's window (fewer windows, same numerics)
    "crop+fit": (True, ENGINE_CROP_FIT_ROI, False),  # and the window shrunk to the box (less padding; norms differ)
    # and GroupNorm given the statistics of the model's own window, the background run alongside as constants
    # (medcnncad.inference.background_norm)
    "crop+fit+bg": (True, ENGINE_CROP_FIT_ROI, True),
}


def _settings(candidate: Candidate) -> tuple[str, bool, str]:
    precision, channels_last, *rest = candidate
    mode = str(rest[0]) if rest else "none"
    if mode not in CROP_MODES:
        raise ValueError(f"crop mode {mode!r}: choose from {sorted(CROP_MODES)}")
    return str(precision), bool(channels_last), mode


def choose_policy(model, images: Mapping[str, Any], device: str = "cpu",
                  candidates: Sequence[Candidate] = (("fp32", True), ("bf16", False), ("bf16", True))
                  ) -> dict[str, Any]:
    """Run the reference and each candidate on ``images``; keep the fastest that agrees with the reference.

    The reference is the model's own settings in fp32: no layout change and no engine crop (for a MONAI
    bundle, the bundle's window over the whole image). A candidate is (precision, channels_last) or
    (precision, channels_last, crop mode) with a :data:`CROP_MODES` key.

    The reference runs first and, timed again, last: its seconds are the faster of the two, so the first
    run's warm-up (memory, kernel selection) does not count against fp32 and make a candidate look faster.

    Returns ``{"chosen": (precision, channels_last, crop mode), "runs": [...]}`` with each run's
    seconds, Dice and probability difference against the reference; ``channels_last`` is the layout the
    run had (a channels-last candidate the :class:`Segmenter` refuses is recorded as contiguous).
    """
    def timed(precision: str, channels_last: bool, mode: str):
        crop, fit, background = CROP_MODES[mode]
        segmenter = Segmenter(model, device, precision=precision, channels_last=channels_last,
                              crop_foreground=crop, fit_roi=fit, background_statistics=background)
        start = time.perf_counter()
        result = segmenter.run(images)
        return result, time.perf_counter() - start, segmenter.channels_last  # the layout it ran (may refuse)

    reference, seconds, _ = timed("fp32", False, "none")
    runs = [{"precision": "fp32", "channels_last": False, "crop": "none", "seconds": seconds,
             "dice_min": 1.0, "max_probability_difference": 0.0, "ok": True}]
    for candidate in candidates:
        precision, channels_last, mode = _settings(candidate)
        try:
            result, seconds, ran_last = timed(precision, channels_last, mode)
        except UnsupportedNetwork as error:  # found only when run (e.g. a concatenation's axis)
            runs.append({"precision": precision, "channels_last": channels_last, "crop": mode, "seconds": None,
                         "dice_min": None, "max_probability_difference": None, "ok": False, "error": str(error)})
            continue
        score = agreement(reference, result)
        ok = score["dice_min"] >= DICE_MIN and score["max_probability_difference"] <= PROB_TOL
        runs.append({"precision": precision, "channels_last": ran_last, "crop": mode,
                     "seconds": seconds, **score, "ok": ok})
    runs[0]["seconds"] = min(runs[0]["seconds"], timed("fp32", False, "none")[1])
    best = min((r for r in runs if r["ok"]), key=lambda r: r["seconds"])
    return {"chosen": (best["precision"], best["channels_last"], best["crop"]), "runs": runs}
