"""Model manifests: a JSON file, validated against a JSON Schema, that fully describes a model.

The manifest, never a file name, decides how a model is run: which input channels it
takes, how they are preprocessed, which MONAI network class is built, how the sliding
window runs, and how outputs become probabilities and a label map.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np

from medcnncad.errors import ModelError
from medcnncad.models.lesion_filter_features import feature_names

__all__ = [
    "LABEL_PALETTE", "palette_colour", "Code", "Terminology", "InputChannel", "LabelDef", "RegionDef", "Preprocessing",
    "ClinicalPreprocessing", "extracts_brain",
    "InferenceSettings",
    "channel_term", "channels_named", "OutputChannel", "CoreRefinement", "VesselFilter", "Postprocessing", "Manifest",
    "load_manifest",
    "parse_manifest",
    "sha256_file",
    "contained_path", "ClassDef", "ClassifierManifest", "parse_classifier_manifest",
]

# colours for the labels of model formats that do not name any (MONAI bundles, nnU-Net, Auto3DSeg), in order
LABEL_PALETTE: tuple[tuple[float, float, float], ...] = (
    (0.9, 0.2, 0.2), (0.2, 0.8, 0.2), (1.0, 0.9, 0.1), (0.3, 0.6, 1.0), (0.9, 0.4, 0.9), (0.1, 0.9, 0.9))


def palette_colour(index: int) -> tuple[float, float, float]:
    """The ``index``-th label colour of :data:`LABEL_PALETTE` (cycling)."""
    return LABEL_PALETTE[index % len(LABEL_PALETTE)]

_SCHEMA_PATH = Path(__file__).with_name("schemas") / "manifest.schema.json"


@functools.lru_cache(maxsize=2)
def _schema(name: str = "manifest") -> dict[str, Any]:
    return json.loads(_SCHEMA_PATH.with_name(f"{name}.schema.json").read_text())


@dataclass(frozen=True)
class Code:
    """A coded concept, e.g. SNOMED-CT ("SCT", "6574001", "Necrosis")."""

    scheme: str
    code: str
    meaning: str


@dataclass(frozen=True)
class Terminology:
    """DICOM / Slicer segment terminology: category, type and optional modifier/region."""

    category: Code
    type: Code
    modifier: Code | None = None
    anatomic_region: Code | None = None


@dataclass(frozen=True)
class InputChannel:
    name: str
    modality: str
    required: bool = True
    aliases: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class LabelDef:
    """One label value of the label map, with display colour (RGB 0-1) and terminology."""

    name: str
    value: int
    color: tuple[float, float, float]
    terminology: Terminology | None = None
    description: str = ""


@dataclass(frozen=True)
class RegionDef:
    """A named union of label values, e.g. BraTS WT = {1, 2, 4}."""

    name: str
    labels: tuple[int, ...]
    color: tuple[float, float, float] = (1.0, 1.0, 0.0)
    terminology: Terminology | None = None
    description: str = ""


@dataclass(frozen=True)
class Preprocessing:
    """Orientation (axis codes, RAS convention as MONAI), spacing (x, y, z mm), normalisation, crop.

    ``residue_fraction``: after resampling (with ``spacing_mm`` only), a value whose magnitude is below this
    fraction of its channel's largest magnitude is set to exactly 0 (interpolation residue such as 1e-14 of a
    bright neighbour, which rounds differently on each device and which a ``nonzero`` normalisation and the
    foreground crop would count as foreground). None: MONAI's behaviour, nothing snapped.
    """

    orientation: str | None = None
    spacing_mm: tuple[float, float, float] | None = None
    normalization: str = "zscore"
    nonzero: bool = True
    channel_wise: bool = True
    a_min: float | None = None
    a_max: float | None = None
    crop_foreground: bool = False
    crop_margin_vox: int = 0
    residue_fraction: float | None = None


@dataclass(frozen=True)
class ClinicalPreprocessing:
    """The engine's clinical preprocessing (manifest ``clinical_preprocessing``), run before ``preprocessing``.

    See :mod:`medcnncad.preprocessing.chain`. Volumes in mL; ``min_registration_quality`` is a
    gradient-magnitude correlation (-1 to 1).
    """

    background: str = "zero_constant"
    registration: str = "rigid"
    min_registration_quality: float = 0.25
    brain_mask: str = "auto"
    skull_stripped_max_ml: float = 2200.0
    mask_dilate_voxels: int = 0
    bias_correction: bool = False
    results_inside_mask: bool = False  # labels and probabilities outside the brain mask -> background


def extracts_brain(spec: ClinicalPreprocessing | None) -> bool:
    """Whether a model's clinical preprocessing (``spec``) may extract the brain, so takes a reader's brain-mask
    choice (:class:`medcnncad.preprocessing.brain_mask.BrainMaskChoice`): it has one, its ``brain_mask`` not
    "never"."""
    return spec is not None and spec.brain_mask != "never"


@dataclass(frozen=True)
class InferenceSettings:
    """Sliding-window settings; ``roi_size`` in voxels (x, y, z) of the preprocessed grid."""

    roi_size: tuple[int, int, int]
    overlap: float = 0.25
    blend_mode: str = "gaussian"
    sw_batch_size: int = 1
    precision: str = "auto"       # auto: fp16 autocast on CUDA, fp32 on CPU; or fp32 / bf16 / fp16
    channels_last: bool = False   # channels_last_3d memory layout for the network
    fit_roi: int = 0              # > 0: shrink the window to the image, rounded up to this multiple
    test_time_augmentation: bool = False  # default mode; the post-processing was chosen in it


@dataclass(frozen=True)
class OutputChannel:
    """Network output channel ``name``; ``value`` is painted into the label map (0 = background)."""

    name: str
    value: int


@dataclass(frozen=True)
class LesionFilter:
    """Logistic model P(true lesion) = 1 / (1 + exp(-(intercept + sum(coef * (x - mean) / scale))));
    candidates with P < ``min_probability`` are removed."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coefficients: tuple[float, ...]
    intercept: float
    min_probability: float
    description: str = ""

    def probability(self, x: np.ndarray) -> np.ndarray:
        """P(true lesion) for an (N, F) feature array in ``features`` order; shape (N,)."""
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.coefficients) + self.intercept)))


