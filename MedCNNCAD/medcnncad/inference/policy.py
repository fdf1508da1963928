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

from medcnncad.inference.segmenter import Segmenter
from medcnncad.metrics.segmentation import dice_per_label

__all__ = ["DICE_MIN", "PROB_TOL", "agreement", "choose_policy"]

DICE_MIN = 0.99
PROB_TOL = 0.02


def agreement(reference, candidate) -> dict[str, float]:
    """Minimum per-label Dice and maximum absolute probability difference of two results."""
    dice = dice_per_label(candidate.label_map, reference.label_map,
                          [label.value for label in reference.manifest.labels]).values()
    diff = max(float(np.abs(candidate.probabilities[k].astype(np.float32) -
                            reference.probabilities[k].astype(np.float32)).max()) for k in reference.probabilities)
    return {"dice_min": float(min(dice)), "max_probability_difference": diff}


def choose_policy(model, images: Mapping[str, Any], device: str = "cpu",
                  candidates: Sequence[tuple[str, bool]] = (("fp32", True), ("bf16", False), ("bf16", True))
                  ) -> dict[str, Any]:
    """Run fp32 and each (precision, channels_last) candidate on ``images``; keep the fastest that agrees.

    Returns ``{"chosen": (precision, channels_last), "runs": [...]}`` with each run's seconds,
    Dice and probability difference against fp32.
    """
    def timed(precision: str, channels_last: bool):
        segmenter = Segmenter(model, device, precision=precision, channels_last=channels_last)
        start = time.perf_counter()
        result = segmenter.run(images)
        return result, time.perf_counter() - start

    reference, seconds = timed("fp32", False)
    runs = [{"precision": "fp32", "channels_last": False, "seconds": seconds, "dice_min": 1.0,
             "max_probability_difference": 0.0, "ok": True}]
    for precision, channels_last in candidates:
        result, seconds = timed(precision, channels_last)
        score = agreement(reference, result)
        ok = score["dice_min"] >= DICE_MIN and score["max_probability_difference"] <= PROB_TOL
        runs.append({"precision": precision, "channels_last": channels_last, "seconds": seconds, **score, "ok": ok})
    best = min((r for r in runs if r["ok"]), key=lambda r: r["seconds"])
    return {"chosen": (best["precision"], best["channels_last"]), "runs": runs}
