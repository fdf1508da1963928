"""MONAI bundles (model-zoo format) as models, behind an explicit trust step.

A bundle folder holds ``configs/metadata.json``, ``configs/inference.json`` (or
``.yaml``) and ``models/model.pt``. Its network, sliding-window inferer and
preprocessing come from the config, parsed by ``monai.bundle.ConfigParser``. Because
``$`` entries of a config are Python expressions executed on parse (and ``_target_``,
a ``%`` macro or a loader's ``reader`` may name any callable or file), a bundle whose config
can run code (:func:`config_code_entries`) runs only when the user trusts it: ``trust=True``
for one run, or its hash in the trusted list
(:func:`trust_bundle`). The hash covers every file under ``configs/`` and ``models/``,
so a changed bundle is no longer trusted.

The engine keeps its own execution policy: loading steps of the bundle's
preprocessing are replaced by the engine's reader, outputs are mapped back onto the
input grid from the tensor's affine, and the label map follows the bundle's
activation (sigmoid + threshold, or softmax).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import monai.data
import yaml
from monai.bundle import ConfigParser
from monai.bundle.config_item import ComponentLocator
from monai.transforms import Compose
from monai.transforms.io.array import SUPPORTED_READERS
from monai.utils.module import locate

from medcnncad.errors import ModelError
from medcnncad.models.loaded import LoadedClassifier, LoadedModel
from medcnncad.models.manifest import (
    ClassDef,
    ClassifierManifest,
    InferenceSettings,
    InputChannel,
    LabelDef,
    Manifest,
    OutputChannel,
    Postprocessing,
    Preprocessing,
    RegionDef,
    contained_path,
    palette_colour,
    sha256_file,
)
from medcnncad.models.trust import add_trusted_hash, files_hash, require_trust, trusted_hashes
from medcnncad.models.weights import load_into, load_state_dict_verified

__all__ = ["bundle_hash", "brats_nesting", "BRATS_SUBREGIONS", "bundle_code_entries", "config_code_entries",
           "trusted_hashes", "trust_bundle", "load_bundle", "describe_bundle", "load_classification_bundle"]

# modules whose classes a config may build without trust: networks, transforms, inferers, torch layers and
# optimisers (not MONAI's utilities, bundle runners, data sets, engines or handlers, which can run commands,
# read or write files and download)
_SAFE_TARGET_PREFIXES = ("monai.networks.", "monai.transforms.", "monai.inferers.", "torch.nn.", "torch.optim.")
_LOADING_TRANSFORMS = {"LoadImage", "LoadImaged", "EnsureChannelFirst", "EnsureChannelFirstd", "SaveImage",
                       "SaveImaged"}


def _config_files(folder: Path) -> list[Path]:
    configs = folder / "configs"
    return sorted(p for p in configs.iterdir() if p.suffix in (".json", ".yaml", ".yml")) if configs.is_dir() else []


def bundle_hash(folder: str | Path) -> str:
    """SHA-256 over the relative paths and contents of every file in ``configs/`` and ``models/``."""
    folder = Path(folder)
    files = [p for sub in ("configs", "models") if (folder / sub).is_dir()
             for p in (folder / sub).rglob("*") if p.is_file()]
    return files_hash(folder, files)


def _read_config(path: Path) -> Any:
    try:
        if path.suffix == ".json":
            return json.loads(path.read_text(encoding="utf-8"))

        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad bundle
        raise ModelError(f"{path}: cannot be parsed ({type(exc).__name__}: {str(exc)[:160]})") from None


def _walk(node: Any) -> Iterator[tuple[str | None, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield None, value
            yield from _walk(value)


def _safe_class(path: str) -> bool:
    """Whether the dotted ``path`` names a class in a module of :data:`_SAFE_TARGET_PREFIXES` (only those
    modules are imported to find out)."""
    return path.startswith(_SAFE_TARGET_PREFIXES) and isinstance(locate(path), type)


def _safe_target(target: str, locator: ComponentLocator) -> bool:
    """Whether a ``_target_`` builds a safe class. A name without a dot is looked up as MONAI's config
    parser does: among MONAI's modules (every candidate must be safe), else by ``pydoc.locate``, which
    finds Python's builtins (``open``, ``exec``): never safe."""
    if "." in target:
        return _safe_class(target)
    modules = locator.get_component_module_name(target)
    candidates = [modules] if isinstance(modules, str) else modules or []
    return bool(candidates) and all(_safe_class(f"{module}.{target}") for module in candidates)