@dataclass(frozen=True)
class VesselFilter:
    """Thin, long, solid, mostly enhancing components (dural sinuses, veins) are removed
    (:mod:`medcnncad.lesions.vessel_filter`): volume >= ``min_ml`` (mL), largest inscribed radius <=
    ``max_radius_mm``, length along the principal axis >= ``min_length_mm``, share of ``enhancing_labels``
    voxels >= ``min_enhancing_fraction``, slice-wise hole-filled volume <= ``max_fill_ratio`` x volume."""

    enhancing_labels: tuple[int, ...]
    max_radius_mm: float
    min_length_mm: float
    min_enhancing_fraction: float = 0.5
    max_fill_ratio: float = 1.2
    min_ml: float = 1.0
    description: str = ""


@dataclass(frozen=True)
class LabelVolumeFloor:
    """When a case's total volume of label ``value`` is below ``min_ml`` (mL), those voxels become
    ``replace_with`` (BraTS practice: a few enhancing voxels in a non-enhancing tumor become core)."""

    value: int
    min_ml: float
    replace_with: int


@dataclass(frozen=True)
class CoreRefinement:
    """Tumor core re-read in each case's own contrast (``medcnncad.inference.refine``), applied after every other
    post-processing step and only when all ``required_inputs`` are present and the ``fixed_labels``
    (e.g. enhancing tumor) make up less than ``max_fixed_share`` of the predicted core.

    Inside the predicted tumor (labels ``core_label``, ``shell_label`` and ``fixed_labels``), the given
    inputs, Gaussian-smoothed (``smoothing_mm``, mm) and z-scored, are clustered by a Gaussian mixture of
    ``components`` components; a component votes "core" when its voxels' mean network core probability
    (the sum of the core and fixed labels' channels) exceeds 0.5. A voxel is core where
    ``network_weight`` x its core probability + (1 - ``network_weight``) x its component's vote exceeds
    0.5. Core voxels become ``core_label``, the rest ``shell_label``, except that core components sharing
    no voxel with the network's core stay ``shell_label``; ``fixed_labels`` never change, so the whole
    tumor and the fixed labels stay as they were. When the refined core (core and fixed labels) would be
    more than ``max_volume_change`` times larger or smaller than the network's, the case keeps the
    network's labels (the step moves an edge; it does not replace the core). Label values, not names."""

    core_label: int
    shell_label: int
    fixed_labels: tuple[int, ...]
    required_inputs: tuple[str, ...]
    max_fixed_share: float
    components: int = 4
    network_weight: float = 0.5
    smoothing_mm: float = 1.0
    max_fit_voxels: int = 200000
    seed: int = 0
    max_volume_change: float = 2.0


