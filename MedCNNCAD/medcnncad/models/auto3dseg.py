"""Auto3DSeg SegResNet model folders, in the layout SlicerMONAIAuto3DSeg downloads, as models.

SlicerMONAIAuto3DSeg (``MONAIAuto3DSegLib/model_database.py``, ``Scripts/auto3dseg_segresnet_inference.py``)
unpacks each model into a folder holding ``model.pt`` and ``labels.csv``:

- ``model.pt``: a checkpoint dict with ``state_dict`` and ``config``; ``config["network"]`` is a
  MONAI ConfigParser dict (``_target_`` SegResNetDS ...), plus ``normalize_mode``,
  ``intensity_bounds``, ``extra_modalities``, ``roi_size``, ``resample_resolution``,
  ``crop_foreground``, ``orientation_ras`` and ``sigmoid``;
- ``labels.csv``: one row per label (``LabelValue``, ``Name`` and DICOM terminology columns).

The engine reproduces that script's pipeline with MONAI transforms and runs the network
through its own sliding window (window ``roi_size``, overlap 0.625, Gaussian blending, as the
script's ``SlidingWindowInfererAdapt``). The script chooses between two input pipelines by
matching "brats" in the model's file path; here the choice follows the checkpoint's config
instead: several inputs and no ``extra_modalities`` means one stacked multi-channel image
(the script's BraTS branch: orientation, foreground crop on all channels, resampling, then
channel-wise normalisation); otherwise each input is normalised by its own mode, concatenated,
cropped on the first input (normalised, as the script does when there are several) and resampled.
A sigmoid model with three outputs and labels 1, 2, 3 is the BraTS region model: channels
(whole tumor, tumor core, enhancing) painted 2, 1, 3 as the script merges them.

Differences that remain, stated: the script thresholds labels at the model's resolution and
maps them back nearest-neighbour; the engine maps probabilities back and labels them on the
input grid (identical when no resampling happens: input spacing within 0.75-1.25x of
``resample_resolution``). Optional ``medcnncad.json`` beside ``model.pt`` names the inputs
(``{"inputs": ["T1c", "T1", "FLAIR", "T2"], "name": ...}``), which the folder itself does not.

Safe loading: ``model.pt`` is opened with ``torch.load(weights_only=True)`` (as the script does
under torch >= 2.6); a network config that can run code (``bundle.config_code_entries``: a
``$`` expression, a ``_target_`` that is not a MONAI network/transform/inferer or torch.nn class, ...),
runs only after the trust step (:mod:`medcnncad.models.trust`).
"""

from __future__ import annotations

import copy
import csv
import functools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import (
    CropForeground,
    NormalizeIntensity,
    Orientation,
    ScaleIntensityRange,
    Spacing,
)
from monai.transforms.utils import generate_spatial_bounding_box

from medcnncad.errors import ModelError
from medcnncad.models.bundle import config_code_entries
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
    sha256_file,
)
from medcnncad.models.trust import files_hash, require_trust

__all__ = ["is_auto3dseg_folder", "auto3dseg_hash", "describe_auto3dseg", "load_auto3dseg", "normalizer",
           "OVERLAP"]

OVERLAP = 0.625  # the script's SlidingWindowInfererAdapt(overlap=0.625, mode="gaussian")


def is_auto3dseg_folder(folder: Path) -> bool:
    """True for a folder holding ``model.pt`` and ``labels.csv`` (SlicerMONAIAuto3DSeg's layout)."""
    return (folder / "model.pt").is_file() and (folder / "labels.csv").is_file()


def auto3dseg_hash(folder: Path) -> str:
    """SHA-256 of ``model.pt``, ``labels.csv`` and (when present) ``medcnncad.json``."""
    files = [folder / n for n in ("model.pt", "labels.csv", "medcnncad.json") if (folder / n).is_file()]
    return files_hash(folder, files)


def _checkpoint(folder: Path, mmap: bool = False) -> dict[str, Any]:
    """``model.pt``, tensors-only; ``mmap`` maps the tensors instead of reading them (for the config alone)."""
    path = folder / "model.pt"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a refused model
        raise ModelError(f"{path}: refused to load ({type(exc).__name__}: {str(exc)[:160]}); an Auto3DSeg "
                         f"model.pt holds tensors and plain config values only") from None
    if not isinstance(checkpoint, dict) or "config" not in checkpoint or "state_dict" not in checkpoint:
        raise ModelError(f"{path}: not an Auto3DSeg SegResNet checkpoint (no 'config' / 'state_dict')")
    return checkpoint


