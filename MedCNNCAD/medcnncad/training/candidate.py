"""A trained run's weights in a shipped model's clothes: the folder to score before shipping.

``medcnncad train segmentation`` writes its manifest from the training template: the network, the
preprocessing it trained with and the plain post-processing. A shipped model's manifest holds more that
is fitted or chosen after training: the clinical preprocessing chain (registration, brain extraction),
test-time augmentation, probability floors, the lesion filter, the case-probability calibration and the
input warnings. Scoring a fine-tuned run on patients without them measures another product (the run's
own folder has no brain extraction and no lesion filter), so :func:`make_candidate` builds the folder to
score: the shipped model's manifest with the run's weights and training record.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from medcnncad.errors import InputError
from medcnncad.models.manifest import parse_manifest, sha256_file
from medcnncad.models.registry import find_model
from medcnncad.training.segmentation import write_manifest_json

__all__ = ["make_candidate", "read_manifest", "compared_section", "differing_section", "check_new_folder",
           "write_model_folder", "MUST_MATCH", "NOT_COMPARED"]

MUST_MATCH = ("task", "inputs", "labels", "network", "preprocessing")
"""Manifest sections the run and the model must share: the weights only fit the same network, inputs and
outputs, and were trained on the same preprocessing (but for :data:`NOT_COMPARED`)."""

NOT_COMPARED = {"preprocessing": ("residue_fraction",)}
"""Keys left out of the comparison: ``residue_fraction`` only zeroes interpolation residue (values 1e-43 to 1e-8 at
the brain's edge, docs/performance.md) and came after most runs (the shipped 2.11.0's members were trained
without it); the candidate takes the model's."""


def compared_section(manifest: dict, section: str) -> object:
    """``manifest[section]`` as :data:`MUST_MATCH` compares it (without the :data:`NOT_COMPARED` keys)."""
    value = manifest.get(section)
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in NOT_COMPARED.get(section, ())}
    return value


def differing_section(a: dict, b: dict) -> str | None:
    """The first :data:`MUST_MATCH` section in which manifests ``a`` and ``b`` differ (compared as
    :func:`compared_section` does), or None."""
    return next((section for section in MUST_MATCH if compared_section(a, section) != compared_section(b, section)),
                None)


def read_manifest(folder: Path, what: str) -> dict:
    """The raw ``manifest.json`` of ``folder`` (``what`` names it in errors)."""
    path = folder / "manifest.json"
    if not path.is_file():
        raise InputError(f"{what} {folder}: no manifest.json there")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


def make_candidate(run: str | Path, like: str | Path, out: str | Path) -> Path:
    """Write ``out``: the manifest of model ``like`` (id or folder) with the weights and ``training`` block of
    the training run folder ``run``; ``version`` becomes ``<like's>+candidate``.

    Everything fitted after training (post-processing floors, lesion filter, case calibration) is ``like``'s,
    fitted for ``like``'s weights; ``training.candidate`` says so. Raises :class:`InputError` naming the
    section when the run's network, inputs, labels, task or preprocessing differ from ``like``'s, when
    ``run`` has no weights, or when ``out`` exists and is not empty (nothing is written then).
    """
    run, out = Path(run), Path(out)
    model_dir = find_model(str(like))
    trained, shipped = read_manifest(run, "training run"), read_manifest(model_dir, "model")
    section = differing_section(trained, shipped)
    if section is not None:
        raise InputError(f"training run {run}: its {section!r} differs from {model_dir}'s; "
                         f"its weights do not fit that model")
    weights = run / trained.get("weights", {}).get("file", "model.pt")
    if not weights.is_file():
        raise InputError(f"training run {run}: weights {weights.name} not found")
    check_new_folder(out)
    raw = dict(shipped)
    raw["version"] = f"{shipped['version']}+candidate"
    raw["training"] = {**trained.get("training", {}), "candidate": {
        "weights_from": str(run.resolve()),
        "manifest_from": f"{shipped['id']} {shipped['version']} ({model_dir})",
        "note": "clinical chain, inference settings, post-processing, lesion filter, case calibration and "
                "warnings are that model's, fitted for its own weights"}}
    return write_model_folder(raw, out, lambda path: shutil.copyfile(weights, path), "candidate")


def check_new_folder(out: Path) -> None:
    """Raise :class:`InputError` when ``out`` exists and is not an empty folder."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: exists and is not an empty folder; choose a new output folder")


def write_model_folder(raw: dict, out: Path, write_weights: Callable[[Path], object], what: str) -> Path:
    """Write ``out`` (new or empty) whole or not at all: ``write_weights(path)`` writes ``model.pt``, then ``raw``
    with a weights block naming it becomes ``manifest.json`` once it parses; built in a staging folder beside
    ``out`` (``.medcnncad-<what>-*``) and renamed into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".medcnncad-{what}-", dir=out.parent))
    try:
        write_weights(staging / "model.pt")
        raw["weights"] = {"file": "model.pt", "sha256": sha256_file(staging / "model.pt")}
        write_manifest_json(raw, staging, parse_manifest)
        if out.exists():
            out.rmdir()  # empty, checked before
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