@dataclass(frozen=True)
class Postprocessing:
    """``softmax``: label = value of the arg-max channel. ``sigmoid``: channels are painted in
    list order (the network's output order) wherever their probability exceeds ``threshold`` (later
    channels win). ``paint_order`` (channel indices) is set only for MONAI bundles, from their metadata's
    ``medcnncad.nested_outputs`` or their BraTS output names; a manifest file cannot declare it, and lists
    nested outputs outermost first instead.
    Connected foreground components smaller than ``min_lesion_ml``, or whose largest foreground
    probability is below ``min_lesion_probability``, are removed from the label map."""

    activation: str
    channels: tuple[OutputChannel, ...]
    threshold: float = 0.5
    probability_dtype: str = "float32"
    min_lesion_ml: float = 0.0
    probability_file: str = "float32"  # or "uint8": round(255 p), NIfTI scl_slope 1/255 (error <= 1/510)
    min_lesion_probability: float = 0.0
    lesion_filter: LesionFilter | None = None  # second stage (lesions/lesion_filter.py), after the floors
    label_volume_floors: tuple[LabelVolumeFloor, ...] = ()  # applied after the lesion filter
    core_refinement: CoreRefinement | None = None  # applied last (refine.py)
    vessel_filter: VesselFilter | None = None  # after the floors, before the lesion filter (vessel_filter.py)
    paint_order: tuple[int, ...] = ()  # sigmoid, bundles only: channel indices, painted in this order (empty: list)

    def painting(self) -> tuple[int, ...]:
        """The channel indices in the order a sigmoid label map paints them (later ones win)."""
        return self.paint_order or tuple(range(len(self.channels)))


@dataclass(frozen=True)
class Manifest:
    """A validated model manifest. ``folder`` is the directory the manifest was read from."""

    id: str
    version: str
    task: str
    inputs: tuple[InputChannel, ...]
    labels: tuple[LabelDef, ...]
    regions: tuple[RegionDef, ...]
    preprocessing: Preprocessing
    network_class: str
    network_kwargs: dict[str, Any]
    inference: InferenceSettings
    postprocessing: Postprocessing
    weights_file: Path
    weights_sha256: str
    name: str = ""
    aliases: tuple[str, ...] = ()
    description: str = ""
    trained_on: str = ""
    intended_use: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    folder: Path = Path(".")
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    case_calibration: tuple[dict[str, Any], ...] = ()
    clinical: ClinicalPreprocessing | None = None
    input_warnings: tuple[tuple[frozenset[str], str], ...] = ()  # (exact set of given inputs, message)

    @property
    def input_names(self) -> list[str]:
        return [c.name for c in self.inputs]

    def channels_named(self, text: str) -> list[str]:
        """The input channels ``text`` names: :func:`channels_named` over this manifest's inputs."""
        return channels_named(self.inputs, text)

    def warnings_for(self, given: Sequence[str]) -> list[str]:
        """The manifest's ``input_warnings`` messages for a run given exactly the sequences ``given``."""
        return [message for inputs, message in self.input_warnings if inputs == frozenset(given)]

    def case_calibration_for(self, given: Sequence[str]) -> dict[str, Any] | None:
        """The ``case_calibration`` block fitted with exactly the sequences ``given`` (None when there is none).

        The case score of a model with optional inputs depends on which were given, so a block
        applies only to its own set (``inputs``; filled in at parsing when the manifest leaves it out).
        """
        wanted = set(given)
        return next((block for block in self.case_calibration if set(block["inputs"]) == wanted), None)

    def structures(self) -> dict[str, tuple[int, ...]]:
        """Structure name -> label values: every label, then every region (e.g. WT = (1, 2, 4))."""
        out: dict[str, tuple[int, ...]] = {label.name: (label.value,) for label in self.labels}
        out.update({region.name: tuple(region.labels) for region in self.regions})
        return out


