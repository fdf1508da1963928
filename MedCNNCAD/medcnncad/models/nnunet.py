"""nnU-Net v2 trained-model folders as models, run by nnunetv2's own predictor.

A folder as nnU-Net writes it (``<Trainer>__<Plans>__<configuration>``) holds ``dataset.json``
(channel and label names), ``plans.json`` and ``fold_<f>/checkpoint_final.pth``. The engine
describes it from the two JSON files (no weights opened) and runs it through
``nnunetv2.inference.predict_from_raw_data.nnUNetPredictor`` (nnU-Net's own cropping,
normalisation, resampling, Gaussian sliding window, mirroring, fold ensembling and resampling
back), asking it for probabilities, which then feed every downstream feature of the engine
(label map, lesions, probability overlays, comparison, reports, DICOM).

Safe loading: a checkpoint is a pickle. It is opened with ``torch.load(weights_only=True)``
first; a checkpoint that needs full unpickling (nnU-Net's trainer stores numpy scalars in
its log) runs only after the explicit trust step (:mod:`medcnncad.models.trust`), keyed by
the hash of ``dataset.json``, ``plans.json`` and every checkpoint. The trainer class named in
a checkpoint is looked up inside the ``nnunetv2`` package only (nnU-Net's own rule).

Arrays: images are (C, K, J, I) = (C, z, y, x) in SimpleITK order, which is the order
nnU-Net's SimpleITK reader gives; spacing is (z, y, x) in mm. Probabilities come back on the
same grid, one channel per nnU-Net output (labels sorted by value; or, for region-based
models, one sigmoid channel per region in ``dataset.json`` order).
"""

from __future__ import annotations

import importlib
import json
import pickle
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcnncad.errors import ModelError
from medcnncad.models.loaded import LoadedModel
from medcnncad.models.manifest import (
    InferenceSettings,
    InputChannel,
    LabelDef,
    Manifest,
    OutputChannel,
    Postprocessing,
    Preprocessing,
    RegionDef,
    palette_colour,
)
from medcnncad.models.trust import files_hash, require_trust

__all__ = ["CHECKPOINT", "find_trainer", "is_nnunet_folder", "nnunet_folds", "nnunet_hash", "describe_nnunet",
           "load_nnunet"]

CHECKPOINT = "checkpoint_final.pth"
NnUNetPredict = Callable[[np.ndarray, Sequence[float], bool, torch.device], np.ndarray]


def nnunet_folds(folder: Path) -> list[str]:
    """The fold names (``0``, ``1``, ..., ``all``) of ``folder`` that hold a final checkpoint, sorted."""
    return sorted(p.parent.name[len("fold_"):] for p in folder.glob(f"fold_*/{CHECKPOINT}"))


def is_nnunet_folder(folder: Path) -> bool:
    """True for an nnU-Net v2 trained-model folder (dataset.json, plans.json, a fold checkpoint)."""
    return (folder / "dataset.json").is_file() and (folder / "plans.json").is_file() and bool(nnunet_folds(folder))


def nnunet_hash(folder: Path) -> str:
    """SHA-256 of ``dataset.json``, ``plans.json`` and every ``fold_*/checkpoint_final.pth``."""
    files = [folder / "dataset.json", folder / "plans.json", *folder.glob(f"fold_*/{CHECKPOINT}")]
    return files_hash(folder, files)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: cannot be read as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return data


def _inputs(dataset: dict[str, Any], path: Path) -> tuple[InputChannel, ...]:
    names = dataset.get("channel_names") or dataset.get("modality")
    if not isinstance(names, dict) or not names:
        raise ModelError(f"{path}: no 'channel_names' (nnU-Net v2 dataset.json)")
    if not all(str(k).isdigit() for k in names):
        raise ModelError(f"{path}: 'channel_names' keys {sorted(names)} must be channel numbers (0, 1, ...)")
    ordered = [str(names[k]) for k in sorted(names, key=int)]
    return tuple(InputChannel(n, "CT" if n.upper() == "CT" else "MR") for n in ordered)


def _label_values(labels: dict[str, Any], path: Path) -> dict[str, tuple[int, ...]]:
    """``dataset.json`` ``labels`` but ``ignore``, each as its label values (an int is one value)."""
    out = {}
    for name, value in labels.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer()
                                 for v in values):
            raise ModelError(f"{path}: label {name!r} is {value!r}, not an integer label value or a list of them")
        if name != "ignore":
            out[name] = tuple(int(v) for v in values)
    return out


