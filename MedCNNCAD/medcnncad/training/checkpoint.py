"""Resumable training: one checkpoint per finished epoch, from which a run continues as if never stopped.

``checkpoint.pt`` holds the network, optimizer and scheduler, the training state (epoch, best score, history, the
run's config), the best epoch's weights and every random stream the next epoch draws from (Python's, NumPy's
global one, torch's CPU and CUDA generators, and the augmentation transforms' own NumPy generators). Resuming
restores all of them, so an interrupted run ends with the weights one uninterrupted run with the same seed gives.
``model.pt`` (the best epoch's weights) is rewritten from the checkpoint on resume: an interruption between writing
it and writing the checkpoint cannot leave weights the training record does not describe. Both files are written
atomically (a temporary file renamed into place), so a crash mid-write leaves the previous ones.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcnncad.errors import InputError

__all__ = ["random_generators", "rng_state", "restore_rng_state", "save_checkpoint", "resume_state",
           "save_weights_atomically", "check_same_config"]

CHECKPOINT = "checkpoint.pt"


def random_generators(transform: object) -> list[np.random.RandomState]:
    """Every NumPy generator a MONAI transform (a ``Compose``, its members and their inner transforms) draws
    from, in a fixed order (attribute order, depth first)."""
    found: list[np.random.RandomState] = []
    seen: set[int] = set()
    stack: list[object] = [transform]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, np.random.RandomState):
            found.append(obj)
        elif isinstance(obj, (list, tuple)):
            stack.extend(reversed(obj))
        elif type(obj).__module__.startswith(("monai.", "medcnncad.")) and hasattr(obj, "__dict__"):
            stack.extend(reversed(list(vars(obj).values())))
    return found


def rng_state(generators: Iterable[np.random.RandomState] = ()) -> dict[str, Any]:
    """The state of every random stream of this process (and of ``generators``)."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state(), "generators": [g.get_state() for g in generators]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any], generators: Iterable[np.random.RandomState] = ()) -> None:
    """Set the streams :func:`rng_state` saved (CUDA ones only where CUDA is present).

    Raises:
        InputError: when ``generators`` are not as many as the saved ones (another augmentation pipeline).
    """
    generators = list(generators)
    if len(generators) != len(state["generators"]):
        raise InputError(f"checkpoint: {len(state['generators'])} augmentation random streams saved, this run has "
                         f"{len(generators)}; it was written with another augmentation")
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for generator, saved in zip(generators, state["generators"]):
        generator.set_state(saved)


def save_weights_atomically(weights: Mapping[str, torch.Tensor], path: Path) -> None:
    """``torch.save`` the weights (moved to the CPU) to ``path`` through a temporary file renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save({k: v.detach().cpu() for k, v in weights.items()}, tmp)
    tmp.replace(path)


def save_checkpoint(out: Path, network: torch.nn.Module, optimizer, scheduler, state: dict,
                    best_weights: Mapping[str, torch.Tensor] | None = None,
                    generators: Iterable[np.random.RandomState] = ()) -> None:
    """Everything needed to resume after an interruption, written atomically to ``out/checkpoint.pt``: the
    network, optimizer, scheduler, training ``state``, the best epoch's weights and the random streams."""
    tmp = out / (CHECKPOINT + ".tmp")
    torch.save({"network": network.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "state": state, "rng": rng_state(generators),
                "best_network": None if best_weights is None else {k: v.detach().cpu()
                                                                   for k, v in best_weights.items()}}, tmp)
    tmp.replace(out / CHECKPOINT)


def check_same_config(saved: Mapping[str, Any] | None, config: Mapping[str, Any], where: Path) -> None:
    """Raise :class:`InputError` naming the settings in which ``config`` differs from the checkpoint's (a resumed
    run must be the run that was interrupted: another schedule or data would be recorded but not trained)."""
    if saved is None:  # a checkpoint from before the config was saved: nothing to compare
        return
    differing = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
    if differing:
        shown = ", ".join(f"{k} {saved.get(k)!r} -> {config.get(k)!r}" for k in differing)
        raise InputError(f"--resume {where}: its checkpoint was written with other settings ({shown}); resume with "
                         "the interrupted run's own settings, or train into a new --out folder")


def resume_state(out: Path, network: torch.nn.Module, optimizer, scheduler,
                 generators: Iterable[np.random.RandomState] = (),
                 config: Mapping[str, Any] | None = None) -> dict | None:
    """Restore network, optimizer, scheduler and random streams from ``out/checkpoint.pt`` and rewrite
    ``out/model.pt`` from its best weights; the training state, or None when there is no checkpoint.

    Raises:
        InputError: when ``config`` (the resumed run's settings) differs from the checkpoint's.
    """
    ckpt = out / CHECKPOINT
    if not ckpt.is_file():  # the first chunk of a resumable run: said, so a mistyped folder is noticed
        print(f"--resume: no checkpoint in {out}; training starts at epoch 0", file=sys.stderr)
        return None
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)  # our own checkpoint
    if config is not None:
        check_same_config(saved["state"].get("config"), config, out)
    network.load_state_dict(saved["network"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    if "rng" in saved:
        restore_rng_state(saved["rng"], generators)
    if saved.get("best_network") is not None:
        save_weights_atomically(saved["best_network"], out / "model.pt")
        saved["state"]["best_weights"] = saved["best_network"]
    print(f"resumed at epoch {saved['state']['epoch']}", file=sys.stderr)
    return saved["state"]
