"""Names of the lesion filter's component features (see :mod:`medcnncad.lesions.lesion_filter`).

Kept beside the manifest because the manifest's consistency checks name them: a manifest's
``postprocessing.lesion_filter.features`` must be among :func:`feature_names`.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["BASE_FEATURES", "feature_names"]

BASE_FEATURES = ("log_volume_ml", "max_probability", "mean_probability", "high_probability_fraction",
                 "log_volume_ratio")


def feature_names(channels: Sequence[tuple[str, int]]) -> tuple[str, ...]:
    """All feature names for foreground output channels ``(name, value)``."""
    return BASE_FEATURES + tuple(f"fraction:{name}" for name, _ in channels)
