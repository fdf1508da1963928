"""Training a lesion grade classifier (e.g. high- vs low-grade tumor) and calibrating it.

Same conventions as segmentation training (:mod:`medcnncad.training.segmentation`): phantoms generated on
the fly (seeds TRAIN/VAL bases) or a CSV of cases with a ``class`` column, seeded,
resumable (``checkpoint.pt``), tqdm progress, best checkpoint by validation AUC, and a
complete model folder (manifest + ``model.pt`` + SHA-256 + training metadata).

Each training lesion gives ``views`` patches whose centre is jittered (Gaussian, 3 mm)
and whose mask is randomly dilated or eroded by one voxel (the segmentation a classifier
sees at run time is not the truth); training adds flips, intensity scale/shift, noise and
channel dropout. After training, a temperature is fitted on the validation lesions
(:func:`medcnncad.classification.grade.fit_temperature`) and the operating point is the validation
Youden threshold; both go into the manifest with the validation metrics before and after.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.utils import set_determinism
from scipy import ndimage
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from medcnncad.classification.grade import classify_patches, fit_temperature, lesion_patch, load_classifier
from medcnncad.data.phantom import make_phantom, preset
from medcnncad.errors import InputError
from medcnncad.io.images import read_volume
from medcnncad.io.json_files import read_json_object
from medcnncad.lesions.components import components
from medcnncad.metrics.calibration import binary_report, reliability_diagram, youden_threshold
from medcnncad.models.manifest import parse_classifier_manifest, sha256_file
from medcnncad.models.weights import build_network
from medcnncad.training.checkpoint import resume_state, save_checkpoint, save_weights_atomically
from medcnncad.training.data import file_cases, phantom_cases, split_cases
from medcnncad.training.segmentation import (
    TEST_SEED_BASE,
    TRAIN_SEED_BASE,
    VAL_SEED_BASE,
    environment,
    write_manifest_json,
)

__all__ = ["ClassifierTrainConfig", "train_classification", "lesion_samples", "evaluate_classifier"]

CLASSIFIER_SEED_OFFSET = 50_000  # classifier phantoms never coincide with segmentation training phantoms


@dataclass
class ClassifierTrainConfig:
    n_train: int = 400
    n_val: int = 100
    epochs: int = 20
    steps_per_epoch: int = 60
    batch_size: int = 16
    views: int = 2
    lr: float = 1e-3
    seed: int = 0
    workers: int = 2
    phantom_preset: str = "robust"
    data: str | None = None
    channel_drop: float = 0.3
    extra: dict[str, Any] = field(default_factory=dict)


def _perturbed_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The lesion mask dilated, eroded or kept (one voxel, 26-connectivity), at random."""
    choice = rng.integers(3)
    if choice == 0:
        return ndimage.binary_dilation(mask, np.ones((3, 3, 3), bool))
    if choice == 1:
        eroded = ndimage.binary_erosion(mask, np.ones((3, 3, 3), bool))
        return eroded if eroded.any() else mask
    return mask


def lesion_samples(images: dict[str, sitk.Image], label: sitk.Image, manifest, values: list[int], views: int,
                   rng: np.random.Generator | None) -> list[np.ndarray]:
    """Patches (C, K, J, I) of the largest lesion of ``values`` in ``label``; ``rng=None``: one exact patch."""
    lab = sitk.GetArrayFromImage(label)
    labelled, count = components(np.isin(lab, values))
    if count == 0:
        return []
    sizes = np.bincount(labelled.ravel())[1:]
    mask = labelled == (int(np.argmax(sizes)) + 1)
    order = [images.get(c.name) for c in manifest.inputs]
    out = []
    for _ in range(1 if rng is None else views):
        m = mask if rng is None else _perturbed_mask(mask, rng)
        center_kji = np.argwhere(m).mean(0)
        center = np.asarray(label.TransformContinuousIndexToPhysicalPoint([float(v) for v in center_kji[::-1]]))
        if rng is not None:
            center = center + rng.normal(0.0, 3.0, 3)
        mask_img = sitk.GetImageFromArray(m.astype(np.uint8))
        mask_img.CopyInformation(label)
        out.append(lesion_patch(order, mask_img, center, manifest))
    return out


