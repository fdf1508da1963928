"""How far a mean over a handful of patients may be from the mean on other patients: bootstrap intervals.

The real-patient evaluation has a few patients, several rows each (one per set of sequences). Rows of one
patient are not independent, so the interval resamples **patients**, each with all of its rows
(a cluster bootstrap), and the statistic is the mean over the resampled rows. It uses SciPy's
``scipy.stats.bootstrap`` (percentile method, 95 %, a fixed seed, so a report is reproducible).

With four to six patients a percentile interval is itself rough (it tends to be too narrow); it says how
little these patients pin the mean down, not a guarantee for other patients.
"""

from __future__ import annotations

import inspect
from collections.abc import Hashable, Sequence

import numpy as np
from scipy import stats

__all__ = ["patient_bootstrap_interval", "seeded", "MIN_PATIENTS", "RESAMPLES", "SEED"]

MIN_PATIENTS = 3  # fewer: no interval
RESAMPLES = 9999
SEED = 0
_SEED_ARGUMENT = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"  # SciPy < 1.15


def seeded(seed: int = SEED) -> dict[str, np.random.Generator]:
    """``scipy.stats.bootstrap``'s keyword for a seeded generator (``rng`` from SciPy 1.15, ``random_state`` before)."""
    return {_SEED_ARGUMENT: np.random.default_rng(seed)}


def patient_bootstrap_interval(patients: Sequence[Hashable], values: Sequence[float],
                               confidence: float = 0.95) -> tuple[float, float] | None:
    """Percentile-bootstrap interval of the mean of ``values`` (one per row) resampling ``patients``.

    Args:
        patients: each row's patient (rows of the same patient are resampled together).
        values: each row's value (e.g. its whole-tumor Dice).
        confidence: the interval's coverage.

    Returns:
        (low, high), or ``None`` with fewer than :data:`MIN_PATIENTS` patients. When every patient has the
        same mean the interval is that mean on both sides.

    Raises:
        ValueError: lengths differ, or a value is not finite.
    """
    if len(patients) != len(values):
        raise ValueError(f"patient_bootstrap_interval: {len(patients)} patients for {len(values)} values")
    if not np.all(np.isfinite(np.asarray(values, dtype=np.float64))):
        raise ValueError("patient_bootstrap_interval: a value is not finite (NaN or infinite)")
    sums: dict[Hashable, float] = {}
    counts: dict[Hashable, int] = {}
    for patient, value in zip(patients, values):
        sums[patient] = sums.get(patient, 0.0) + float(value)
        counts[patient] = counts.get(patient, 0) + 1
    if len(sums) < MIN_PATIENTS:
        return None
    total = np.array(list(sums.values()))
    rows = np.array([float(counts[p]) for p in sums])
    if np.ptp(total / rows) == 0:  # every resample has the same mean (scipy would warn of a degenerate case)
        mean = float(total.sum() / rows.sum())
        return mean, mean

    def pooled_mean(s: np.ndarray, n: np.ndarray, axis: int = -1) -> np.ndarray:
        return s.sum(axis=axis) / n.sum(axis=axis)

    result = stats.bootstrap((total, rows), pooled_mean, paired=True, vectorized=True, n_resamples=RESAMPLES,
                             confidence_level=confidence, method="percentile", **seeded())
    return float(result.confidence_interval.low), float(result.confidence_interval.high)