@dataclass(frozen=True)
class ClassDef:
    name: str
    description: str = ""


@dataclass(frozen=True)
class ClassifierManifest:
    """A validated lesion-classifier manifest (``task == "classification"``).

    The network sees a patch of ``patch_size`` voxels (x, y, z) at ``patch_spacing_mm``
    centred on a lesion's centroid, axes along LPS, channels = ``inputs`` (+ the lesion
    mask when ``mask_channel``), each input channel z-scored over its non-zero patch voxels.
    Probabilities are ``softmax(logits / temperature)``; ``threshold`` applies to
    ``positive_class``.
    """

    id: str
    version: str
    task: str
    inputs: tuple[InputChannel, ...]
    classes: tuple[ClassDef, ...]
    positive_class: str
    lesion_structure: str
    lesion_label_values: tuple[int, ...]
    patch_size: tuple[int, int, int]
    patch_spacing_mm: tuple[float, float, float]
    mask_channel: bool
    network_class: str
    network_kwargs: dict[str, Any]
    weights_file: Path
    weights_sha256: str
    temperature: float = 1.0
    threshold: float = 0.5
    min_lesion_ml: float = 0.0
    calibration: dict[str, Any] = field(default_factory=dict)
    operating_point: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    aliases: tuple[str, ...] = ()
    description: str = ""
    trained_on: str = ""
    intended_use: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    folder: Path = Path(".")
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def input_names(self) -> list[str]:
        return [c.name for c in self.inputs]

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def positive_index(self) -> int:
        return self.class_names.index(self.positive_class)


def _validate(data: dict[str, Any], schema: str, where: str) -> None:
    try:
        jsonschema.validate(data, _schema(schema))
    except jsonschema.ValidationError as exc:
        loc = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise ModelError(f"{where}: invalid manifest at {loc}: {exc.message[:200]}") from None
    bad = _non_finite(data)
    if bad:  # Python's JSON reads NaN and Infinity, and every schema bound lets NaN through
        raise ModelError(f"{where}: invalid manifest at {bad}: not a finite number")