def _prepare(args: tuple[dict, dict, str, int, bool]) -> tuple[list[np.ndarray], int, dict]:
    """One case -> (patches, class index or -1 when it has no lesion, info)."""
    case, raw, folder, views, augment = args
    torch.set_num_threads(1)
    manifest = parse_classifier_manifest(raw, Path(folder))
    values = list(manifest.lesion_label_values)
    if case["kind"] == "phantom":
        half_patch = 0.5 * max(n * s for n, s in zip(manifest.patch_size, manifest.patch_spacing_mm))
        config = dataclasses.replace(preset(case["preset"]), crop_margin_mm=half_patch + 10.0)
        ph = make_phantom(case["seed"], config)
        images, label, cls = ph.images, ph.label, ph.grade
    else:
        images = {name: read_volume(path) for name, path in case["inputs"].items()}
        label, cls = read_volume(case["label"]), case["class"]
    if cls not in manifest.class_names:
        return [], -1, {"id": case["id"], "class": cls}
    rng = np.random.default_rng([case.get("seed", 0), 7]) if augment else None
    patches = lesion_samples(images, label, manifest, values, views, rng)
    return patches, manifest.class_names.index(cls), {"id": case["id"], "class": cls}


def _cases(cfg: ClassifierTrainConfig, manifest) -> tuple[list[dict], list[dict], str]:
    if cfg.data:
        cases = file_cases(cfg.data, manifest)
        unclassed = [c["id"] for c in cases if not c.get("class")]
        if unclassed:
            raise InputError(f"{cfg.data}: case(s) {unclassed[:5]} have no 'class' (a CSV column)")
        train, val = split_cases(cases, 0.2, cfg.seed)
        return train, val, f"{len(cases)} cases from {cfg.data}"
    base = CLASSIFIER_SEED_OFFSET + cfg.seed * 1000
    train = phantom_cases([TRAIN_SEED_BASE + base + i for i in range(cfg.n_train)], cfg.phantom_preset)
    val = phantom_cases([VAL_SEED_BASE + base + i for i in range(cfg.n_val)], cfg.phantom_preset)
    where = (f"synthetic phantoms, preset '{cfg.phantom_preset}' (grade is the generator's hidden variable): "
             f"seeds {train[0]['seed']}..{train[-1]['seed']} (train), {val[0]['seed']}..{val[-1]['seed']} (validation)")
    return train, val, where


def _collect(cases: list[dict], raw: dict, folder: Path, views: int, augment: bool, workers: int):
    args = [(c, raw, str(folder), views, augment) for c in cases]
    if workers > 1 and len(args) > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            results = pool.map(_prepare, args, chunksize=4)
    else:
        results = [_prepare(a) for a in args]
    x, y = [], []
    for patches, cls, _ in results:
        if cls >= 0:
            x.extend(patches)
            y.extend([cls] * len(patches))
    if not x:
        raise InputError("no lesions with a known class in the training data")
    return np.stack(x).astype(np.float32), np.asarray(y, dtype=np.int64)


def _patches(train_cases: list[dict], val_cases: list[dict], raw: dict, out: Path, cfg: ClassifierTrainConfig):
    """Training and validation patches; cached in ``out/patches.npz`` keyed by the cases, views and patch
    geometry, so resuming or retraining with another schedule skips the phantom generation."""
    key = json.dumps([[c["id"] for c in train_cases], [c["id"] for c in val_cases], cfg.views, raw["patch"],
                      [c["name"] for c in raw["inputs"]]])
    cache = out / "patches.npz"
    if cache.is_file():
        with np.load(cache) as saved:
            if str(saved["key"]) == key:
                print(f"patches from {cache}", file=sys.stderr)
                return saved["x_train"], saved["y_train"], saved["x_val"], saved["y_val"]
    x_train, y_train = _collect(train_cases, raw, out, cfg.views, True, cfg.workers)
    x_val, y_val = _collect(val_cases, raw, out, 1, False, cfg.workers)
    tmp = out / "patches.tmp.npz"
    np.savez(tmp, key=key, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)
    tmp.replace(cache)
    return x_train, y_train, x_val, y_val