def _builtin_io_class(name: str) -> bool:
    """A ``reader``/``writer`` string that LoadImage/SaveImage resolve to MONAI's own class (other strings
    are looked up with ``pydoc.locate`` and called)."""
    return name.lower() in SUPPORTED_READERS or isinstance(getattr(monai.data, name, None), type)


def _code_entry(key: str | None, value: Any, locator: ComponentLocator) -> str | None:
    """Why one config entry (``key``: ``value``) can run code, or None."""
    if isinstance(value, str) and value.startswith("$"):
        return value[:80]
    if isinstance(value, str) and value.startswith("%") and ConfigParser.split_path_id(value[1:])[0]:
        return f"{value[:80]} (imports config from a file outside the checked ones)"
    if key == "_target_" and isinstance(value, str) and not _safe_target(value, locator):
        return f"_target_ {value[:80]}"
    if key == "_mode_" and value != "default":
        return f"_mode_ {str(value)[:80]}"
    names = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    if key in ("reader", "writer") and not all(isinstance(n, str) and _builtin_io_class(n) for n in names):
        return f"{key} {str(value)[:80]}"
    return None


def config_code_entries(config: Any, where: str) -> list[str]:
    """Entries of a parsed MONAI config that can execute code: ``$`` expressions, ``%`` macros that import
    another file, a ``_target_`` that is not a class of MONAI's networks, transforms or inferers, torch.nn or
    torch.optim (a name without a dot resolved as MONAI resolves it), a ``_mode_`` other than ``default``,
    and a ``reader``/``writer`` that is not MONAI's own. ``where`` prefixes each entry (a file name)."""
    locator = ComponentLocator()
    found = [_code_entry(key, value, locator) for key, value in _walk(config)]
    return [f"{where}: {entry}" for entry in found if entry is not None]


def bundle_code_entries(folder: str | Path) -> list[str]:
    """Config entries that can execute code (:func:`config_code_entries`) in every file of ``configs/``."""
    return [entry for path in _config_files(Path(folder))
            for entry in config_code_entries(_read_config(path), path.name)]


def trust_bundle(folder: str | Path) -> str:
    """Add a bundle's current hash to the trusted list; returns the hash."""
    return add_trusted_hash(bundle_hash(folder))


def _require_trust(folder: Path, trust: bool) -> None:
    """Refuse a bundle with code in its configs unless trusted now or by its hash."""
    code = bundle_code_entries(folder)
    if code:
        require_trust(folder, bundle_hash(folder), trust,
                      f"bundle configs contain executable code ({len(code)} entries, e.g. {code[0]!r})")


def _find_config(folder: Path) -> Path:
    for name in ("inference.json", "inference.yaml", "inference.yml"):
        if (folder / "configs" / name).is_file():
            return folder / "configs" / name
    raise ModelError(f"{folder}: bundle has no configs/inference.json or .yaml")


def _targets(config: Any, names: tuple[str, ...]) -> list[dict]:
    return [v for _, v in _walk(config) if isinstance(v, dict) and
            str(v.get("_target_", "")).rsplit(".", 1)[-1] in names]


_Outputs = tuple[Postprocessing, tuple[RegionDef, ...], dict[int, str]]
"""A bundle's postprocessing, its regions and its label names by value (where they are not the output names)."""


def _postprocessing(config: Any, channels: list[str], meta: dict, where: Path) -> _Outputs:
    """Activation, output channels (softmax: value = channel index; sigmoid: index + 1) and, for nested
    sigmoid outputs, the painting order, regions and label names (:func:`_sigmoid_layout`)."""
    act = _targets(config, ("Activations", "Activationsd"))
    sigmoid = any(a.get("sigmoid") is True for a in act)
    thresholds = [d["threshold"] for d in _targets(config, ("AsDiscrete", "AsDiscreted"))
                  if isinstance(d.get("threshold"), (int, float))]
    if sigmoid:
        outs = tuple(OutputChannel(name, i + 1) for i, name in enumerate(channels))
        order, regions, names = _sigmoid_layout(outs, meta.get("medcnncad", {}), where)
        return Postprocessing("sigmoid", outs, float(thresholds[0]) if thresholds else 0.5,
                              paint_order=order), regions, names
    outs = tuple(OutputChannel(name, i) for i, name in enumerate(channels))
    return Postprocessing("softmax", outs), (), {}