def _labels(folder: Path) -> dict[int, str]:
    path = folder / "labels.csv"
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        return {int(r["LabelValue"]): str(r["Name"]) for r in rows}
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise ModelError(f"{path}: needs columns LabelValue and Name with integer values ({exc})") from None


def _sidecar(folder: Path) -> dict[str, Any]:
    path = folder / "medcnncad.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: cannot be read as JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


def _outputs(config: dict[str, Any], labels: dict[int, str],
             path: Path) -> tuple[Postprocessing, tuple[RegionDef, ...]]:
    count = int(config["network"].get("out_channels", len(labels) + 1))
    if not config.get("sigmoid", False):
        outs = tuple(OutputChannel(labels.get(i, "background" if i == 0 else f"class_{i}").replace(" ", "_"), i)
                     for i in range(count))
        return Postprocessing("softmax", outs), ()
    if count == 3 and set(labels) == {1, 2, 3}:  # BraTS regions, merged as the script merges them
        outs = (OutputChannel("whole_tumor", 2), OutputChannel("tumor_core", 1), OutputChannel("enhancing_tumor", 3))
        regions = (RegionDef("whole_tumor", (1, 2, 3)), RegionDef("tumor_core", (1, 3)),
                   RegionDef("enhancing_tumor", (3,)))
        return Postprocessing("sigmoid", outs, 0.5), regions
    if count == 1:
        return Postprocessing("sigmoid", (OutputChannel(labels.get(1, "foreground").replace(" ", "_"), 1),), 0.5), ()
    raise ModelError(f"{path}: a sigmoid model with {count} outputs and labels {sorted(labels)} is not supported "
                     f"(supported: softmax; one sigmoid output; BraTS regions with labels 1, 2, 3)")


def _manifest(folder: Path, config: dict[str, Any], network_name: str) -> Manifest:
    labels = _labels(folder)
    post, regions = _outputs(config, labels, folder / "labels.csv")
    side = _sidecar(folder)
    count = int(config["network"].get("in_channels", 1))
    names = [str(n) for n in side.get("inputs", [])] or [f"image{i + 1}" for i in range(count)]
    if len(names) != count:
        raise ModelError(f"{folder / 'medcnncad.json'}: names {len(names)} inputs, the network takes {count}")
    modality = "CT" if str(config.get("modality", "mri")).lower() == "ct" else "MR"
    roi = [int(v) for v in config.get("roi_size", (96, 96, 96))]
    label_defs = tuple(LabelDef(name.replace(" ", "_"), value, palette_colour(i))
                       for i, (value, name) in enumerate(sorted(labels.items())) if value)
    name = str(side.get("name", folder.name))
    weights = folder / "model.pt"
    return Manifest(
        id=name.lower().replace(" ", "-"), version=str(side.get("version", "0.0.0")), task="segmentation",
        inputs=tuple(InputChannel(n, modality) for n in names), labels=label_defs, regions=regions,
        preprocessing=Preprocessing(normalization="none"), network_class=network_name, network_kwargs={},
        inference=InferenceSettings((roi[0], roi[1], roi[2]), OVERLAP, "gaussian"), postprocessing=post,
        weights_file=weights, weights_sha256=sha256_file(weights), name=f"{name} (Auto3DSeg SegResNet)",
        description=str(side.get("description", "an Auto3DSeg SegResNet model (SlicerMONAIAuto3DSeg layout)")),
        trained_on=str(side.get("trained_on", "see the model's source")),
        intended_use="as stated by the model's authors; research use in MedCNNCAD", folder=folder,
        raw={"format": "auto3dseg", "weights_from": str(weights), "config": {k: v for k, v in config.items()
                                                                           if k != "network"}})


@functools.lru_cache(maxsize=32)
def _config(folder: str, mtime_ns: int, size: int) -> dict[str, Any]:
    """The checkpoint's config, read once per file version (model listings describe every model often)."""
    try:
        return _checkpoint(Path(folder), mmap=True)["config"]
    except ModelError:  # a legacy (non-zip) file cannot be mapped: read it (a real refusal repeats below)
        return _checkpoint(Path(folder))["config"]


def describe_auto3dseg(folder: str | Path) -> Manifest:
    """The engine's view of an Auto3DSeg model folder (reads ``model.pt`` tensors-only, runs nothing)."""
    folder = Path(folder)
    if not (folder / "model.pt").is_file():
        raise ModelError(f"{folder / 'model.pt'}: not found (an Auto3DSeg model folder holds model.pt)")
    stat = (folder / "model.pt").stat()
    config = copy.deepcopy(_config(str(folder), stat.st_mtime_ns, stat.st_size))
    target = str(config.get("network", {}).get("_target_", "network")).rsplit(".", 1)[-1]
    return _manifest(folder, config, target)