def _non_finite(value: Any, where: str = "") -> str | None:
    """The path of the first NaN or infinite number in a parsed JSON value (None when there is none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "(top level)"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _non_finite(item, f"{where}/{key}" if where else str(key))
        if found:
            return found
    return None


def parse_classifier_manifest(data: dict[str, Any], folder: Path, where: str = "manifest") -> ClassifierManifest:
    """Validate a classifier manifest and build :class:`ClassifierManifest` (ModelError naming ``where``)."""
    _validate(data, "classifier", where)
    patch = data["patch"]
    calibration = data.get("calibration", {"method": "none", "temperature": 1.0})
    m = ClassifierManifest(
        id=data["id"], version=data["version"], task=data["task"],
        inputs=tuple(InputChannel(c["name"], c["modality"], c.get("required", True), tuple(c.get("aliases", ())),
                                  c.get("description", "")) for c in data["inputs"]),
        classes=tuple(ClassDef(c["name"], c.get("description", "")) for c in data["classes"]),
        positive_class=data["positive_class"], lesion_structure=data["lesion_structure"],
        lesion_label_values=tuple(data.get("lesion_label_values", ())),
        patch_size=tuple(patch["size_vox"]), patch_spacing_mm=tuple(patch["spacing_mm"]),
        mask_channel=patch.get("mask_channel", True),
        network_class=data["network"]["class"], network_kwargs=dict(data["network"]["kwargs"]),
        weights_file=contained_path(folder, data["weights"]["file"], "weights"),
        weights_sha256=data["weights"]["sha256"],
        temperature=float(calibration["temperature"]) if calibration["method"] == "temperature" else 1.0,
        threshold=float(data.get("operating_point", {}).get("threshold", 0.5)),
        min_lesion_ml=float(data.get("min_lesion_ml", 0.0)),
        calibration=calibration, operating_point=data.get("operating_point", {}),
        name=data.get("name", data["id"]), aliases=tuple(data.get("aliases", ())),
        description=data.get("description", ""), trained_on=data.get("trained_on", ""),
        intended_use=data.get("intended_use", ""), training=data.get("training", {}), folder=folder, raw=data)
    names = m.class_names
    if len(set(names)) != len(names):
        raise ModelError(f"{where}: duplicate class names {names}")
    if m.positive_class not in names:
        raise ModelError(f"{where}: positive_class {m.positive_class!r} is not one of the classes {names}")
    n_in = m.network_kwargs.get("in_channels", m.network_kwargs.get("n_input_channels"))
    expected = len(m.inputs) + (1 if m.mask_channel else 0)
    if n_in is not None and n_in != expected:
        raise ModelError(f"{where}: network in_channels={n_in} but the patch has {expected} channels "
                         f"({len(m.inputs)} inputs{' + lesion mask' if m.mask_channel else ''})")
    n_out = m.network_kwargs.get("out_channels", m.network_kwargs.get("num_classes"))
    if n_out is not None and n_out != len(names):
        raise ModelError(f"{where}: network out_channels={n_out} but {len(names)} classes")
    return m


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def contained_path(folder: Path, relative: str, what: str) -> Path:
    """Resolve ``relative`` inside ``folder``; refuse absolute paths and escapes (``..``, links)."""
    if Path(relative).is_absolute():
        raise ModelError(f"{folder}: {what} path {relative!r} must be relative to the model folder")
    try:
        root = folder.resolve()
        target = (root / relative).resolve()
    except (ValueError, OSError) as exc:
        raise ModelError(f"{folder}: {what} path {relative!r} is not a valid path ({exc})") from None
    if root != target and root not in target.parents:
        raise ModelError(f"{folder}: {what} path {relative!r} escapes the model folder")
    return target


def _code(d: dict[str, Any] | None) -> Code | None:
    return None if d is None else Code(d["scheme"], d["code"], d["meaning"])


def _terminology(d: dict[str, Any] | None) -> Terminology | None:
    if d is None:
        return None
    return Terminology(_code(d["category"]), _code(d["type"]), _code(d.get("modifier")),  # type: ignore[arg-type]
                       _code(d.get("anatomic_region")))


def channels_named(inputs: Sequence[InputChannel], text: str) -> list[str]:
    """The input channels (of a segmentation or a classifier manifest) ``text`` names, read as :func:`channel_term`
    reads names (any case, separators ignored): the channel of that name, else every channel with that alias. At
    most one in a manifest read from JSON (its check refuses a term that means two channels); formats adapted from
    elsewhere (bundles, nnU-Net) are not checked, so callers refuse more than one."""
    term = channel_term(text)
    exact = [c.name for c in inputs if channel_term(c.name) == term]
    return exact or [c.name for c in inputs if term in map(channel_term, c.aliases)]


def channel_term(text: str) -> str:
    """A channel name or alias as every name match reads it (volume order, training CSV headers, this manifest
    check): lower case, separators and other non-alphanumerics removed (``T1-CE`` -> ``t1ce``)."""
    return re.sub(r"[^a-z0-9]+", "", text.lower())


def _check_consistency(m: Manifest, where: str) -> None:
    """Cross-field rules the JSON Schema cannot express."""
    for kind, names in (("input", m.input_names), ("label", [x.name for x in m.labels]),
                        ("region", [r.name for r in m.regions])):
        if len(set(names)) != len(names):
            raise ModelError(f"{where}: duplicate {kind} names {names}")
    terms: dict[str, str] = {}
    for channel in m.inputs:  # a name or alias meaning two channels would pick one of them without a word
        for term in {channel_term(t) for t in (channel.name, *channel.aliases)}:
            if terms.setdefault(term, channel.name) != channel.name:
                raise ModelError(f"{where}: inputs {terms[term]!r} and {channel.name!r} are both called {term!r}")
    values = {x.value for x in m.labels}
    if len(values) != len(m.labels):
        raise ModelError(f"{where}: duplicate label values {[x.value for x in m.labels]}")
    for region in m.regions:
        unknown = set(region.labels) - values
        if unknown:
            raise ModelError(f"{where}: region {region.name!r} uses unknown label values {sorted(unknown)}")
    for floor in m.postprocessing.label_volume_floors:
        unknown = {floor.value, floor.replace_with} - values - {0}
        if unknown:
            raise ModelError(f"{where}: label_volume_floors use unknown label values {sorted(unknown)}")
    vessels = m.postprocessing.vessel_filter
    if vessels is not None and set(vessels.enhancing_labels) - values:
        raise ModelError(f"{where}: vessel_filter enhancing_labels use unknown label values "
                         f"{sorted(set(vessels.enhancing_labels) - values)}")
    for ch in m.postprocessing.channels:
        if ch.value and ch.value not in values:
            raise ModelError(f"{where}: output channel {ch.name!r} paints unknown label value {ch.value}")
    out = m.network_kwargs.get("out_channels")
    if out is not None and out != len(m.postprocessing.channels):
        raise ModelError(f"{where}: network out_channels={out} but {len(m.postprocessing.channels)} output channels")
    n_in = m.network_kwargs.get("in_channels")
    if n_in is not None and n_in != len(m.inputs):
        raise ModelError(f"{where}: network in_channels={n_in} but {len(m.inputs)} inputs")
    for inputs, _ in m.input_warnings:
        if inputs - set(m.input_names):
            raise ModelError(f"{where}: input_warnings name unknown inputs {sorted(inputs - set(m.input_names))}")
    _check_lesion_filter(m, where)
    _check_case_calibration(m, where)
    _check_core_refinement(m, where)


def _core_refinement(data: dict[str, Any] | None) -> CoreRefinement | None:
    """``postprocessing.core_refinement`` (schema-validated already) as a :class:`CoreRefinement`."""
    if data is None:
        return None
    return CoreRefinement(data["core_label"], data["shell_label"], tuple(data.get("fixed_labels", ())),
                          tuple(data["required_inputs"]), float(data.get("max_fixed_share", 1.0)),
                          data.get("components", 4), float(data.get("network_weight", 0.5)),
                          float(data.get("smoothing_mm", 1.0)), data.get("max_fit_voxels", 200000),
                          data.get("seed", 0), float(data.get("max_volume_change", 2.0)))


def _check_core_refinement(m: Manifest, where: str) -> None:
    """The refinement's labels are distinct labels the model paints, and its inputs are the model's."""
    spec = m.postprocessing.core_refinement
    if spec is None:
        return
    values = [spec.core_label, spec.shell_label, *spec.fixed_labels]
    painted = {c.value for c in m.postprocessing.channels if c.value != 0}
    unknown = sorted(set(values) - painted)
    if unknown:
        raise ModelError(f"{where}: core_refinement uses label values {unknown} that no output channel paints")
    if len(set(values)) != len(values):
        raise ModelError(f"{where}: core_refinement core_label, shell_label and fixed_labels must differ: {values}")
    inputs = sorted(set(spec.required_inputs) - set(m.input_names))
    if inputs:
        raise ModelError(f"{where}: core_refinement required_inputs {inputs} are not inputs of the model "
                         f"({m.input_names})")


def _case_calibrations(data: dict[str, Any] | list[dict[str, Any]] | None,
                       input_names: list[str]) -> tuple[dict[str, Any], ...]:
    """``case_calibration`` (one block or a list, schema-validated already) as a tuple of blocks, each
    with its ``inputs`` (a block that names none was fitted with every input)."""
    blocks = [] if data is None else data if isinstance(data, list) else [data]
    return tuple({**block, "inputs": list(block.get("inputs", input_names))} for block in blocks)


def _check_case_calibration(m: Manifest, where: str) -> None:
    """Each case calibration names known inputs, and no two were fitted with the same set."""
    seen: list[set[str]] = []
    for block in m.case_calibration:
        inputs = set(block["inputs"])
        unknown = sorted(inputs - set(m.input_names))
        if unknown:
            raise ModelError(f"{where}: case_calibration inputs {unknown} are not inputs of the model "
                             f"({m.input_names})")
        if inputs in seen:
            raise ModelError(f"{where}: two case_calibration blocks for the same inputs {sorted(inputs)}")
        seen.append(inputs)


def _vessel_filter(data: dict[str, Any] | None) -> VesselFilter | None:
    """``postprocessing.vessel_filter`` (schema-validated already) as a :class:`VesselFilter`."""
    if data is None:
        return None
    return VesselFilter(**{**data, "enhancing_labels": tuple(data["enhancing_labels"])})


def _parse_lesion_filter(data: dict[str, Any] | None) -> LesionFilter | None:
    """``postprocessing.lesion_filter`` (schema-validated already) as a :class:`LesionFilter`."""
    if data is None:
        return None
    return LesionFilter(tuple(data["features"]), tuple(data["mean"]), tuple(data["scale"]),
                            tuple(data["coefficients"]), float(data["intercept"]), float(data["min_probability"]),
                            data.get("description", ""))


def _lesion_filter_block(data: dict[str, Any], where: str) -> dict[str, Any] | None:
    """``postprocessing.lesion_filter``; schema_version 1 called it ``lesion_classifier`` (migrated here)."""
    post = data["postprocessing"]
    old, new = post.get("lesion_classifier"), post.get("lesion_filter")
    if old is not None and (new is not None or data["schema_version"] >= 2):
        raise ModelError(f"{where}: postprocessing.lesion_classifier is called lesion_filter since schema_version 2 "
                         f"(the lesion grade classifier is a separate model)")
    return new if new is not None else old


def _check_lesion_filter(m: Manifest, where: str) -> None:
    """The second-stage classifier's features exist for this model and its arrays line up."""
    classifier = m.postprocessing.lesion_filter
    if classifier is None:
        return
    known = feature_names([(c.name, c.value) for c in m.postprocessing.channels if c.value != 0])
    unknown = [f for f in classifier.features if f not in known]
    if unknown:
        raise ModelError(f"{where}: lesion_filter features {unknown} unknown; known: {list(known)}")
    lengths = {len(classifier.features), len(classifier.mean), len(classifier.scale), len(classifier.coefficients)}
    if len(lengths) != 1:
        raise ModelError(f"{where}: lesion_filter features, mean, scale and coefficients differ in length")