_BRATS_REGIONS = ({"whole_tumor", "wt"}, {"tumor_core", "tc"}, {"enhancing_tumor", "et"})
"""The BraTS regions, outermost first, each by the names a bundle's ``channel_def`` gives it (case and spaces
aside): the whole tumor holds the tumor core, which holds the enhancing tumor."""


def brats_nesting(names: list[str]) -> list[str] | None:
    """``names`` ordered outermost first when every one names a different BraTS region (:data:`_BRATS_REGIONS`,
    e.g. MONAI's BraTS bundle's "Tumor core", "Whole tumor", "Enhancing tumor"), else ``None``."""
    rank: dict[str, int] = {}
    for name in names:
        found = [i for i, aliases in enumerate(_BRATS_REGIONS) if name.lower().replace(" ", "_") in aliases]
        if not found or found[0] in rank.values():
            return None
        rank[name] = found[0]
    return sorted(names, key=rank.__getitem__)


BRATS_SUBREGIONS = ("ED", "NCR", "ET")
"""What a voxel painted with each BraTS region (outermost first) and none inside it is: oedema (whole tumor outside
the core), necrotic / non-enhancing core (core outside the enhancing tumor), enhancing tumor."""


def _sigmoid_layout(outs: tuple[OutputChannel, ...], extra: Any,
                    where: Path) -> tuple[tuple[int, ...], tuple[RegionDef, ...], dict[int, str]]:
    """Painting order (channel indices), regions and label names of several sigmoid outputs, from the metadata's
    ``medcnncad`` block: ``nested_outputs`` (every output's name, outermost first, as BraTS whole tumor,
    tumor core, enhancing tumor: painted in that order, each a region of its own and the inner outputs'
    values) or ``exclusive_outputs: true`` (outputs never overlap: channel order, no regions).

    A painted value of a nested output marks the voxels of that output outside the next inner one, so its label
    is named for that (``<output>_outside_<inner>``; the innermost keeps its name, and is no region of its own).
    Sigmoid outputs may overlap, and a bundle does not say how (MONAI's BraTS bundle lists tumor core
    before the whole tumor that contains it: painted in channel order the core would vanish). Without either
    key, outputs that are the BraTS regions are nested as BraTS defines them (:func:`brats_nesting`), their
    labels named as BraTS names the sub-regions (:data:`BRATS_SUBREGIONS`) and their regions WT and TC; other
    overlapping outputs are refused.
    """
    extra = extra if isinstance(extra, dict) else {}
    names = [c.name for c in outs]
    nested = extra.get("nested_outputs")
    if len(outs) < 2 or (nested is None and extra.get("exclusive_outputs") is True):
        return (), (), {}
    brats = nested is None  # no declaration: the outputs' BraTS names, if they are BraTS regions
    if brats:
        nested = brats_nesting(names)
    if nested is None:
        raise ModelError(f"{where}: the bundle's {len(outs)} sigmoid outputs {names} may overlap; say how in "
                         f"'medcnncad': {{'nested_outputs': [outermost, ..., innermost]}} (e.g. whole tumor, "
                         f"tumor core, enhancing tumor) or {{'exclusive_outputs': true}}")
    given = [str(n).replace(" ", "_") for n in nested] if isinstance(nested, list) else []
    if sorted(given) != sorted(names):
        raise ModelError(f"{where}: medcnncad.nested_outputs {nested!r} must name each output {names} once")
    order = tuple(names.index(n) for n in given)
    inner = [tuple(sorted(outs[j].value for j in order[k:])) for k in range(len(order))]
    if brats:
        return order, (RegionDef("WT", inner[0]), RegionDef("TC", inner[1])), \
            {outs[i].value: BRATS_SUBREGIONS[k] for k, i in enumerate(order)}
    labels = {outs[i].value: f"{outs[i].name}_outside_{outs[order[k + 1]].name}" for k, i in enumerate(order[:-1])}
    return order, tuple(RegionDef(outs[i].name, inner[k]) for k, i in enumerate(order[:-1])), labels


def _channel_names(meta: dict, key: str, count_default: int, prefix: str) -> list[str]:
    fmt = meta.get("network_data_format", {}).get(key, {})
    spec: dict[Any, Any] = next(iter(fmt.values()), {}) if isinstance(fmt, dict) and fmt else {}
    defs = spec.get("channel_def") or {}
    count = int(spec.get("num_channels", len(defs) or count_default))
    return [str(defs.get(str(i), defs.get(i, f"{prefix}{i}"))).replace(" ", "_") for i in range(count)]


_INFERER_FIELDS = ("roi_size", "overlap", "mode", "sw_batch_size")