def normalizer(mode: str, bounds: Sequence[float]) -> Callable[[Any], Any]:
    """One input's normalisation, as the script's ``_add_normalization_transforms`` defines each mode."""
    if mode == "none":
        return lambda x: x
    if mode in ("range", "ct"):
        scale = ScaleIntensityRange(a_min=float(bounds[0]), a_max=float(bounds[1]), b_min=-1, b_max=1, clip=False)
        return lambda x: torch.sigmoid(torch.as_tensor(scale(x)))
    if mode in ("meanstd", "mri"):
        return NormalizeIntensity(nonzero=True, channel_wise=True)
    if mode == "meanstdtanh":
        norm = NormalizeIntensity(nonzero=True, channel_wise=True)
        return lambda x: 3 * torch.tanh(torch.as_tensor(norm(x)) / 3)
    if mode == "pet":
        return lambda x: torch.sigmoid((x - x.min()) / x.std())
    raise ModelError(f"normalize_mode {mode!r} is not an Auto3DSeg mode")


def _spacing(config: dict[str, Any]) -> Spacing | None:
    pixdim = config.get("resample_resolution")
    if pixdim is None:
        return None
    pixdim = [float(v) for v in pixdim]
    return Spacing(pixdim=pixdim, mode="bilinear", dtype=np.float32, min_pixdim=np.array(pixdim) * 0.75,
                   max_pixdim=np.array(pixdim) * 1.25)


def _crop_to(image: Any, source: Any) -> Any:
    """The script's ``CropForegroundd(margin=10, allow_smaller=True)`` of ``image``, box from ``source`` > 0."""
    start, end = generate_spatial_bounding_box(source, margin=10, allow_smaller=True)
    return CropForeground(margin=10, allow_smaller=True).crop_pad(image, np.asarray(start), np.asarray(end))


def _preprocess(config: dict[str, Any], channels: int) -> Callable[[Any], Any]:
    """The script's input pipeline for ``channels`` inputs, on a (C, I, J, K) RAS MetaTensor."""
    main = str(config.get("normalize_mode", "meanstd"))
    bounds = config.get("intensity_bounds") or (0.0, 1.0)
    extra = dict(config.get("extra_modalities") or {})
    stacked = channels > 1 and not extra
    crop = bool(config.get("crop_foreground", True))
    spacing = _spacing(config)
    modes = [main] + [str(v) for v in extra.values()]
    if not stacked and channels > 1 and len(modes) < channels:
        raise ModelError(f"config names {len(modes)} normalize modes (normalize_mode + extra_modalities) for "
                         f"{channels} inputs")
    orient = Orientation(axcodes="RAS") if stacked and config.get("orientation_ras", False) else None
    whole = normalizer(main, bounds)
    each = [normalizer(m, bounds) for m in modes[:channels]]

    def run(image: Any) -> Any:
        if stacked:
            image = orient(image) if orient is not None else image
            image = _crop_to(image, image) if crop else image
            image = spacing(image) if spacing is not None else image
            return whole(image)
        raw_first = image[:1].clone()
        if channels == 1:
            image = whole(image)
        else:
            image = torch.cat([f(image[i:i + 1]) for i, f in enumerate(each)])
        if crop:  # the first input: raw when alone, normalised when there are several (as the script)
            image = _crop_to(image, raw_first if channels == 1 else image[:1])
        return spacing(image) if spacing is not None else image

    return run


def load_auto3dseg(folder: str | Path, trust: bool = False) -> LoadedModel:
    """Load an Auto3DSeg model folder as a :class:`LoadedModel` (network in eval mode).

    Raises:
        ModelError: not an Auto3DSeg checkpoint, weights that do not fit, unsupported outputs.
        TrustError: the network config can run code and the folder is not trusted.
    """
    folder = Path(folder)
    checkpoint = _checkpoint(folder)
    config = checkpoint["config"]
    code = config_code_entries(config.get("network", {}), "model.pt config['network']")
    if code:
        require_trust(folder, auto3dseg_hash(folder), trust,
                      f"the network config executes code ({len(code)} entries, e.g. {code[0]!r})")
    try:
        network = ConfigParser(config["network"]).get_parsed_content()
        network.load_state_dict(checkpoint["state_dict"], strict=True)
    except Exception as exc:  # noqa: BLE001 - any failure of the model's own config or weights
        raise ModelError(f"{folder / 'model.pt'}: network cannot be built or loaded "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    network.eval()
    manifest = _manifest(folder, config, type(network).__name__)
    return LoadedModel(manifest, network, _preprocess(config, len(manifest.inputs)), "auto3dseg", folder)
