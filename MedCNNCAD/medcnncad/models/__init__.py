"""Models: manifests (+ JSON Schemas), verified weights, MONAI bundles, the registry of installed models.

Importing this package does not import torch; the loaders do, on first use (the Slicer module
lists models before torch is installed).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["DEFAULT_MODEL", "DEMO_MODEL", "DEFAULT_GRADE_CLASSIFIER", "load_model", "describe_model", "find_model",
           "list_models", "model_search_paths", "LoadedModel"]

from medcnncad.models.defaults import DEFAULT_GRADE_CLASSIFIER, DEFAULT_MODEL, DEMO_MODEL

_LAZY = {name: "medcnncad.models.registry" for name in __all__[3:] if name != "LoadedModel"}
_LAZY["LoadedModel"] = "medcnncad.models.loaded"


def __getattr__(name: str) -> Any:
    """Lazy re-exports (PEP 562): the registry imports torch."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medcnncad.models' has no attribute {name!r}")