def _augment(batch: torch.Tensor, rng: np.random.Generator, n_inputs: int, channel_drop: float) -> torch.Tensor:
    """Random flips, per-channel intensity scale/shift and noise on image channels, channel dropout."""
    out = batch.clone()
    for b in range(out.shape[0]):
        dims = [d for d in (1, 2, 3) if rng.random() < 0.5]
        sample = torch.flip(out[b], dims) if dims else out[b]
        image = sample[:n_inputs]
        present = image.flatten(1).abs().amax(1) > 0
        scale = torch.from_numpy(rng.uniform(0.85, 1.15, n_inputs).astype(np.float32))[:, None, None, None]
        shift = torch.from_numpy(rng.uniform(-0.15, 0.15, n_inputs).astype(np.float32))[:, None, None, None]
        noise = torch.from_numpy(rng.normal(0, rng.uniform(0, 0.1), image.shape).astype(np.float32))
        image = (image * scale + shift + noise) * present[:, None, None, None]
        if rng.random() < channel_drop and int(present.sum()) > 1:
            keep = np.zeros(n_inputs, bool)
            candidates = np.flatnonzero(present.numpy())
            keep[rng.choice(candidates, size=rng.integers(1, len(candidates)), replace=False)] = True
            image = image * torch.from_numpy(keep)[:, None, None, None]
        sample = torch.cat([image, sample[n_inputs:]])
        out[b] = sample
    return out