def _inference_settings(values: dict[str, Any]) -> InferenceSettings:
    """Sliding-window settings from an inferer's fields (defaults for those absent)."""
    mode = values.get("mode", "constant")
    roi = cast("tuple[int, int, int]", tuple(int(v) for v in values.get("roi_size", (96, 96, 96))))
    return InferenceSettings(roi,
                             float(values.get("overlap", 0.25)), str(getattr(mode, "value", mode)),
                             int(values.get("sw_batch_size", 1)))


def _read_metadata(folder: Path) -> dict:
    path = folder / "configs" / "metadata.json"
    meta = _read_config(path)
    if not isinstance(meta, dict):
        raise ModelError(f"{path}: metadata must be a JSON object")
    return meta


def _bundle_manifest(folder: Path, meta: dict, network_name: str, inference: InferenceSettings,
                     outputs: _Outputs, weights: Path) -> Manifest:
    """The engine's view of a bundle: channels from metadata, labels (and regions) from the outputs."""
    post, regions, names = outputs
    labels = tuple(LabelDef(names.get(c.value, c.name), c.value, palette_colour(i))
                   for i, c in enumerate(post.channels) if c.value)
    name = str(meta.get("name", folder.name))
    return Manifest(
        id=name.lower().replace(" ", "-"), version=str(meta.get("version", "0.0.0")), task="segmentation",
        inputs=tuple(InputChannel(n, "MR") for n in _channel_names(meta, "inputs", 1, "image")), labels=labels,
        regions=regions, preprocessing=Preprocessing(), network_class=network_name, network_kwargs={},
        inference=inference, postprocessing=post, weights_file=weights, weights_sha256=sha256_file(weights),
        name=name, description=str(meta.get("description", "")),
        trained_on=str(meta.get("data_source", "see bundle metadata")),
        intended_use=str(meta.get("intended_use", "")), folder=folder, raw={"bundle": True})


def describe_bundle(folder: str | Path) -> Manifest:
    """The engine's view of a bundle from its metadata and raw config, without running any of it."""
    folder = Path(folder)
    meta = _read_metadata(folder)
    config = _read_config(_find_config(folder))
    raw_inferer = config.get("inferer", {}) if isinstance(config, dict) else {}
    settings = _inference_settings({k: v for k, v in raw_inferer.items()
                                    if k in _INFERER_FIELDS and not (isinstance(v, str) and v[:1] in "$@")})
    network = str((config.get("network_def") or {}).get("_target_", "network")) if isinstance(config, dict) else ""
    post = _postprocessing(config, _channel_names(meta, "outputs", 2, "class"), meta,
                           folder / "configs" / "metadata.json")
    return _bundle_manifest(folder, meta, network.rsplit(".", 1)[-1], settings, post,
                            contained_path(folder, "models/model.pt", "weights"))


def _instantiate(folder: Path, trust: bool, names: tuple[str, ...]) -> tuple[dict, Path, Path, dict[str, Any]]:
    """Trust check, then the bundle's config entries ``names`` (absent ones None) and its verified
    weights loaded into ``network_def`` (eval mode). Returns metadata, config path, weights path, entries."""

    meta = _read_metadata(folder)
    config_path = _find_config(folder)
    _require_trust(folder, trust)
    weights = contained_path(folder, "models/model.pt", "weights")
    parser = ConfigParser()
    parser.read_config(str(config_path))
    parser["bundle_root"] = str(folder)
    try:
        parsed: dict[str, Any] = {n: parser.get_parsed_content(n, instantiate=True) if n in parser else None
                                  for n in names}
    except Exception as exc:  # noqa: BLE001 - any failure of the bundle's own config
        raise ModelError(f"{config_path}: bundle config cannot be instantiated "
                         f"({type(exc).__name__}: {str(exc)[:200]})") from None
    network = parsed["network_def"]
    load_into(network, load_state_dict_verified(weights, meta.get("medcnncad", {}).get("weights_sha256")), weights)
    network.eval()
    return meta, config_path, weights, parsed


def _preprocess_without_loading(pre: Any, meta: dict):
    """The bundle's preprocessing minus its loading/saving steps, as a function of one tensor."""
    steps = [t for t in (pre.transforms if isinstance(pre, Compose) else ([pre] if pre else []))
             if type(t).__name__ not in _LOADING_TRANSFORMS]
    key = next(iter(meta.get("network_data_format", {}).get("inputs", {"image": None})), "image")
    compose = Compose(steps)

    def preprocess(image: Any) -> Any:
        return compose({key: image})[key] if steps else image

    return preprocess


