"""What the engine needs inside 3D Slicer, checked without importing any of it.

Slicer's Python has numpy and SimpleITK but not torch or MONAI. torch comes from the
PyTorch extension (PyTorchUtils, which picks the CUDA build that fits the machine);
the rest is installed with pip after the user confirms. Nothing here installs.
"""

from __future__ import annotations

import importlib.util

__all__ = ["TORCH_VERSION", "PIP_REQUIREMENTS", "missing_requirements"]

TORCH_VERSION = ">=2.2"  # as PyTorchUtils' torchVersionRequirement

# import name -> pip requirement
PIP_REQUIREMENTS = {
    "monai": "monai>=1.4,<1.7",
    "SimpleITK": "SimpleITK>=2.3",
    "scipy": "scipy>=1.10",
    "jsonschema": "jsonschema>=4",
    "yaml": "pyyaml>=6",
    "tqdm": "tqdm>=4.60",
    "matplotlib": "matplotlib>=3.7",
    "nibabel": "nibabel>=5",
    "nilearn": "nilearn>=0.10",
    "highdicom": "highdicom>=0.22",
}


def missing_requirements() -> tuple[bool, list[str]]:
    """(torch missing?, pip requirements of the other missing packages)."""
    torch_missing = importlib.util.find_spec("torch") is None
    missing = [req for module, req in PIP_REQUIREMENTS.items() if importlib.util.find_spec(module) is None]
    return torch_missing, missing
