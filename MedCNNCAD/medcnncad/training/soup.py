"""A uniform weight soup: the element-wise mean of the weights of runs fine-tuned from one start.

Runs of one recipe that differ only in their seed end in one basin of the loss; averaging their weights keeps what
the seeds share and cancels much of what one seed adds alone (Wortsman et al. 2022, "Model soups"). brats-robust-unet
2.11.0 is such a soup (docs/models.md). :func:`make_soup` writes it as a training-run folder (the first member's
manifest, the mean weights, ``training.soup`` naming every member), which ``medcnncad train candidate`` then dresses
in a shipped model's manifest for scoring, as for any training run.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from medcnncad.errors import InputError
from medcnncad.models.manifest import parse_manifest, sha256_file
from medcnncad.models.weights import load_state_dict_verified
from medcnncad.training.candidate import MUST_MATCH, compared_section, read_manifest
from medcnncad.training.segmentation import write_manifest_json

__all__ = ["average_state_dicts", "make_soup"]


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]], names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The element-wise mean of floating-point tensors (summed in float64, stored in each tensor's own type);
    other tensors (counters, integer buffers) must be equal in every member and are kept.

    Raises:
        InputError: naming the member and tensor whose keys, shape or integer values differ from the first's.
    """
    first = states[0]
    for state, name in zip(states[1:], names[1:]):
        if state.keys() != first.keys():
            raise InputError(f"{name}: its weights hold other tensors than {names[0]}'s; not the same network")
        for key, value in state.items():
            if value.shape != first[key].shape:
                raise InputError(f"{name}: tensor {key} has shape {tuple(value.shape)}, {names[0]}'s "
                                 f"{tuple(first[key].shape)}")
            if not value.is_floating_point() and not torch.equal(value, first[key]):
                raise InputError(f"{name}: integer tensor {key} differs from {names[0]}'s; cannot average it")
    out = {}
    for key, value in first.items():
        if value.is_floating_point():
            total = torch.stack([s[key].to(torch.float64) for s in states]).mean(dim=0)
            out[key] = total.to(value.dtype)
        else:
            out[key] = value.clone()
    return out


def make_soup(members: Sequence[str | Path], out: str | Path) -> Path:
    """Write ``out``: a training-run folder holding the uniform soup of ``members`` (two or more training-run or
    model folders with a manifest and weights).

    The manifest is the first member's with the new weights; ``training.soup`` lists every member's folder,
    version, seed and weights' SHA-256. Raises :class:`InputError` when fewer than two members are given, when
    their network, inputs, labels, task or preprocessing differ, when weights are missing or fail their
    checksum, or when ``out`` exists and is not empty (nothing is written then).
    """
    folders = [Path(m) for m in members]
    out = Path(out)
    if len(folders) < 2:
        raise InputError(f"a soup needs at least two members, got {len(folders)}")
    raws = [read_manifest(f, "soup member") for f in folders]
    for folder, raw in zip(folders[1:], raws[1:]):
        for section in MUST_MATCH:
            if compared_section(raw, section) != compared_section(raws[0], section):
                raise InputError(f"soup member {folder}: its {section!r} differs from {folders[0]}'s")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: exists and is not an empty folder; choose a new output folder")
    states = []
    for folder, raw in zip(folders, raws):
        weights = folder / raw.get("weights", {}).get("file", "model.pt")
        if not weights.is_file():
            raise InputError(f"soup member {folder}: weights {weights.name} not found")
        states.append(load_state_dict_verified(weights, raw.get("weights", {}).get("sha256")))
    soup = average_state_dicts(states, [str(f) for f in folders])
    raw = dict(raws[0])
    raw["training"] = {**raws[0].get("training", {}), "soup": {
        "rule": "uniform element-wise mean of the members' weights (float64 sum, stored as float32)",
        "members": [{"folder": str(f.resolve()), "version": r.get("version"),
                     "seed": r.get("training", {}).get("config", {}).get("seed"),
                     "weights_sha256": r.get("weights", {}).get("sha256")} for f, r in zip(folders, raws)],
        "note": "the other fields of this training block describe the first member only"}}
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".medcnncad-soup-", dir=out.parent))
    try:  # the folder appears whole or not at all
        torch.save(soup, staging / "model.pt")
        raw["weights"] = {**raw.get("weights", {}), "file": "model.pt", "sha256": sha256_file(staging / "model.pt")}
        write_manifest_json(raw, staging, parse_manifest)
        if out.exists():
            out.rmdir()  # empty, checked above
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
