"""Training a segmentation model on phantoms or on your own cases; writes a complete model folder.

Data come from the phantom generator (any :data:`medcnncad.data.phantom.PRESETS` entry) or a
CSV/folder of cases (:mod:`medcnncad.training.data`), and go through exactly the
preprocessing the manifest prescribes for inference, so a trained model runs in the
engine with no edits. Fine-tuning starts from an installed model (``init``): tensors
whose names and shapes match are copied, the rest keep their fresh initialisation, and
pretrained tensors learn at ``lr * pretrained_lr_scale`` (or are frozen).

Output: ``manifest.json``, ``model.pt`` (best validation state dict; its SHA-256 in the
manifest) and the training metadata (data, augmentation, initialisation, epochs,
validation Dice per region, duration, command) in the manifest's ``training`` block.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss, DiceLoss
from monai.utils import set_determinism
from tqdm import tqdm

from medcnncad.data.augment import segmentation_transforms
from medcnncad.errors import InputError
from medcnncad.inference.segmenter import resolve_device
from medcnncad.io.json_files import read_json_object
from medcnncad.metrics.segmentation import dice
from medcnncad.models.manifest import Manifest, parse_manifest, sha256_file
from medcnncad.models.registry import load_model
from medcnncad.models.weights import build_network
from medcnncad.training.checkpoint import (
    random_generators,
    resume_state,
    save_checkpoint,
    save_weights_atomically,
)
from medcnncad.training.data import (
    donor_references,
    expand_copies,
    file_cases,
    phantom_cases,
    prepare_cases,
    real_scan_cases,
    split_cases,
    with_transplants,
)

__all__ = ["TrainConfig", "RegionDiceCELoss", "check_softmax_template", "region_channels", "train_segmentation",
           "TRAIN_SEED_BASE",
           "VAL_SEED_BASE", "TEST_SEED_BASE", "resume_state", "save_checkpoint", "resumable_config",
           "trained_on_text"]

TRAIN_SEED_BASE = 100_000
VAL_SEED_BASE = 200_000
TEST_SEED_BASE = 900_000  # held-out phantoms used by evaluation; never trained on


@dataclass
class TrainConfig:
    """Training settings; patch size in voxels of the preprocessed grid."""

    n_train: int = 48
    n_val: int = 6
    epochs: int = 30
    steps_per_epoch: int = 40
    batch_size: int = 2
    samples_per_case: int = 2
    patch: tuple[int, int, int] = (64, 64, 64)
    lr: float = 2e-3
    seed: int = 0
    workers: int = 2
    phantom_preset: str = "classic"
    transplant_from: tuple[str, ...] = ()  # real labelled case folders (training patients only) whose tumors ...
    transplant_share: float = 0.0    # ... this share of the training phantoms carry (medcnncad.data.transplant)
    real_from: tuple[str, ...] = ()  # whole labelled real scans (training patients only) added to the phantoms ...
    real_copies: int = 1             # ... each this many times in the training list
    clinical_chain: bool = False     # phantoms too go through the clinical chain (deepbet on skull-on heads)
    data: str | None = None          # CSV or folder of cases instead of phantoms
    val_fraction: float = 0.15
    augmentation: str = "light"      # see medcnncad.data.augment.AUGMENTATION_LEVELS
    channel_drop: float = 0.0        # probability of zeroing a random subset of input channels
    single_share: float = 0.5        # of the dropped samples, the share that keeps exactly one channel ...
    keep_weights: tuple[tuple[str, float], ...] = ()  # ... chosen with these (input name, weight) pairs;
    #                                  inputs not named weigh 1; empty: post-contrast T1 3, FLAIR 2
    negative_share: float = 1 / 3    # share of patches centred on background (the rest on a label)
    init: str | None = None          # model id/folder whose matching weights start the training
    pretrained_lr_scale: float = 0.1
    freeze_pretrained: bool = False
    region_loss: float = 0.0         # weight of the soft Dice on the manifest's regions (WT, TC), added to DiceCE
    device: str = "auto"             # auto (CUDA when present), cpu or cuda: where the network trains
    loader_workers: int | None = None  # DataLoader processes for the augmentation (0: in the training process;
    #                                    None: up to 8 on CUDA, where the augmentation sets the pace, else 0)
    extra: dict[str, Any] = field(default_factory=dict)


def _region_dice(pred: np.ndarray, true: np.ndarray, manifest: Manifest) -> dict[str, float]:
    """Dice per label and region of two channel-index maps (both empty counts as 1)."""
    values = np.array([c.value for c in manifest.postprocessing.channels])
    pred_v, true_v = values[pred], values[true]
    structures = manifest.structures()
    out = {}
    for name, labels in structures.items():
        out[name] = dice(np.isin(pred_v, labels), np.isin(true_v, labels))
    return out


def _validate(network: torch.nn.Module, data: list[tuple[np.ndarray, np.ndarray]], manifest: Manifest,
              only_channel: int | None = None, device: torch.device = torch.device("cpu")) -> dict:
    """Mean Dice per label/region on the validation cases (all inputs, or only ``only_channel``);
    (C, K, J, I) images, run on ``device``."""

    network.eval()
    scores: list[dict[str, float]] = []
    with torch.inference_mode():
        for image, label in data:
            if only_channel is not None:
                keep = np.arange(len(image))[:, None, None, None] == only_channel
                image = np.where(keep, image, 0).astype(np.float32)
            logits = sliding_window_inference(torch.from_numpy(image)[None].to(device), manifest.inference.roi_size,
                                              2, network, overlap=manifest.inference.overlap,
                                              mode=manifest.inference.blend_mode)
            pred = torch.as_tensor(logits)[0].argmax(0).cpu().numpy()
            scores.append(_region_dice(pred, label[0].astype(np.int64), manifest))
    network.train()
    return {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}


def check_softmax_template(manifest: Manifest, where: str) -> None:
    """Refuse a template whose postprocessing is not ``softmax``: training fits one softmax over the output
    channels (:class:`RegionDiceCELoss`), so a sigmoid model would be trained as one thing and run as another.

    Raises:
        InputError: naming the template and its activation.
    """
    activation = manifest.postprocessing.activation
    if activation != "softmax":
        raise InputError(f"{where}: postprocessing activation {activation!r}: training fits softmax models only "
                         f"(one label per voxel); set \"activation\": \"softmax\" with one channel per label")


def region_channels(manifest: Manifest) -> list[list[int]]:
    """Output-channel indices of each manifest region (e.g. WT = NCR, ED, ET channels), in region order."""
    values = [c.value for c in manifest.postprocessing.channels]
    return [[i for i, v in enumerate(values) if v in region.labels] for region in manifest.regions]


class RegionDiceCELoss(torch.nn.Module):
    """MONAI DiceCE on the label channels plus ``weight`` x soft Dice on nested regions.

    Region-based training (nnU-Net's BraTS entries): a region's probability is the sum of
    its labels' softmax probabilities, its target the union of its labels, and MONAI's
    ``DiceLoss`` scores those maps, so whole tumor and tumor core are optimised as the
    evaluation counts them (a single-label structure such as ET is already in DiceCE).
    Inputs: logits (B, C, K, J, I), label (B, 1, K, J, I) channel indices. ``weight`` 0 is
    plain DiceCE.
    """

    def __init__(self, regions: list[list[int]], weight: float) -> None:
        super().__init__()

        if weight < 0:
            raise InputError(f"region loss weight {weight}: must be >= 0 (0: labels only)")
        if weight > 0 and (not regions or any(not r for r in regions)):
            raise InputError(f"region loss: the manifest has no regions, or one has no output channel ({regions})")
        self.regions, self.weight = regions, float(weight)
        self.dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
        self.region_dice = DiceLoss(include_background=True, sigmoid=False, softmax=False)

    def region_maps(self, logits: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Region probabilities and binary targets, (B, n_regions, K, J, I) each."""
        probs = torch.softmax(logits, 1)
        pred = torch.stack([probs[:, r].sum(1) for r in self.regions], 1)
        target = torch.cat([torch.isin(label, torch.as_tensor(r, device=label.device)) for r in self.regions], 1)
        return pred, target.to(pred.dtype)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        loss = self.dice_ce(logits, label)
        if self.weight > 0:
            loss = loss + self.weight * self.region_dice(*self.region_maps(logits, label))
        return loss


DEFAULT_KEEP_WEIGHTS = (("t1c", 3.0), ("flair", 2.0))


def _keep_weights(manifest: Manifest, pairs: Sequence[tuple[str, float]] = ()) -> list[float]:
    """Channel-dropout weights for keeping one channel, one per manifest input (inputs not named in
    ``pairs`` weigh 1; no pairs: post-contrast T1 and FLAIR favoured). Raises InputError naming an
    input the manifest does not have or a negative weight."""
    pairs = tuple(pairs) or DEFAULT_KEEP_WEIGHTS
    names = [c.name.lower() for c in manifest.inputs]
    weights = {}
    for name, weight in pairs:
        if name.lower() not in names:
            raise InputError(f"keep weight for {name!r}: the model's inputs are {[c.name for c in manifest.inputs]}")
        if weight < 0:
            raise InputError(f"keep weight {name}={weight}: must be 0 or more")
        weights[name.lower()] = float(weight)
    out = [weights.get(n, 1.0) for n in names]
    if sum(out) <= 0:
        raise InputError(f"keep weights {dict(pairs)}: at least one input must weigh more than 0")
    return out


def _data(manifest: Manifest, cfg: TrainConfig) -> tuple[list[dict], list[dict], str]:
    """Training and validation cases, and a sentence saying where they came from.

    Whole real scans (``cfg.real_from``) join the training cases only: validation stays on phantoms (or
    ``--data`` cases), so no real patient chooses the checkpoint.
    """
    real = real_scan_cases(cfg.real_from, cfg.real_copies)
    also = (f"; plus {len(real)} whole real patient scan(s), each {cfg.real_copies} time(s) in the training list, "
            f"from {', '.join(cfg.real_from)}") if real else ""
    if cfg.data:
        cases = file_cases(cfg.data, manifest)
        train, val = split_cases(cases, cfg.val_fraction, cfg.seed)
        return (train + real, val,
                f"{len(cases)} cases from {cfg.data} ({len(train)} train, {len(val)} validation){also}")
    train_seeds = [TRAIN_SEED_BASE + cfg.seed * 1000 + i for i in range(cfg.n_train)]
    val_seeds = [VAL_SEED_BASE + cfg.seed * 1000 + i for i in range(cfg.n_val)]
    where = (f"synthetic phantoms, preset '{cfg.phantom_preset}': seeds {train_seeds[0]}..{train_seeds[-1]} "
             f"(train), {val_seeds[0]}..{val_seeds[-1]} (validation)")
    train = with_transplants(phantom_cases(train_seeds, cfg.phantom_preset), cfg.transplant_from, cfg.transplant_share)
    if cfg.transplant_share > 0:
        where += (f"; {sum(c['kind'] == 'transplant' for c in train)} training phantoms carry a real tumor "
                  f"transplanted from {len(cfg.transplant_from)} case(s): {', '.join(cfg.transplant_from)}")
    val = phantom_cases(val_seeds, cfg.phantom_preset)
    if cfg.clinical_chain:  # training and validation phantoms as the engine shows them to the network
        train, val = [{**c, "clinical_chain": True} for c in train], [{**c, "clinical_chain": True} for c in val]
        where += "; phantoms through the clinical chain (brain extraction of skull-on heads) as at inference"
    return train + real, val, where + also


def initialise_from(network: torch.nn.Module, source: str) -> dict[str, Any]:
    """Copy the tensors of model ``source`` whose names and shapes match into ``network``.

    Returns a report: ``source``, ``kept`` and ``reinitialised`` tensor names (a different
    number of input channels or output labels changes only the first/last layers'
    shapes, so those start fresh while the rest is transferred).
    """
    pretrained = load_model(source).network.state_dict()
    own = network.state_dict()
    kept = [k for k, v in own.items() if k in pretrained and pretrained[k].shape == v.shape]
    own.update({k: pretrained[k] for k in kept})
    network.load_state_dict(own)
    return {"source": source, "kept": kept, "reinitialised": [k for k in own if k not in kept]}


def _optimizer(network: torch.nn.Module, cfg: TrainConfig, pretrained: set[str]) -> torch.optim.Optimizer:
    """AdamW; pretrained tensors at ``lr * pretrained_lr_scale`` (or frozen), new ones at ``lr``."""
    old, new = [], []
    for name, param in network.named_parameters():
        if name in pretrained and cfg.freeze_pretrained:
            param.requires_grad_(False)
        elif name in pretrained:
            old.append(param)
        else:
            new.append(param)
    groups = [{"params": new, "lr": cfg.lr}]
    if old:
        groups.append({"params": old, "lr": cfg.lr * cfg.pretrained_lr_scale})
    if not any(g["params"] for g in groups):
        raise InputError("nothing to train: every tensor is pretrained and frozen "
                         "(--freeze-pretrained with --init of the same network)")
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=1e-5)


