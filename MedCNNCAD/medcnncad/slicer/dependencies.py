"""What the engine needs inside 3D Slicer, checked without importing any of it.

Slicer's Python ships numpy, SimpleITK, pydicom, requests, packaging, Pillow and VTK; it has
neither torch nor MONAI. torch comes from the PyTorch extension (PyTorchUtils, which picks the
CUDA build that fits the machine); the rest is installed with pip after the user confirms.

The lists are exactly what the Slicer run path imports (``medcnncad.slicer.logic``, the worker,
the Segmenter, model loading, preprocessing, the grade classifier): ``Testing/slicer_module/test_dependencies.py``
derives that set from the source and from a real run and compares. Reporting, training, cohort
and DICOM-export modules (matplotlib, highdicom, nilearn, dask, tqdm) are not on that path and
are not installed into Slicer. Nothing here installs; nothing Slicer ships is upgraded: the pip
call pins every shipped package (and torch) at its installed version.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import tempfile
from pathlib import Path

from medcnncad.io.resources import resource_dir

__all__ = ["TORCH_VERSION", "PIP_REQUIREMENTS", "BRAIN_EXTRACTION_REQUIREMENTS", "SLICER_SHIPPED",
           "missing_requirements", "brain_extraction_requested", "pip_install_arguments", "model_folders"]

TORCH_VERSION = ">=2.8.0"  # PyTorchUtils' torchVersionRequirement: MONAI 1.6 requires torch>=2.8.0

# import name -> pip requirement: the run path's direct imports that Slicer does not ship
PIP_REQUIREMENTS = {
    "monai": "monai>=1.4,<1.7",
    "scipy": "scipy>=1.10",
    "sklearn": "scikit-learn>=1.3",   # lesion refinement (inference.refine), the grade classifier's calibration
    "jsonschema": "jsonschema>=4",    # manifest validation
    "yaml": "pyyaml>=6",              # MONAI bundle configs
    "nibabel": "nibabel>=5",          # preprocessing.brain_mask hands images to deepbet as nibabel images
}

# needed only when an installed model's clinical preprocessing may extract the brain
BRAIN_EXTRACTION_REQUIREMENTS = {"deepbet": "deepbet>=1.0.2"}

# import name -> distribution, shipped with Slicer: never listed, never upgraded
SLICER_SHIPPED = {"numpy": "numpy", "SimpleITK": "SimpleITK", "pydicom": "pydicom", "requests": "requests",
                  "packaging": "packaging", "PIL": "pillow", "vtk": "vtk", "slicer": None, "qt": None, "ctk": None}


def model_folders() -> list[Path]:
    """Model folders under the search paths of :func:`medcnncad.models.registry.model_search_paths`
    (same order), found without importing the registry (it needs torch)."""
    roots = [Path(p) for p in os.environ.get("MEDCNNCAD_MODEL_PATH", "").split(os.pathsep) if p]
    roots.append(Path.home() / ".medcnncad" / "models")
    shipped = resource_dir("Models")
    roots += [shipped] if shipped is not None else []
    return [folder for root in roots if root.is_dir() for folder in sorted(root.iterdir())
            if (folder / "manifest.json").is_file()]


def brain_extraction_requested() -> bool:
    """Whether an installed model's ``clinical_preprocessing`` may run deepbet (``brain_mask`` not "never")."""
    for folder in model_folders():
        try:
            clinical = json.loads((folder / "manifest.json").read_text()).get("clinical_preprocessing")
        except (OSError, ValueError):
            continue
        if isinstance(clinical, dict) and clinical.get("brain_mask", "auto") != "never":
            return True
    return False


def missing_requirements() -> tuple[bool, list[str]]:
    """(torch missing?, pip requirements of the other missing packages)."""
    torch_missing = importlib.util.find_spec("torch") is None
    needed = dict(PIP_REQUIREMENTS)
    if brain_extraction_requested():
        needed.update(BRAIN_EXTRACTION_REQUIREMENTS)
    missing = [req for module, req in needed.items() if importlib.util.find_spec(module) is None]
    return torch_missing, missing


def pip_install_arguments(requirements: list[str], folder: str | None = None) -> list[str]:
    """Arguments for ``slicer.util.pip_install``: the requirements, never upgrading what is installed,
    with a constraints file pinning every package Slicer ships (and torch) at its installed version."""
    pins = []
    for dist in [d for d in SLICER_SHIPPED.values() if d] + ["torch"]:
        try:
            pins.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    handle, constraints = tempfile.mkstemp(prefix="medcnncad-constraints-", suffix=".txt", dir=folder)
    with os.fdopen(handle, "w") as f:
        f.write("\n".join(pins) + "\n")
    return [*requirements, "--upgrade-strategy", "only-if-needed", "-c", constraints]