def _outputs(dataset: dict[str, Any], path: Path) -> tuple[Postprocessing, tuple[LabelDef, ...], tuple[RegionDef, ...]]:
    """Output channels, label values and regions as nnU-Net's LabelManager orders them.

    As ``LabelManager``: the model is region-based when some label is a list of more than one value; its
    regions are then every entry but ``ignore`` and the background (an int is a one-value region), in
    ``dataset.json`` order. Otherwise one softmax channel per label value, sorted (``[1]`` is label 1).
    """
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ModelError(f"{path}: no 'labels'")
    values = _label_values(labels, path)
    if not any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values()):
        by_value = sorted((v[0], name) for name, v in values.items())
        outs = tuple(OutputChannel(name.replace(" ", "_"), value) for value, name in by_value)
        defs = tuple(LabelDef(c.name, c.value, palette_colour(i)) for i, c in enumerate(outs) if c.value)
        return Postprocessing("softmax", outs), defs, ()
    order = dataset.get("regions_class_order")
    fg = [(name, r) for name, r in values.items() if set(r) != {0}]
    if not isinstance(order, list) or len(order) != len(fg):
        raise ModelError(f"{path}: a region-based model needs 'regions_class_order' with one value per region "
                         f"({len(fg)}: {[name for name, _ in fg]}), not {order!r}")
    outs = tuple(OutputChannel(name.replace(" ", "_"), int(v)) for (name, _), v in zip(fg, order))
    defs = tuple(LabelDef(c.name, c.value, palette_colour(i)) for i, c in enumerate(outs))
    # a region, in painted label values: every region's value whose original labels it contains
    region_defs = tuple(RegionDef(name.replace(" ", "_"), tuple(sorted(int(order[j]) for j, (_, rj) in enumerate(fg)
                                                                       if set(rj) <= set(r))))
                        for name, r in fg)
    return Postprocessing("sigmoid", outs, 0.5), defs, region_defs


def _configuration(folder: Path, plans: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The configuration nnU-Net's folder convention names (``<trainer>__<plans>__<configuration>``);
    only the description uses it (the run takes the checkpoint's)."""
    configs = plans.get("configurations", {})
    name = folder.name.rsplit("__", 1)[-1]
    if name not in configs:
        name = next((n for n in configs if n.startswith("3d")), next(iter(configs), ""))
    return name, configs.get(name, {})


def describe_nnunet(folder: str | Path) -> Manifest:
    """The engine's view of an nnU-Net v2 model folder, from ``dataset.json`` and ``plans.json`` only."""
    folder = Path(folder)
    dataset = _read_json(folder / "dataset.json")
    plans = _read_json(folder / "plans.json")
    post, labels, regions = _outputs(dataset, folder / "dataset.json")
    config_name, config = _configuration(folder, plans)
    patch = [int(v) for v in config.get("patch_size", (128, 128, 128))][-3:]
    while len(patch) < 3:
        patch.insert(0, 1)
    folds = nnunet_folds(folder)
    name = str(dataset.get("name") or plans.get("dataset_name") or folder.parent.name)
    checkpoint = folder / f"fold_{folds[0]}" / CHECKPOINT if folds else folder / CHECKPOINT
    return Manifest(
        id=f"nnunet-{name}".lower().replace(" ", "-"), version=str(dataset.get("release", "0.0.0")),
        task="segmentation", inputs=_inputs(dataset, folder / "dataset.json"), labels=labels, regions=regions,
        preprocessing=Preprocessing(normalization="none"), network_class=f"nnU-Net {config_name}", network_kwargs={},
        inference=InferenceSettings((patch[0], patch[1], patch[2]), 0.5, "gaussian"), postprocessing=post,
        weights_file=checkpoint, weights_sha256="", name=f"{name} (nnU-Net v2, {config_name}, folds {','.join(folds)})",
        description=str(dataset.get("description", "")) or "an nnU-Net v2 trained model",
        trained_on=str(dataset.get("reference", "")) or "see the model's dataset.json",
        intended_use="as stated by the model's authors; research use in MedCNNCAD", folder=folder,
        raw={"format": "nnunet", "folds": folds, "configuration": config_name,
             "weights_from": str(folder)})


def _load_checkpoint(path: Path, trusted: bool) -> dict[str, Any]:
    """A checkpoint as tensors only, or (trusted folders) fully unpickled."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError):
        if not trusted:
            raise
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)  # noqa: S614 - trusted by hash
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise ModelError(f"{path}: not an nnU-Net checkpoint (no 'network_weights')")
    return checkpoint


def _checkpoints(folder: Path, folds: Sequence[str], trust: bool) -> list[dict[str, Any]]:
    """Every fold's checkpoint; a full pickle asks for trust once for the whole folder."""
    try:
        return [_load_checkpoint(folder / f"fold_{f}" / CHECKPOINT, False) for f in folds]
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError):
        require_trust(folder, nnunet_hash(folder), trust,
                      "its checkpoints are full pickles (not loadable with torch.load(weights_only=True)), "
                      "and unpickling can run code")
    return [_load_checkpoint(folder / f"fold_{f}" / CHECKPOINT, True) for f in folds]


def _nnunet() -> Any:
    try:
        import nnunetv2.inference.predict_from_raw_data as predict  # lazy: optional, slow to import
    except ImportError:
        raise ModelError("nnU-Net v2 models need the 'nnunetv2' package: pip install nnunetv2") from None
    return predict


def find_trainer(name: str) -> Any:
    """The nnU-Net trainer class called ``name`` inside ``nnunetv2.training.nnUNetTrainer``, or None.

    nnU-Net's own lookup (``recursive_find_trainer_class_by_name``) stops at the first trainer
    module that cannot be imported (variants needing ``timm``, absent in a CPU install) and also
    searches ``$nnUNet_extTrainer`` paths; this one searches nnunetv2's package only and skips
    modules that do not import.
    """
    import nnunetv2.training.nnUNetTrainer as package
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    if name == nnUNetTrainer.__name__:
        return nnUNetTrainer
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".", onerror=lambda _: None):
        try:
            module = importlib.import_module(info.name)
        except Exception:  # noqa: BLE001 - a variant whose extra dependencies are missing
            continue
        found = getattr(module, name, None)
        if isinstance(found, type) and issubclass(found, nnUNetTrainer):
            return found
    return None