def train_segmentation(template: str | Path, out_dir: str | Path, cfg: TrainConfig,
                       resume: bool = False, command: str = "") -> Path:
    """Train the network a manifest template describes on phantoms; write a model folder.

    Args:
        template: manifest JSON (its ``weights`` block is replaced).
        out_dir: model folder to write (``manifest.json`` + ``model.pt``); a
            ``checkpoint.pt`` there allows ``resume``.
        cfg: data sizes, schedule and seed.
        resume: continue from ``out_dir/checkpoint.pt`` when present.
        command: the command line, recorded in the manifest.
    """
    started = time.time()
    device = resolve_device(cfg.device)  # a bad or absent device fails before any output
    cfg = dataclasses.replace(cfg, loader_workers=_loader_workers(cfg.loader_workers, device))
    assert cfg.loader_workers is not None  # just resolved
    out = Path(out_dir)
    raw = read_json_object(template, "a model manifest template (JSON object)")
    manifest = parse_manifest(raw, out, where=str(template))
    check_softmax_template(manifest, str(template))  # before any output
    loss_fn = RegionDiceCELoss(region_channels(manifest), cfg.region_loss)  # a bad weight fails before any output
    keep_weights = _keep_weights(manifest, cfg.keep_weights)  # so does a bad keep weight
    out.mkdir(parents=True, exist_ok=True)
    set_determinism(cfg.seed)
    train_cases, val_cases, where = _data(manifest, cfg)
    print(f"preparing {len(train_cases)} training and {len(val_cases)} validation cases ({where})", file=sys.stderr)
    train_data = prepare_cases(train_cases, manifest, cfg.workers)
    val_data = [(image, label) for image, label, _ in prepare_cases(val_cases, manifest, cfg.workers)]
    items = [{"image": torch.from_numpy(i), "label": torch.from_numpy(lab)}
             for i, lab, _ in expand_copies(train_cases, train_data)]
    cases_per_step = max(1, cfg.batch_size // cfg.samples_per_case)
    transforms = segmentation_transforms(cfg.patch, cfg.samples_per_case, cfg.augmentation, cfg.channel_drop,
                                         keep_weights, cfg.negative_share, cfg.single_share)
    transforms.set_random_state(seed=cfg.seed)
    dataset = Dataset(items, transforms)
    # With loader workers, one pass of the loader is one epoch's batches (cases drawn in shuffled rounds), so
    # the workers prepare batches ahead however few the cases are. They start anew each epoch, seeded by MONAI
    # from this process's torch stream, which the checkpoint saves: a resumed run draws what one long run draws.
    sampler = (torch.utils.data.RandomSampler(dataset, num_samples=cfg.steps_per_epoch * cases_per_step)
               if cfg.loader_workers > 0 else None)
    loader = DataLoader(dataset, batch_size=cases_per_step, shuffle=sampler is None, sampler=sampler,
                        num_workers=cfg.loader_workers, persistent_workers=False,
                        pin_memory=device.type == "cuda")
    network = build_network(manifest.network_class, manifest.network_kwargs)
    init_report = initialise_from(network, cfg.init) if cfg.init else None
    if init_report:
        print(f"initialised from {cfg.init}: {len(init_report['kept'])} tensors kept, "
              f"{len(init_report['reinitialised'])} re-initialised {init_report['reinitialised'][:6]}", file=sys.stderr)
    network.to(device)
    optimizer = _optimizer(network, cfg, set(init_report["kept"]) if init_report else set())
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * cfg.steps_per_epoch)
    generators = random_generators(transforms)  # after the loader, which re-seeds the transforms
    state = resume_state(out, network, optimizer, scheduler, generators, resumable_config(cfg)) if resume else None
    state = state or {"epoch": 0, "best": -1.0, "history": []}
    state["config"] = resumable_config(cfg)
    best_weights = state.pop("best_weights", None)
    network.train()
    total = cfg.epochs * cfg.steps_per_epoch
    bar = tqdm(total=total, initial=state["epoch"] * cfg.steps_per_epoch, desc="train", unit="step")
    while state["epoch"] < cfg.epochs:
        loss = _train_epoch(network, loader, optimizer, scheduler, loss_fn, cfg, device, bar, state["epoch"])
        state["epoch"] += 1
        val = _validate(network, val_data, manifest, device=device)
        names = [r.name for r in manifest.regions] + [x.name for x in manifest.labels]
        mean_regions = float(np.mean([val[n] for n in names]))
        entry = {"epoch": state["epoch"], "loss": float(loss.item()), "val_dice": val}
        if cfg.channel_drop > 0:  # also judge the single favoured sequence (e.g. post-contrast T1 alone)
            single = int(np.argmax(keep_weights))
            val_single = _validate(network, val_data, manifest, only_channel=single, device=device)
            entry[f"val_dice_{manifest.inputs[single].name}_only"] = val_single
            mean_regions = 0.5 * (mean_regions + float(np.mean([val_single[n] for n in names])))
            bar.write(f"  {manifest.inputs[single].name} only: "
                      + " ".join(f"{k} {v:.3f}" for k, v in val_single.items()))
        state["history"].append(entry)
        bar.write(f"epoch {state['epoch']}: loss {loss.item():.3f} val Dice " +
                  " ".join(f"{k} {v:.3f}" for k, v in val.items()))
        if mean_regions > state["best"]:
            state["best"] = mean_regions
            state["best_epoch"] = state["epoch"]
            state["best_val"] = val
            best_weights = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
            save_weights_atomically(best_weights, out / "model.pt")
        save_checkpoint(out, network, optimizer, scheduler, state, best_weights, generators)
    bar.close()
    _write_manifest(raw, out, cfg, state, where, init_report, time.time() - started, command, device,
                    sorted({c["case_id"] for c in train_cases if c["kind"] == "real"}),
                    _patient_references(train_cases, cfg))
    return out


