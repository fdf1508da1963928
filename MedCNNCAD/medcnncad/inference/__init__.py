"""Segmentation inference: inputs, sliding window (stitching), post-processing, lesions, case scores.

Importing this package does not import torch; :class:`Segmenter` and friends load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Segmenter", "SegmentationResult", "cached_segmenter", "resolve_device"]


def __getattr__(name: str) -> Any:
    """Lazy re-exports (PEP 562): the segmenter imports torch and MONAI."""
    if name in __all__:
        home = "machine_policy" if name == "cached_segmenter" else "segmenter"
        return getattr(importlib.import_module(f"medcnncad.inference.{home}"), name)
    raise AttributeError(f"module 'medcnncad.inference' has no attribute {name!r}")
