"""Training a segmentation model on phantoms (or cases) and writing a complete model folder.

The data go through exactly the preprocessing the manifest prescribes for inference,
so a trained model runs in the engine with no edits. Output: ``manifest.json``,
``model.pt`` (best validation state dict; its SHA-256 in the manifest) and the
training metadata (data, epochs, validation Dice per region, duration) inside the
manifest's ``training`` block.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .manifest import Manifest, parse_manifest, sha256_file
from .models import build_network

__all__ = ["TrainConfig", "train_segmentation", "TRAIN_SEED_BASE", "VAL_SEED_BASE", "TEST_SEED_BASE"]

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
    extra: dict[str, Any] = field(default_factory=dict)


def _class_lut(manifest: Manifest) -> np.ndarray:
    """Label value -> output channel index (softmax models)."""
    lut = np.zeros(256, dtype=np.int64)
    for index, channel in enumerate(manifest.postprocessing.channels):
        lut[channel.value] = index
    return lut


def _prepare_phantom(args: tuple[int, dict, str]) -> tuple[np.ndarray, np.ndarray]:
    """Generate phantom ``seed`` and preprocess it as the manifest says: (image C,I,J,K; label 1,I,J,K)."""
    seed, manifest_raw, folder = args
    torch.set_num_threads(1)
    from .phantom import make_phantom
    from .preprocess import build_preprocessing_dict, to_metatensor

    manifest = parse_manifest(manifest_raw, Path(folder))
    case = make_phantom(seed)
    image = to_metatensor([case.images[c.name] for c in manifest.inputs])
    label = to_metatensor([case.label])
    out = build_preprocessing_dict(manifest.preprocessing, label_key="label")({"image": image, "label": label})
    lab = _class_lut(manifest)[np.rint(out["label"].numpy()).astype(np.int64)]
    return out["image"].numpy().astype(np.float32), lab.astype(np.uint8)


def _prepare_all(seeds: list[int], manifest: Manifest, workers: int) -> list[tuple[np.ndarray, np.ndarray]]:
    args = [(s, manifest.raw, str(manifest.folder)) for s in seeds]
    if workers <= 1:
        return [_prepare_phantom(a) for a in args]
    with mp.get_context("spawn").Pool(workers) as pool:
        return pool.map(_prepare_phantom, args)


def _region_dice(pred: np.ndarray, true: np.ndarray, manifest: Manifest) -> dict[str, float]:
    """Dice per label and region of two channel-index maps (both empty counts as 1)."""
    values = np.array([c.value for c in manifest.postprocessing.channels])
    pred_v, true_v = values[pred], values[true]
    structures = manifest.structures()
    out = {}
    for name, labels in structures.items():
        p, t = np.isin(pred_v, labels), np.isin(true_v, labels)
        denom = p.sum() + t.sum()
        out[name] = float(2 * (p & t).sum() / denom) if denom else 1.0
    return out


def _validate(network: torch.nn.Module, data: list[tuple[np.ndarray, np.ndarray]], manifest: Manifest) -> dict:
    from monai.inferers import sliding_window_inference

    network.eval()
    scores: list[dict[str, float]] = []
    with torch.inference_mode():
        for image, label in data:
            logits = sliding_window_inference(torch.from_numpy(image)[None], manifest.inference.roi_size, 2,
                                              network, overlap=manifest.inference.overlap,
                                              mode=manifest.inference.blend_mode)
            pred = torch.as_tensor(logits)[0].argmax(0).numpy()
            scores.append(_region_dice(pred, label[0].astype(np.int64), manifest))
    network.train()
    return {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}


def _train_transforms(cfg: TrainConfig):
    from monai.transforms import (Compose, RandCropByPosNegLabeld, RandFlipd, RandGaussianNoised,
                                  RandScaleIntensityd, RandShiftIntensityd)

    return Compose([
        RandCropByPosNegLabeld(["image", "label"], "label", spatial_size=cfg.patch, pos=2, neg=1,
                               num_samples=cfg.samples_per_case, allow_smaller=True),
        RandFlipd(["image", "label"], prob=0.5, spatial_axis=0),
        RandScaleIntensityd("image", factors=0.15, prob=1.0, channel_wise=True),
        RandShiftIntensityd("image", offsets=0.15, prob=1.0, channel_wise=True),
        RandGaussianNoised("image", prob=0.3, std=0.05),
    ])


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
    from monai.data import DataLoader, Dataset
    from monai.losses import DiceCELoss
    from monai.utils import set_determinism
    from tqdm import tqdm

    started = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw = json.loads(Path(template).read_text())
    manifest = parse_manifest(raw, out, where=str(template))
    set_determinism(cfg.seed)
    train_seeds = [TRAIN_SEED_BASE + cfg.seed * 1000 + i for i in range(cfg.n_train)]
    val_seeds = [VAL_SEED_BASE + cfg.seed * 1000 + i for i in range(cfg.n_val)]
    print(f"preparing {len(train_seeds)} training and {len(val_seeds)} validation phantoms", file=sys.stderr)
    train_data = _prepare_all(train_seeds, manifest, cfg.workers)
    val_data = _prepare_all(val_seeds, manifest, cfg.workers)
    items = [{"image": torch.from_numpy(i), "label": torch.from_numpy(lab)} for i, lab in train_data]
    cases_per_step = max(1, cfg.batch_size // cfg.samples_per_case)
    loader = DataLoader(Dataset(items, _train_transforms(cfg)), batch_size=cases_per_step, shuffle=True, num_workers=0)
    network = build_network(manifest.network_class, manifest.network_kwargs)
    optimizer = torch.optim.AdamW(network.parameters(), lr=cfg.lr, weight_decay=1e-5)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * cfg.steps_per_epoch)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    state = {"epoch": 0, "best": -1.0, "history": []}
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.is_file():
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)  # our own checkpoint
        network.load_state_dict(saved["network"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = saved["state"]
        print(f"resumed at epoch {state['epoch']}", file=sys.stderr)
    network.train()
    total = cfg.epochs * cfg.steps_per_epoch
    bar = tqdm(total=total, initial=state["epoch"] * cfg.steps_per_epoch, desc="train", unit="step")
    while state["epoch"] < cfg.epochs:
        done = 0
        while done < cfg.steps_per_epoch:
            for batch in loader:
                optimizer.zero_grad()
                loss = loss_fn(network(batch["image"]), batch["label"].long())
                loss.backward()
                optimizer.step()
                scheduler.step()
                done += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", epoch=state["epoch"] + 1)
                if done >= cfg.steps_per_epoch:
                    break
        state["epoch"] += 1
        val = _validate(network, val_data, manifest)
        mean_regions = float(np.mean([val[r.name] for r in manifest.regions] + [val[x.name] for x in manifest.labels]))
        state["history"].append({"epoch": state["epoch"], "loss": float(loss.item()), "val_dice": val})
        bar.write(f"epoch {state['epoch']}: loss {loss.item():.3f} val Dice " +
                  " ".join(f"{k} {v:.3f}" for k, v in val.items()))
        if mean_regions > state["best"]:
            state["best"] = mean_regions
            state["best_epoch"] = state["epoch"]
            state["best_val"] = val
            torch.save(network.state_dict(), out / "model.pt")
        torch.save({"network": network.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "state": state}, ckpt)
    bar.close()
    _write_manifest(raw, out, cfg, state, train_seeds, val_seeds, time.time() - started, command)
    return out


def _write_manifest(raw: dict, out: Path, cfg: TrainConfig, state: dict, train_seeds: list[int],
                    val_seeds: list[int], seconds: float, command: str) -> None:
    import monai

    raw = dict(raw)
    raw["weights"] = {"file": "model.pt", "sha256": sha256_file(out / "model.pt")}
    raw["training"] = {
        "data": f"synthetic phantoms: seeds {train_seeds[0]}..{train_seeds[-1]} (train), "
                f"{val_seeds[0]}..{val_seeds[-1]} (validation)",
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "epochs": state["epoch"], "best_epoch": state.get("best_epoch"),
        "validation_dice": state.get("best_val"), "history": state["history"],
        "seconds": round(seconds, 1), "command": command,
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "monai": monai.__version__,
                        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads"},
    }
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(raw, indent=2) + "\n")
    tmp.replace(out / "manifest.json")
    parse_manifest(raw, out)  # the written manifest must validate