def _loader_workers(requested: int | None, device: torch.device) -> int:
    """DataLoader processes: as requested, else up to 8 (one core left free) on CUDA and 0 on the CPU,
    where the training process already uses every core."""
    if requested is None:
        return min(8, max(1, (os.cpu_count() or 2) - 1)) if device.type == "cuda" else 0
    if requested < 0:
        raise InputError(f"loader workers {requested}: expected 0 or more")
    return requested


RESUME_IGNORES = ("device", "workers")
"""Settings a resumed run may change: where the network trains and how many processes prepare the cases."""


def resumable_config(cfg: TrainConfig) -> dict[str, Any]:
    """The settings a resumed run must share with the interrupted one (all but :data:`RESUME_IGNORES`)."""
    return {k: v for k, v in asdict(cfg).items() if k not in RESUME_IGNORES}


def _train_epoch(network: torch.nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, scheduler,
                 loss_fn: torch.nn.Module, cfg: TrainConfig, device: torch.device, bar: tqdm,
                 epoch: int) -> torch.Tensor:
    """``cfg.steps_per_epoch`` optimisation steps on (B, C, K, J, I) patches; the last step's loss."""
    done = 0
    while done < cfg.steps_per_epoch:
        for batch in loader:
            optimizer.zero_grad()
            image = batch["image"].to(device, non_blocking=True)
            loss = loss_fn(network(image), batch["label"].to(device, non_blocking=True).long())
            loss.backward()
            optimizer.step()
            scheduler.step()
            done += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch + 1)
            if done >= cfg.steps_per_epoch:
                break
    return loss


