"""Binary classification metrics and calibration: AUC, operating point, Brier, ECE, reliability diagram.

Probabilities are of the positive class; labels are 0/1. AUC is scikit-learn's
``roc_auc_score``; ECE uses equal-width bins (default 10): the sum over bins of
(bin size / n) * |mean label - mean probability|.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize
from sklearn.metrics import roc_auc_score, roc_curve

__all__ = ["expected_calibration_error", "youden_threshold", "binary_report", "reliability_diagram", "fit_platt",
           "apply_platt", "fit_case_calibration_block", "apply_case_calibration", "leave_one_out_calibrated",
           "log_loss"]


def expected_calibration_error(probabilities: ArrayLike, labels: ArrayLike, bins: int = 10) -> float:
    """ECE with equal-width bins: sum over bins of (bin size / n) * |mean label - mean probability|."""
    p = np.asarray(probabilities, dtype=float)
    y = np.asarray(labels, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1], right=True), 0, bins - 1)
    return float(sum(abs(y[index == b].mean() - p[index == b].mean()) * (index == b).sum()
                     for b in range(bins) if (index == b).any()) / len(p))


def youden_threshold(probabilities: ArrayLike, labels: ArrayLike) -> float:
    """The threshold maximising sensitivity + specificity - 1 (Youden's J) on these data."""
    fpr, tpr, thresholds = roc_curve(np.asarray(labels), np.asarray(probabilities))
    best = int(np.argmax(tpr - fpr))
    return float(np.clip(thresholds[best], 0.0, 1.0))


def binary_report(probabilities: ArrayLike, labels: ArrayLike, threshold: float,
                  bins: int = 10) -> dict[str, Any]:
    """AUC, sensitivity/specificity and confusion matrix at ``threshold`` (p >= threshold is positive),
    Brier score and ECE, for positive-class probabilities and 0/1 labels."""

    p = np.asarray(probabilities, dtype=float)
    y = np.asarray(labels, dtype=int)
    pred = p >= threshold
    tp, fn = int((pred & (y == 1)).sum()), int((~pred & (y == 1)).sum())
    tn, fp = int((~pred & (y == 0)).sum()), int((pred & (y == 0)).sum())
    return {
        "n": int(len(y)), "positives": int(y.sum()),
        "auc": float(roc_auc_score(y, p)) if len(set(y.tolist())) == 2 else None,
        "threshold": float(threshold),
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "confusion_matrix": {"tp": tp, "fn": fn, "fp": fp, "tn": tn},
        "brier": float(np.mean((p - y) ** 2)),
        "log_loss": log_loss(p, y),
        f"ece_{bins}_bins": expected_calibration_error(p, y, bins),
    }


def log_loss(probabilities: ArrayLike, labels: ArrayLike, eps: float = 1e-6) -> float:
    """Mean negative log-likelihood of 0/1 ``labels`` (probabilities clipped to [eps, 1 - eps])."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def reliability_diagram(probabilities: ArrayLike, labels: ArrayLike, path: str | Path,
                        title: str = "", bins: int = 10) -> Path:
    """Write a reliability diagram (observed frequency vs mean predicted probability per bin) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = np.asarray(probabilities, dtype=float)
    y = np.asarray(labels, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1], right=True), 0, bins - 1)
    used = [b for b in range(bins) if (index == b).any()]
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(4.5, 5.5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.plot([p[index == b].mean() for b in used], [y[index == b].mean() for b in used], "o-", label="model")
    ax.set_ylabel("observed frequency")
    ax.set_title(title or f"reliability (ECE {expected_calibration_error(p, y, bins):.3f}, n={len(p)})", fontsize=9)
    ax.legend(fontsize=8)
    hist.hist(p, bins=edges, color="tab:blue", alpha=0.7)
    hist.set_xlabel("predicted probability")
    hist.set_ylabel("cases")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _logit(p: float | np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def apply_platt(score: float | np.ndarray, a: float, b: float) -> float | np.ndarray:
    """Platt-scaled probability ``sigmoid(a * logit(score) + b)``."""
    z = a * _logit(score) + b
    out = 1.0 / (1.0 + np.exp(-z))
    return float(out) if np.ndim(out) == 0 else out


def fit_platt(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """(a, b) minimising the cross-entropy of ``apply_platt(scores, a, b)`` against Platt's targets.

    Platt (2000, section 2.2) replaces the 0/1 labels by (N+ + 1) / (N+ + 2) and 1 / (N- + 2), a
    prior that keeps the fit finite when the scores separate the classes (then plain maximum
    likelihood sends ``a`` to infinity and every probability to 0 or 1). Same fit as scikit-learn's
    ``CalibratedClassifierCV(method="sigmoid")`` on ``logit(score)`` (Testing/classification/test_grade.py).
    """
    x = _logit(np.asarray(scores))
    y = np.asarray(labels, dtype=np.float64)
    positives, negatives = float((y > 0).sum()), float((y <= 0).sum())
    target = np.where(y > 0, (positives + 1.0) / (positives + 2.0), 1.0 / (negatives + 2.0))

    def nll(params: np.ndarray) -> tuple[float, np.ndarray]:
        z = params[0] * x + params[1]
        residual = 1.0 / (1.0 + np.exp(-z)) - target
        return float(np.mean(np.logaddexp(0.0, z) - target * z)), np.array([np.mean(residual * x), np.mean(residual)])

    result = minimize(nll, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B", options={"gtol": 1e-10})
    return float(result.x[0]), float(result.x[1])


def fit_case_calibration_block(scores: ArrayLike, labels: ArrayLike) -> dict[str, Any]:
    """Platt scaling of case scores that may be exactly 0 ("no candidate lesion survived").

    A score of 0 is a state, not a small probability: its logit would be wherever ``_logit``
    clips it, and that arbitrary point would tilt the Platt line. So cases scoring 0 get their own
    probability, the share of them with a lesion with Laplace's rule ((k + 1) / (n + 2)), stored as
    ``no_candidate_probability``; Platt's ``a``, ``b`` are fitted on the other cases.
    """
    p = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=int)
    empty = p <= 0.0
    a, b = fit_platt(p[~empty], y[~empty]) if (~empty).any() else (1.0, 0.0)
    block: dict[str, Any] = {"method": "platt", "a": a, "b": b}
    if empty.any():
        block["no_candidate_probability"] = float((y[empty].sum() + 1) / (empty.sum() + 2))
    return block


def apply_case_calibration(score: float | np.ndarray, block: dict[str, Any]) -> float | np.ndarray:
    """A case calibration block (:func:`fit_case_calibration_block`, manifest ``case_calibration``) applied."""
    calibrated = apply_platt(score, block["a"], block["b"])
    if "no_candidate_probability" not in block:
        return calibrated
    out = np.where(np.asarray(score) <= 0.0, block["no_candidate_probability"], calibrated)
    return float(out) if np.ndim(out) == 0 else out


def leave_one_out_calibrated(scores: ArrayLike, labels: ArrayLike) -> np.ndarray:
    """Each case's probability from :func:`fit_case_calibration_block` fitted on all the other cases.

    An honest estimate of how the calibration does on cases it was not fitted on: in-sample, a
    two-parameter fit almost always looks better than the raw score.
    """
    p = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=int)
    out = np.empty(len(p))
    for i in range(len(p)):
        others = np.arange(len(p)) != i
        out[i] = apply_case_calibration(p[i], fit_case_calibration_block(p[others], y[others]))
    return out
