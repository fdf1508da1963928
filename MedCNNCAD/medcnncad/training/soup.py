"""A uniform weight soup: the element-wise mean of the weights of runs fine-tuned from one start.

Runs of one recipe that differ only in their seed end in one basin of the loss; averaging their weights keeps what
the seeds share and cancels much of what one seed adds alone (Wortsman et al. 2022, "Model soups"). brats-robust-unet
2.11.0 is such a soup (docs/models.md). :func:`make_soup` writes it as a training-run folder (the first member's
manifest, the mean weights, ``training.soup`` naming every member), which ``medcnncad train candidate`` then dresses
in a shipped model's manifest for scoring, as for any training run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from medcnncad.errors import InputError
from medcnncad.models.registry import find_model
from medcnncad.models.weights import load_state_dict_verified
from medcnncad.training.candidate import check_new_folder, differing_section, read_manifest, write_model_folder

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
            odd = sorted(state.keys() ^ first.keys())[:3]
            raise InputError(f"{name}: its weights hold other tensors than {names[0]}'s (e.g. {', '.join(odd)}); "
                             "not the same network")
        for key, value in state.items():
            _check_like(value, first[key], key, name, names[0])
    out = {}
    for key, value in first.items():
        if value.is_floating_point():
            total = torch.stack([s[key].to(torch.float64) for s in states]).mean(dim=0)
            out[key] = total.to(value.dtype)
        else:
            out[key] = value.clone()
    return out


def _check_like(value: torch.Tensor, reference: torch.Tensor, key: str, name: str, first: str) -> None:
    """Raise :class:`InputError` unless tensor ``key`` of member ``name`` can be averaged with ``first``'s."""
    if value.shape != reference.shape or value.dtype != reference.dtype:
        raise InputError(f"{name}: tensor {key} is {value.dtype} {tuple(value.shape)}, {first}'s is "
                         f"{reference.dtype} {tuple(reference.shape)}")
    if not value.is_floating_point() and not torch.equal(value, reference):
        raise InputError(f"{name}: integer tensor {key} differs from {first}'s; cannot average it")


def _members(members: Sequence[str | Path]) -> tuple[list[Path], list[dict]]:
    """The members' folders (model ids resolved) and raw manifests; refuses fewer than two, a folder or weights
    given twice (a weighted, not a uniform, mean) and a member that is itself a soup."""
    if len(members) < 2:
        raise InputError(f"a soup needs at least two members, got {len(members)}")
    folders = [find_model(str(m)) for m in members]
    raws = [read_manifest(f, "soup member") for f in folders]
    seen: dict[object, Path] = {}
    for folder, raw in zip(folders, raws):
        for key in (folder.resolve(), raw.get("weights", {}).get("sha256")):
            if key is not None and key in seen:
                raise InputError(f"soup member {folder}: the same run or weights as {seen[key]}; each member once")
            seen[key] = folder
        if "soup" in raw.get("training", {}):
            raise InputError(f"soup member {folder}: already a soup; give its members instead")
    return folders, raws


def _members_patients(raws: Sequence[dict]) -> list[str]:
    """Every member's real patients: whole scans (``real_patients``) and the folder names of its ``real_from`` and
    ``transplant_from``, so that the soup's rows of any member's patient are never reported as held out."""
    patients: set[str] = set()
    for raw in raws:
        training = raw.get("training", {})
        config = training.get("config") or {}
        patients |= {str(i) for i in training.get("real_patients") or ()}
        patients |= {Path(str(f)).name for f in [*(config.get("real_from") or ()),
                                                 *(config.get("transplant_from") or ())]}
    return sorted(patients)


def make_soup(members: Sequence[str | Path], out: str | Path) -> Path:
    """Write ``out``: a training-run folder holding the uniform soup of ``members`` (two or more training-run or
    model folders with a manifest and weights, or installed model ids).

    The manifest is the first member's with the new weights; ``training.soup`` lists every member's folder,
    version, seed, starting model and weights' SHA-256. Members should be runs fine-tuned from one start (a soup
    of unrelated networks is not a model); their starting points are recorded, not checked, as a path does not
    identify weights. Raises :class:`InputError` when fewer than two members are given, when one is given twice
    or is itself a soup, when their network, inputs, labels, task or preprocessing differ, when weights are
    missing or fail their checksum, or when ``out`` exists and is not empty (nothing is written then).
    """
    folders, raws = _members(members)
    out = Path(out)
    for folder, raw in zip(folders[1:], raws[1:]):
        section = differing_section(raw, raws[0])
        if section is not None:
            raise InputError(f"soup member {folder}: its {section!r} differs from {folders[0]}'s")
    check_new_folder(out)
    states = []
    for folder, raw in zip(folders, raws):
        weights = folder / raw.get("weights", {}).get("file", "model.pt")
        if not weights.is_file():
            raise InputError(f"soup member {folder}: weights {weights.name} not found")
        states.append(load_state_dict_verified(weights, raw.get("weights", {}).get("sha256")))
    soup = average_state_dicts(states, [str(f) for f in folders])
    raw = dict(raws[0])
    raw["training"] = {**raws[0].get("training", {}), "soup": {
        "rule": "uniform element-wise mean of the members' weights (summed in float64, stored in each tensor's "
                "own type)",
        "members": [{"folder": str(f.resolve()), "version": r.get("version"),
                     "seed": r.get("training", {}).get("config", {}).get("seed"),
                     "initialised_from": r.get("training", {}).get("initialised_from", {}).get("model"),
                     "weights_sha256": r.get("weights", {}).get("sha256")} for f, r in zip(folders, raws)],
        "note": "the other fields of this training block describe the first member only, but real_patients"
                " lists every member's real patients"},
        "real_patients": _members_patients(raws),
        "real_patient_references": sorted({str(sha) for r in raws
                                           for sha in r.get("training", {}).get("real_patient_references") or ()})}
    return write_model_folder(raw, out, lambda path: torch.save(soup, path), "soup")