def environment(device: torch.device | None = None) -> dict[str, str]:
    """Software and machine a model was trained with (recorded in its manifest); with a CUDA
    ``device``, also the card."""

    env = {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
           "machine": f"{platform.machine()}, {torch.get_num_threads()} threads"}
    if device is not None:
        env["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return env


def write_manifest_json(raw: dict, out: Path, check) -> None:
    """Write ``out/manifest.json`` atomically once ``check(raw, out)`` (a manifest parser) accepts it."""
    check(raw, out)
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(raw, indent=2) + "\n")
    tmp.replace(out / "manifest.json")


NOT_ON_PATIENTS = re.compile(r"\s*[-,;(]?\s*not on (any )?patient data\)?", re.IGNORECASE)
"""A template's claim that its model saw no patient data (dropped when this run's did)."""


def trained_on_text(template: str, cfg: TrainConfig, real_patients: Sequence[str]) -> str:
    """The manifest's ``trained_on``: the template's text, unless this run trained on patient data (``--data``
    cases, transplanted real tumors, whole real scans), which it then names, without the template's "not on
    patient data"."""
    used = [f"the cases of {cfg.data}"] if cfg.data else []
    if cfg.transplant_share > 0 and cfg.transplant_from:
        used.append("real tumors of " + ", ".join(Path(d).name for d in cfg.transplant_from)
                    + f" transplanted into {cfg.transplant_share:.0%} of the phantoms")
    if real_patients:
        used.append("the whole scans of " + ", ".join(real_patients))
    if not used:
        return template
    base = "" if cfg.data else NOT_ON_PATIENTS.sub("", template).strip()
    return "; ".join([base, *used] if base else used) + " (patient data)"