def load_bundle(folder: str | Path, trust: bool = False) -> LoadedModel:
    """Load a MONAI bundle folder as a :class:`LoadedModel` (refused when untrusted code)."""
    folder = Path(folder)
    meta, config_path, weights, parsed = _instantiate(folder, trust, ("network_def", "inferer", "preprocessing"))
    network, inferer = parsed["network_def"], parsed["inferer"]
    preprocess = _preprocess_without_loading(parsed["preprocessing"], meta)

    post = _postprocessing(_read_config(config_path), _channel_names(meta, "outputs", 2, "class"), meta,
                           folder / "configs" / "metadata.json")
    manifest = _bundle_manifest(folder, meta, type(network).__name__, _inference_settings(
        {k: getattr(inferer, k) for k in _INFERER_FIELDS if hasattr(inferer, k)}), post, weights)
    return LoadedModel(manifest, network, preprocess, "bundle", folder)


def _classifier_manifest(folder: Path, meta: dict, network: Any, weights: Path):
    """The engine's classifier view of a classification bundle (metadata + its ``medcnncad`` block)."""
    fmt = meta.get("network_data_format", {})
    out_spec: dict[Any, Any] = next(iter(fmt.get("outputs", {}).values()), {})
    in_spec: dict[Any, Any] = next(iter(fmt.get("inputs", {}).values()), {})
    if out_spec.get("type") != "probabilities":
        raise ModelError(f"{folder}: bundle outputs are {out_spec.get('type')!r}, not class probabilities")
    extra = meta.get("medcnncad", {})
    if "lesion_structure" not in extra:
        raise ModelError(f"{folder}: a classification bundle used as a lesion grade classifier needs "
                         f"'medcnncad': {{'lesion_structure': ...}} in configs/metadata.json (the segmentation "
                         f"structure whose lesions it classifies)")
    classes = _channel_names(meta, "outputs", 2, "class")
    shape = [int(v) for v in in_spec.get("spatial_shape", [])]
    if len(shape) != 3:
        raise ModelError(f"{folder}: bundle input spatial_shape {shape} is not 3D; lesion patches are 3D")
    inputs = _channel_names(meta, "inputs", 1, "image")
    mask = bool(extra.get("mask_channel", False))
    name = str(meta.get("name", folder.name))
    return ClassifierManifest(
        id=name.lower().replace(" ", "-"), version=str(meta.get("version", "0.0.0")), task="classification",
        inputs=tuple(InputChannel(n, "MR") for n in (inputs[:-1] if mask else inputs)),
        classes=tuple(ClassDef(c) for c in classes), positive_class=str(extra.get("positive_class", classes[-1])),
        lesion_structure=str(extra["lesion_structure"]), lesion_label_values=(),
        patch_size=(shape[0], shape[1], shape[2]),
        patch_spacing_mm=cast("tuple[float, float, float]",
                              tuple(float(v) for v in extra.get("patch_spacing_mm", (1.0, 1.0, 1.0)))),
        mask_channel=mask, network_class=type(network).__name__, network_kwargs={}, weights_file=weights,
        weights_sha256=sha256_file(weights), calibration={"method": "none", "temperature": 1.0},
        name=name, description=str(meta.get("description", "")),
        trained_on=str(meta.get("data_source", "see bundle metadata")), folder=folder, raw={"bundle": True})


def load_classification_bundle(folder: str | Path, trust: bool = False):
    """A model-zoo classification bundle (classification template format) as a lesion grade classifier.

    Its network and preprocessing come from ``configs/inference.json``/``.yaml`` (loading
    steps dropped; the rest runs on each raw lesion patch, given channel-first in (C, I, J, K)
    order on an LPS-aligned grid, as MONAI's loaders give arrays), outputs are logits turned into
    probabilities by softmax (no temperature: uncalibrated unless the bundle says so). The
    bundle's metadata names the patch (``spatial_shape``) and, in a ``medcnncad`` block,
    the segmentation structure it classifies and optionally ``positive_class``,
    ``patch_spacing_mm`` and ``mask_channel``.
    """
    folder = Path(folder)
    meta, _, weights, parsed = _instantiate(folder, trust, ("network_def", "preprocessing"))
    network = parsed["network_def"]
    manifest = _classifier_manifest(folder, meta, network, weights)
    return LoadedClassifier(manifest, network, folder, _preprocess_without_loading(parsed["preprocessing"], meta))