def _build(folder: Path, checkpoints: list[dict[str, Any]]) -> tuple[Any, ...]:
    """nnU-Net's own network for the checkpoints' trainer and configuration, and its plans objects."""
    predict = _nnunet()
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    first = checkpoints[0]
    dataset = _read_json(folder / "dataset.json")
    plans_manager = PlansManager(_read_json(folder / "plans.json"))
    configuration = plans_manager.get_configuration(first["init_args"]["configuration"])
    trainer = find_trainer(str(first["trainer_name"]))
    if trainer is None:
        raise ModelError(f"{folder}: trainer {first['trainer_name']!r} is not part of nnunetv2 "
                         f"(only nnunetv2's own trainers are looked up)")
    network = trainer.build_network_architecture(
        plans_manager, configuration, determine_num_input_channels(plans_manager, configuration, dataset),
        plans_manager.get_label_manager(dataset).num_segmentation_heads, enable_deep_supervision=False)
    return predict, plans_manager, configuration, network, dataset


def load_nnunet(folder: str | Path, trust: bool = False, folds: Sequence[str] | None = None) -> LoadedModel:
    """Load an nnU-Net v2 model folder (every fold with a final checkpoint, ensembled) as a
    :class:`LoadedModel` whose ``predict`` runs nnunetv2's predictor.

    Args:
        folder: the trained-model folder (``dataset.json``, ``plans.json``, ``fold_*/checkpoint_final.pth``).
        trust: allow checkpoints that need full unpickling for this run.
        folds: the folds to ensemble (default: all found).

    Raises:
        ModelError: not an nnU-Net folder, nnunetv2 missing, a checkpoint that is not nnU-Net's.
        TrustError: a checkpoint needs full unpickling and the folder is not trusted.
    """
    folder = Path(folder)
    manifest = describe_nnunet(folder)
    folds = list(folds or manifest.raw["folds"])
    missing = [f for f in folds if not (folder / f"fold_{f}" / CHECKPOINT).is_file()]
    if not folds or missing:
        raise ModelError(f"{folder}: no {CHECKPOINT} for fold(s) {missing or 'any'}")
    checkpoints = _checkpoints(folder, folds, trust)
    predict, plans_manager, configuration, network, dataset = _build(folder, checkpoints)
    parameters = [c["network_weights"] for c in checkpoints]
    network.load_state_dict(parameters[0])
    network.eval()
    first = checkpoints[0]
    predictors: dict[str, Any] = {}

    def run(images: np.ndarray, spacing: Sequence[float], mirror: bool, device: torch.device) -> np.ndarray:
        """nnU-Net probabilities (C_out, K, J, I) of a (C, K, J, I) float32 case with (z, y, x) spacing."""
        key = str(device)
        if key not in predictors:
            predictor = predict.nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                                perform_everything_on_device=device.type == "cuda", device=device,
                                                verbose=False, allow_tqdm=False)
            predictor.manual_initialization(network, plans_manager, configuration, parameters, dataset,
                                            first["trainer_name"], first.get("inference_allowed_mirroring_axes"))
            predictors[key] = predictor
        predictor = predictors[key]
        predictor.use_mirroring = mirror
        _, probabilities = predictor.predict_single_npy_array(np.ascontiguousarray(images, np.float32),
                                                              {"spacing": [float(s) for s in spacing]}, None, None,
                                                              True)
        return np.asarray(probabilities, np.float32)

    manifest = _with_run_details(manifest, folds, first)
    return LoadedModel(manifest, network, _identity, "nnunet", folder, predict=run)


def _with_run_details(manifest: Manifest, folds: list[str], checkpoint: dict[str, Any]) -> Manifest:
    raw = dict(manifest.raw, folds=folds, trainer=checkpoint["trainer_name"],
               configuration=checkpoint["init_args"]["configuration"])
    return replace(manifest, raw=raw)


def _identity(image: Any) -> Any:
    return image