def _val_logits(network: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    network.eval()
    with torch.inference_mode():
        logits = torch.cat([network(torch.from_numpy(x[i:i + 64])) for i in range(0, len(x), 64)]).numpy()
    network.train()
    return logits


def train_classification(template: str | Path, out_dir: str | Path, cfg: ClassifierTrainConfig,
                         resume: bool = False, command: str = "") -> Path:
    """Train, calibrate and write a lesion grade classifier described by a manifest template."""
    started = time.time()
    out = Path(out_dir)
    raw = read_json_object(template, "a classifier manifest template (JSON object)")
    manifest = parse_classifier_manifest(raw, out, where=str(template))
    out.mkdir(parents=True, exist_ok=True)
    set_determinism(cfg.seed)
    train_cases, val_cases, where = _cases(cfg, manifest)
    print(f"preparing lesion patches of {len(train_cases)} training and {len(val_cases)} validation cases",
          file=sys.stderr)
    x_train, y_train, x_val, y_val = _patches(train_cases, val_cases, raw, out, cfg)
    print(f"{len(y_train)} training patches ({np.bincount(y_train).tolist()} per class), "
          f"{len(y_val)} validation lesions", file=sys.stderr)
    network = build_network(manifest.network_class, manifest.network_kwargs)
    optimizer = torch.optim.AdamW(network.parameters(), lr=cfg.lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * cfg.steps_per_epoch)
    config = {k: v for k, v in asdict(cfg).items() if k != "workers"}  # a resumed run must share these
    state: dict[str, Any] = (resume_state(out, network, optimizer, scheduler, config=config) if resume else None) \
        or {"epoch": 0, "best": -1.0, "history": []}
    state["config"] = config
    best_weights = state.pop("best_weights", None)
    loss_fn = torch.nn.CrossEntropyLoss()
    positive = manifest.positive_index
    bar = tqdm(total=cfg.epochs * cfg.steps_per_epoch, initial=state["epoch"] * cfg.steps_per_epoch,
               desc="train", unit="step")
    network.train()
    while state["epoch"] < cfg.epochs:
        rng = np.random.default_rng([cfg.seed, state["epoch"]])  # each epoch's draws: the same when resumed there
        for _ in range(cfg.steps_per_epoch):
            idx = rng.integers(0, len(y_train), cfg.batch_size)
            batch = _augment(torch.from_numpy(x_train[idx]), rng, len(manifest.inputs), cfg.channel_drop)
            optimizer.zero_grad()
            loss = loss_fn(network(batch), torch.from_numpy(y_train[idx]))
            loss.backward()
            optimizer.step()
            scheduler.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", epoch=state["epoch"] + 1)
        state["epoch"] += 1
        logits = _val_logits(network, x_val)
        p = torch.softmax(torch.from_numpy(logits), 1)[:, positive].numpy()
        auc = float(roc_auc_score(y_val == positive, p))
        accuracy = float(((p >= 0.5) == (y_val == positive)).mean())
        state["history"].append({"epoch": state["epoch"], "loss": float(loss.item()), "val_auc": auc,
                                 "val_accuracy": accuracy})
        bar.write(f"epoch {state['epoch']}: loss {loss.item():.3f} val AUC {auc:.3f} accuracy {accuracy:.3f}")
        if auc > state["best"]:
            state.update(best=auc, best_epoch=state["epoch"])
            best_weights = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
            save_weights_atomically(best_weights, out / "model.pt")
        save_checkpoint(out, network, optimizer, scheduler, state, best_weights)
    bar.close()
    network.load_state_dict(torch.load(out / "model.pt", map_location="cpu", weights_only=True))
    logits = _val_logits(network, x_val)
    labels = (y_val == positive).astype(int)
    temperature = fit_temperature(logits, y_val)
    before = torch.softmax(torch.from_numpy(logits), 1)[:, positive].numpy()
    after = torch.softmax(torch.from_numpy(logits / temperature), 1)[:, positive].numpy()
    threshold = youden_threshold(after, labels)
    raw = dict(raw)
    raw["calibration"] = {"method": "temperature", "temperature": round(temperature, 6),
                          "fitted_on": f"{len(y_val)} validation lesions ({where.split(':')[0]})",
                          "validation_before": binary_report(before, labels, 0.5),
                          "validation_after": binary_report(after, labels, threshold)}
    rule = f"Youden's J on the validation lesions (P({manifest.positive_class}) >= threshold)"
    raw["operating_point"] = {"threshold": round(threshold, 6), "rule": rule}
    _write_manifest(raw, out, cfg, state, where, time.time() - started, command)
    return out


def _write_manifest(raw: dict, out: Path, cfg: ClassifierTrainConfig, state: dict, where: str, seconds: float,
                    command: str) -> None:
    raw["weights"] = {"file": "model.pt", "sha256": sha256_file(out / "model.pt")}
    raw["training"] = {
        "data": where, "config": asdict(cfg), "epochs": state["epoch"], "best_epoch": state.get("best_epoch"),
        "validation_auc": state.get("best"), "history": state["history"], "seconds": round(seconds, 1),
        "command": command, "environment": environment()}
    write_manifest_json(raw, out, parse_classifier_manifest)


def evaluate_classifier(model: str, n_cases: int = 200, preset: str = "heldout", seed_base: int | None = None,
                        tta: bool = False, workers: int = 2, diagram: str | Path | None = None) -> dict[str, Any]:
    """Held-out lesions (true lesion masks) -> AUC, operating point, confusion matrix, Brier, ECE.

    Seeds start at ``TEST_SEED_BASE + CLASSIFIER_SEED_OFFSET`` unless given (never trained on).
    """
    loaded = load_classifier(model)
    m = loaded.manifest
    base = TEST_SEED_BASE + CLASSIFIER_SEED_OFFSET if seed_base is None else seed_base
    cases = phantom_cases(list(range(base, base + n_cases)), preset)
    x, y = _collect(cases, m.raw, m.folder, 1, False, workers)
    logits = torch.from_numpy(_val_logits(loaded.network, x))  # one pass gives calibrated and raw
    raw_p = torch.softmax(logits, 1)[:, m.positive_index].numpy()
    if tta:
        probs, spread = classify_patches(loaded, x, tta=True)
    else:
        probs, spread = torch.softmax(logits / m.temperature, 1).numpy(), None
    p = probs[:, m.positive_index]
    labels = (y == m.positive_index).astype(int)
    report: dict[str, Any] = {"model": m.id, "version": m.version, "preset": preset,
                              "seeds": [base, base + n_cases - 1],
                              "lesions": int(len(y)), "tta": tta, "temperature": m.temperature,
                              "calibrated": binary_report(p, labels, m.threshold)}
    report["uncalibrated"] = binary_report(raw_p, labels, 0.5)
    report["per_lesion"] = {"probability": [round(float(v), 6) for v in p], "label": labels.tolist()}
    if spread is not None:
        wrong = (p >= m.threshold) != (labels == 1)
        report["tta_uncertainty"] = {"median_correct": float(np.median(spread[~wrong])),
                                     "median_wrong": float(np.median(spread[wrong])) if wrong.any() else None}
    if diagram:
        reliability_diagram(p, labels, diagram, title=f"{m.id}: P({m.positive_class}), {len(y)} held-out lesions\n"
                            f"(ECE {report['calibrated']['ece_10_bins']:.3f})")
        report["reliability_diagram"] = str(diagram)
    return report


def recalibrate(model: str, n_cases: int = 300, preset: str = "robust", first_seed: int | None = None,
                workers: int = 2) -> dict[str, Any]:
    """Refit a classifier's temperature and operating point on more validation lesions.

    Seeds default to the validation range after the ones training used (never training or test
    seeds). Returns the new ``calibration`` and ``operating_point`` blocks (write them with
    :func:`write_calibration`).
    """
    loaded = load_classifier(model)
    m = loaded.manifest
    base = VAL_SEED_BASE + CLASSIFIER_SEED_OFFSET + 1000 * int(m.training.get("config", {}).get("seed", 0))
    start = base + int(m.training.get("config", {}).get("n_val", 0)) if first_seed is None else first_seed
    cases = phantom_cases(list(range(start, start + n_cases)), preset)
    x, y = _collect(cases, m.raw, m.folder, 1, False, workers)
    logits = _val_logits(loaded.network, x)
    positive = m.positive_index
    labels = (y == positive).astype(int)
    temperature = fit_temperature(logits, y)
    before = torch.softmax(torch.from_numpy(logits), 1)[:, positive].numpy()
    after = torch.softmax(torch.from_numpy(logits / temperature), 1)[:, positive].numpy()
    threshold = youden_threshold(after, labels)
    where = f"{len(y)} validation lesions, preset '{preset}', seeds {start}-{start + n_cases - 1}"
    return {"calibration": {"method": "temperature", "temperature": round(temperature, 6), "fitted_on": where,
                            "validation_before": binary_report(before, labels, 0.5),
                            "validation_after": binary_report(after, labels, threshold)},
            "operating_point": {"threshold": round(threshold, 6),
                                "rule": f"Youden's J on the {where} (P({m.positive_class}) >= threshold)"}}


def write_calibration(model_folder: str | Path, blocks: dict[str, Any]) -> None:
    """Replace a classifier manifest's ``calibration`` and ``operating_point`` (weights untouched)."""
    folder = Path(model_folder)
    raw = json.loads((folder / "manifest.json").read_text())
    raw.update({k: blocks[k] for k in ("calibration", "operating_point")})
    write_manifest_json(raw, folder, parse_classifier_manifest)