def _patient_references(train_cases: list[dict], cfg: TrainConfig) -> list[str]:
    """The reference files' SHA-256 of the whole scans and transplant donors trained on (``evaluate-real`` marks
    a renamed copy of such a patient too)."""
    refs = {c["reference_sha256"] for c in train_cases if c["kind"] == "real" and c.get("reference_sha256")}
    if cfg.transplant_share > 0:
        refs |= set(donor_references(cfg.transplant_from))
    return sorted(refs)


def _write_manifest(raw: dict, out: Path, cfg: TrainConfig, state: dict, where: str, init_report: dict | None,
                    seconds: float, command: str, device: torch.device | None = None,
                    real_patients: list[str] | None = None, references: list[str] | None = None) -> None:
    raw = dict(raw)
    raw["weights"] = {"file": "model.pt", "sha256": sha256_file(out / "model.pt")}
    raw["trained_on"] = trained_on_text(str(raw.get("trained_on", "")), cfg, real_patients or [])
    raw["training"] = {
        "data": where,
        "initialised_from": None if init_report is None else {
            "model": init_report["source"], "tensors_kept": len(init_report["kept"]),
            "reinitialised": init_report["reinitialised"]},
        "missing_inputs": "zeros after normalisation (channel dropout)" if cfg.channel_drop > 0 else None,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "real_patients": list(real_patients or []),  # case ids of the whole real scans trained on
        "real_patient_references": list(references or []),  # their and the donors' reference files' SHA-256
        "epochs": state["epoch"], "best_epoch": state.get("best_epoch"),
        "validation_dice": state.get("best_val"), "history": state["history"],
        "seconds": round(seconds, 1), "command": command, "environment": environment(device),
    }
    write_manifest_json(raw, out, parse_manifest)