def parse_manifest(data: dict[str, Any], folder: Path, where: str = "manifest") -> Manifest:
    """Validate a manifest dictionary and build the typed :class:`Manifest`.

    Raises:
        ModelError: naming ``where`` and the first schema or consistency violation.
    """
    _validate(data, "manifest", where)
    pre = data["preprocessing"]
    norm = pre.get("normalization", {"method": "none"})
    crop = pre.get("crop_foreground", {})
    inf = data["inference"]
    post = data["postprocessing"]
    if norm["method"] == "range" and not norm["a_min"] < norm["a_max"]:
        raise ModelError(f"{where}: preprocessing.normalization a_min {norm['a_min']} must be below a_max "
                         f"{norm['a_max']}")
    manifest = Manifest(
        id=data["id"], version=data["version"], task=data["task"],
        inputs=tuple(InputChannel(c["name"], c["modality"], c.get("required", True), tuple(c.get("aliases", ())),
                                  c.get("description", "")) for c in data["inputs"]),
        labels=tuple(LabelDef(x["name"], x["value"], tuple(x["color"]), _terminology(x.get("terminology")),
                              x.get("description", "")) for x in data["labels"]),
        regions=tuple(RegionDef(r["name"], tuple(r["labels"]), tuple(r.get("color", (1.0, 1.0, 0.0))),
                                _terminology(r.get("terminology")), r.get("description", ""))
                      for r in data.get("regions", [])),
        preprocessing=Preprocessing(
            orientation=pre.get("orientation"),
            spacing_mm=tuple(pre["spacing_mm"]) if "spacing_mm" in pre else None,
            normalization=norm["method"], nonzero=norm.get("nonzero", True),
            channel_wise=norm.get("channel_wise", True), a_min=norm.get("a_min"), a_max=norm.get("a_max"),
            crop_foreground=crop.get("enabled", False), crop_margin_vox=crop.get("margin_vox", 0),
            residue_fraction=pre.get("residue_fraction")),
        network_class=data["network"]["class"], network_kwargs=dict(data["network"]["kwargs"]),
        inference=InferenceSettings(tuple(inf["roi_size"]), inf.get("overlap", 0.25),
                                    inf.get("blend_mode", "gaussian"), inf.get("sw_batch_size", 1),
                                    inf.get("precision", "auto"), inf.get("channels_last", False),
                                    inf.get("fit_roi", 0), inf.get("test_time_augmentation", False)),
        postprocessing=Postprocessing(post["activation"],
                                      tuple(OutputChannel(c["name"], c["value"]) for c in post["channels"]),
                                      post.get("threshold", 0.5), post.get("probability_dtype", "float32"),
                                      post.get("min_lesion_ml", 0.0), post.get("probability_file", "float32"),
                                      post.get("min_lesion_probability", 0.0),
                                      _parse_lesion_filter(_lesion_filter_block(data, where)),
                                      tuple(LabelVolumeFloor(f["value"], f["min_ml"], f["replace_with"])
                                            for f in post.get("label_volume_floors", [])),
                                      _core_refinement(post.get("core_refinement")),
                                      _vessel_filter(post.get("vessel_filter"))),
        weights_file=contained_path(folder, data["weights"]["file"], "weights"),
        weights_sha256=data["weights"]["sha256"],
        name=data.get("name", data["id"]), aliases=tuple(data.get("aliases", ())),
        description=data.get("description", ""),
        trained_on=data.get("trained_on", ""), intended_use=data.get("intended_use", ""),
        training=data.get("training", {}), folder=folder, raw=data,
        case_calibration=_case_calibrations(data.get("case_calibration"), [c["name"] for c in data["inputs"]]),
        clinical=ClinicalPreprocessing(**data["clinical_preprocessing"]) if "clinical_preprocessing" in data else None,
        input_warnings=tuple((frozenset(w["inputs"]), w["message"]) for w in data.get("input_warnings", [])),
    )
    _check_consistency(manifest, where)
    return manifest


def load_manifest(path: str | Path) -> Manifest | ClassifierManifest:
    """Read and validate ``manifest.json`` (or a folder holding one); ``task`` picks the schema."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: manifest not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: manifest must be a JSON object")
    if data.get("task") == "classification":
        return parse_classifier_manifest(data, path.parent, where=str(path))
    return parse_manifest(data, path.parent, where=str(path))
