"""Dataset folders described by a ``dataset.json``: the Medical Segmentation Decathlon's and nnU-Net's.

A folder holding ``dataset.json`` beside ``imagesTr/`` (and ``labelsTr/``) is read in one of two layouts:

- **Decathlon** (e.g. ``Task01_BrainTumour``): one 4D file per case, ``imagesTr/BRATS_001.nii.gz``, its volumes in
  the order of ``dataset.json``'s ``"modality"`` (``{"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}``);
- **nnU-Net** (v1 ``"modality"``, v2 ``"channel_names"``): one file per channel,
  ``imagesTr/<case>_<XXXX><file_ending>``, channel ``XXXX`` as ``dataset.json`` names it.

Label files are ``labelsTr/<case><file_ending>``. What their values mean comes from ``dataset.json``'s
``"labels"`` (Decathlon and nnU-Net v1: value -> name; v2: name -> value, or, for region-based training such as
nnU-Net's BraTS 2021 conversion, name -> list of values) and is mapped onto BraTS values {0, 1 NCR, 2 ED, 4 ET} by
the label names (:data:`LABEL_NAMES`); a name this module does not know is an error naming it, never a guess.
Channel names map onto the engine's ("T1", "T1c", "T2", "FLAIR") the same way (:data:`CHANNEL_NAMES`); a channel
of another name (e.g. CT) is not read.

Nothing here reads an image: the cases are described (paths, volume indices, label map) for
:mod:`medcnncad.data.real_cases`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from medcnncad.errors import InputError
from medcnncad.io.images import volume_count
from medcnncad.models.manifest import Manifest

__all__ = ["DATASET_FILE", "CHANNEL_NAMES", "LABEL_NAMES", "DatasetCase", "Dataset", "is_dataset_folder",
           "read_dataset", "declared_volumes", "engine_channel", "declared_contradicts", "model_engine_channels",
           "declared_labels", "reference_convention"]

DATASET_FILE = "dataset.json"

CHANNEL_NAMES: Mapping[str, str] = MappingProxyType({
    "flair": "FLAIR", "t2flair": "FLAIR", "t2f": "FLAIR",
    "t1": "T1", "t1w": "T1", "t1n": "T1", "nativet1": "T1",
    "t1gd": "T1c", "t1ce": "T1c", "t1c": "T1c", "t1wce": "T1c", "t1post": "T1c", "t1contrast": "T1c",
    "t2": "T2", "t2w": "T2"})
"""Channel names of ``dataset.json`` (lower case, without spaces, hyphens, underscores or dots) -> engine channel."""

LABEL_NAMES: Mapping[str, int] = MappingProxyType({
    "background": 0,
    "edema": 2, "oedema": 2, "peritumoral edema": 2, "ed": 2, "snfh": 2,
    "surrounding non-enhancing flair hyperintensity": 2,
    "non-enhancing tumor": 1, "non-enhancing tumor core": 1, "non-enhancing": 1, "necrosis": 1, "necrotic": 1,
    "ncr": 1, "net": 1, "ncr/net": 1, "netc": 1, "necrotic tumor core": 1, "necrotic core": 1,
    "necrotic and non-enhancing tumor core": 1,
    "enhancing tumor": 4, "enhancing": 4, "et": 4})
"""Label names of ``dataset.json`` (lower case, "tumour" spelt "tumor", underscores as spaces) -> BraTS value."""

WHOLE_TUMOR_NAMES: frozenset[str] = frozenset({"tumor", "whole tumor", "lesion", "glioma"})
"""Names of a binary label that is the whole tumor: mapped to 2 (ED) so that WT holds it; WT is scored alone."""

REGION_NAMES: Mapping[str, str] = MappingProxyType({"whole tumor": "WT", "tumor core": "TC", "enhancing tumor": "ET"})
"""Region-based labels (name -> list of values): the BraTS region each name is."""


@dataclass(frozen=True)
class DatasetCase:
    """One case of a dataset folder.

    Attributes:
        case_id: the case's file name stem (``BRATS_001``).
        inputs: engine channel -> image file.
        volumes: engine channel -> 0-based volume of its 4D file (Decathlon layout); empty for one file per channel.
        label: the label file, or None.
    """

    case_id: str
    inputs: Mapping[str, Path]
    volumes: Mapping[str, int] = field(default_factory=dict)
    label: Path | None = None


@dataclass(frozen=True)
class Dataset:
    """A dataset folder: its layout, how its label values map onto BraTS values, its cases."""

    folder: Path
    layout: str  # "Decathlon" or "nnU-Net"
    label_map: Mapping[int, int]
    regions: tuple[str, ...]
    cases: tuple[DatasetCase, ...]
    unread_channels: tuple[str, ...] = ()  # dataset.json's channels that are none of the engine's sequences

    @property
    def source(self) -> str:
        """``"Decathlon:Task01_BrainTumour"``, ``"nnU-Net:Dataset137_BraTS2021"``."""
        return f"{self.layout}:{self.folder.name}"


def is_dataset_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a ``dataset.json`` and an ``imagesTr`` folder."""
    return (folder / DATASET_FILE).is_file() and (folder / "imagesTr").is_dir()


def declared_volumes(image_file: str | Path) -> dict[int, str] | None:
    """For a file of a dataset folder's ``imagesTr/`` or ``imagesTs/``: what its ``dataset.json`` says each of its
    volumes is, 0-based volume index -> engine channel (:func:`engine_channel`), or ``dataset.json``'s own name for a
    channel the engine does not read (``ADC``). A 4D file (the Decathlon's) holds every declared channel in order; a
    file of one volume is the channel its ``_XXXX`` suffix names (nnU-Net's), or the only one declared. None for a
    file elsewhere, a description that cannot be read, or a one-volume file that names no declared channel.

    Raises:
        InputError: naming the file when a 4D file holds another number of volumes than its dataset.json declares
            (its volumes would be taken for the wrong sequences).
    """
    path = Path(os.path.abspath(image_file))  # a symlink is judged by where it is, not by its target
    found = _description_beside(path, ("imagesTr", "imagesTs"))
    if found is None:
        return None
    named = found[1].get("channel_names") or found[1].get("modality")
    if not isinstance(named, dict):
        return None
    declared = {int(k): engine_channel(str(v)) or str(v) for k, v in named.items() if str(k).isdigit()}
    if not declared:
        return None
    try:
        count = volume_count(path)
    except InputError:
        return None
    if count > 1:
        if sorted(declared) != list(range(count)):
            raise InputError(f"{path}: {count} volumes, but its dataset.json declares {len(declared)} channels "
                             f"({', '.join(declared[i] for i in sorted(declared))}): which volume is which is unknown")
        return declared
    ending = str(found[1].get("file_ending") or ".nii.gz")
    suffix = re.fullmatch(r".+_(\d{4})", path.name[:-len(ending)]) if path.name.endswith(ending) else None
    if suffix and int(suffix.group(1)) in declared:
        return {0: declared[int(suffix.group(1))]}
    return {0: next(iter(declared.values()))} if len(declared) == 1 else None


def _description_beside(path: Path, folders: tuple[str, ...]) -> tuple[Path, dict[str, Any]] | None:
    """The dataset.json (its path and its object) of a file in one of a dataset folder's ``folders``; None for a
    file elsewhere or a description that cannot be read as a JSON object."""
    description_file = path.parent.parent / DATASET_FILE
    if path.parent.name not in folders or not description_file.is_file():
        return None
    try:
        description = json.loads(description_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return (description_file, description) if isinstance(description, dict) else None


ENGINE_CHANNELS: frozenset[str] = frozenset(CHANNEL_NAMES.values())
OTHER_SEQUENCES: frozenset[str] = frozenset({"adc", "dwi", "ct", "pd", "pdw", "swi", "pet", "dsc", "dce", "perfusion",
                                              "t2star"})
"""Channel names (normalised as :data:`CHANNEL_NAMES`' keys) of images that are none of the engine's sequences."""


def declared_contradicts(declared: str, channel: str | None) -> bool:
    """Whether a volume that a dataset.json calls ``declared`` (an engine channel, or its own name) cannot be given as
    a model channel that is the engine channel ``channel``. A generic name on either side (``MRI``, ``zscore``, a
    bundle's ``image``: ``channel`` None) contradicts nothing; an ADC is no FLAIR."""
    if channel not in ENGINE_CHANNELS:
        return False
    if declared in ENGINE_CHANNELS:
        return declared != channel
    return _normalized_channel(declared) in OTHER_SEQUENCES


def model_engine_channels(manifest: Manifest) -> dict[str, str | None]:
    """The model's channel -> the engine channel its name or an alias means (``T1Gd``, ``t1ce``: T1c), or None for
    a generic name (``image``)."""
    return {channel.name: next((e for e in map(engine_channel, (channel.name, *channel.aliases)) if e), None)
            for channel in manifest.inputs}


def engine_channel(name: str) -> str | None:
    """The engine's channel ("T1", "T1c", "T2", "FLAIR") a dataset.json or manifest channel name means (``t1gd``,
    ``T2w``, ``Flair``; :data:`CHANNEL_NAMES`), or None."""
    return CHANNEL_NAMES.get(_normalized_channel(name))


def declared_labels(label_file: str | Path) -> dict[int, int] | None:
    """For a label file of a dataset folder's ``labelsTr/`` or ``labelsTs/``: its ``dataset.json``'s label value ->
    BraTS value (every region it describes, in full or not: a value is mapped by its name either way); None for a
    file elsewhere, a description that cannot be read, or labels of other names (another task's)."""
    found = _description_beside(Path(os.path.abspath(label_file)), ("labelsTr", "labelsTs"))
    if found is None:
        return None
    try:
        return _label_map(found[0], found[1].get("labels"))[0]
    except InputError:
        return None


def _onto_model(declared: Mapping[int, int], model: Manifest | None) -> dict[int, int] | None:
    """``declared`` (dataset value -> BraTS value) onto the model's values through the model's label names (BraTS
    values themselves when ``model`` is None); None when a model label's name is not a BraTS sub-region's or the
    model has no label for a declared sub-region."""
    if model is None:
        return dict(declared)
    by_brats: dict[int, int] = {}
    for label in model.labels:
        brats = LABEL_NAMES.get(_label_name(label.name))
        if not brats or brats in by_brats:
            return None
        by_brats[brats] = label.value
    if any(brats and brats not in by_brats for brats in declared.values()):
        return None
    return {value: by_brats[brats] if brats else 0 for value, brats in declared.items()}


def reference_convention(label_file: str | Path, given: Mapping[int, int] | None,
                         model: Manifest | None = None) -> dict[int, int] | None:
    """The label map to read a reference ``label_file`` with: ``given`` (the user's), else the one its dataset.json
    declares (:func:`declared_labels`) carried onto ``model``'s values by its label names (None: the BraTS values
    1 NCR, 2 ED, 4 ET), else None (the file's values as they are). A model of other label names (another task's)
    gets no automatic map.

    Raises:
        InputError: naming the file and its dataset.json when ``given`` maps a value otherwise than it declares (a
            Decathlon file read as BraTS 2021's would swap oedema and necrosis without an error).
    """
    declared = declared_labels(label_file)
    onto = _onto_model(declared, model) if declared is not None else None
    if onto is None:
        return dict(given) if given else None
    if given is None:
        return onto
    wrong = sorted(value for value, target in onto.items() if given.get(value, value) != target)
    if wrong:
        described = ", ".join(f"{value}={target}" for value, target in sorted(onto.items()))
        raise InputError(f"{label_file}: its dataset.json maps label {wrong[0]} to {onto[wrong[0]]}, not "
                         f"{given.get(wrong[0], wrong[0])} (its convention: {described}); leave the reference's "
                         "convention out to use it")
    return dict(given)


def read_dataset(folder: str | Path) -> Dataset:
    """The dataset of a folder holding ``dataset.json`` and ``imagesTr/`` (see the module docstring).

    Raises:
        InputError: naming ``dataset.json`` when it cannot be read, names no channel this engine reads, or names a
            label this module cannot map.
    """
    folder = Path(folder)
    path = folder / DATASET_FILE
    try:
        description = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot be read as JSON ({exc})") from None
    if not isinstance(description, dict):
        raise InputError(f"{path}: not a JSON object")
    channels, unread = _channels(path, description)
    label_map, regions = _label_map(path, description.get("labels"))
    ending = str(description.get("file_ending") or ".nii.gz")
    images = sorted(p for p in (folder / "imagesTr").iterdir() if not p.name.startswith(".") and p.is_file()
                    and p.name.endswith(ending))
    per_channel = _one_file_per_channel(path, description, images, ending)
    cases = (_per_channel_cases(folder, images, channels, ending) if per_channel
             else _stacked_cases(folder, images, channels, ending))
    return Dataset(folder, "nnU-Net" if per_channel else "Decathlon", label_map, regions, tuple(cases), unread)


def _one_file_per_channel(path: Path, description: Mapping[str, Any], images: list[Path], ending: str) -> bool:
    """nnU-Net's layout (a file per channel) rather than the Decathlon's (a file per case, its volumes the channels).

    Decided by the files, never by a name alone: a first image holding several volumes is the Decathlon's; with
    several channels declared, each in its own file, every image must be named ``<case>_<XXXX>``; with one, the
    images are nnU-Net's when every one ends in that channel's ``_XXXX`` (``BRATS_0001`` beside ``BRATS_0002`` are
    case ids)."""
    if not images:
        return False
    if volume_count(images[0]) > 1:
        return False
    declared = description.get("channel_names") or description.get("modality") or {}
    suffixes = [f"_{int(k):04d}" for k in declared if str(k).isdigit()] if len(declared) == 1 else [r"_\d{4}"]
    named = [any(re.fullmatch(".+" + suffix, p.name[:-len(ending)]) for suffix in suffixes) for p in images]
    if len(declared) > 1 and not all(named):
        odd = next(p.name for p, ok in zip(images, named) if not ok)
        raise InputError(f"{path}: {len(declared)} channels, each image holding one volume, but {odd} is not named "
                         "<case>_<XXXX> (nnU-Net's one file per channel)")
    return all(named)


def _normalized_channel(name: str) -> str:
    return re.sub(r"[\s_.\-]", "", name.lower())


def _channels(path: Path, description: Mapping[str, Any]) -> tuple[dict[int, str], tuple[str, ...]]:
    """dataset.json's channel index -> engine channel for the channels the engine reads, and the names of those it
    does not read."""
    named = description.get("channel_names") or description.get("modality")
    if not isinstance(named, dict) or not named:
        raise InputError(f"{path}: no \"channel_names\" or \"modality\" object")
    channels = {}
    for index, name in named.items():
        channel = engine_channel(str(name))
        if channel is not None and str(index).isdigit():
            channels[int(index)] = channel
    if not channels:
        raise InputError(f"{path}: channels {sorted(map(str, named.values()))} are none of the MR sequences read "
                         f"here (T1, T1c, T2, FLAIR)")
    if len(set(channels.values())) < len(channels):
        raise InputError(f"{path}: two channels name the same sequence ({dict(sorted(named.items()))})")
    unread = tuple(str(name) for index, name in named.items() if not str(index).isdigit()
                   or int(index) not in channels)
    return channels, unread


def _label_name(name: str) -> str:
    return " ".join(name.lower().replace("tumour", "tumor").replace("_", " ").split())


def _label_map(path: Path, labels: Any) -> tuple[dict[int, int], tuple[str, ...]]:
    """dataset.json's labels as (label value -> BraTS value, the regions they support)."""
    if not isinstance(labels, dict) or not labels:
        raise InputError(f"{path}: no \"labels\" object")
    if all(str(k).lstrip("-").isdigit() for k in labels):  # Decathlon / nnU-Net v1: value -> name
        by_value = {int(k): _label_name(str(v)) for k, v in labels.items()}
    elif any(isinstance(v, list) for k, v in labels.items() if _label_name(str(k)) != "background"):
        return _region_label_map(path, labels)
    else:  # nnU-Net v2: name -> value
        by_value = {}
        for name, value in labels.items():
            value = value[0] if isinstance(value, list) and len(value) == 1 else value
            if not isinstance(value, int):
                raise InputError(f"{path}: label {name!r} has value {value!r}, not an integer")
            by_value[value] = _label_name(str(name))
    named = {v: n for v, n in by_value.items() if v != 0}
    if len(named) == 1 and next(iter(named.values())) in WHOLE_TUMOR_NAMES:
        return {0: 0, next(iter(named)): 2}, ("WT",)
    unknown = sorted(n for n in by_value.values() if n not in LABEL_NAMES)
    if unknown:
        raise InputError(f"{path}: label names {unknown} are not read here (read: background, the BraTS sub-regions "
                         "as edema/SNFH, necrosis/non-enhancing tumor/NETC and enhancing tumor/ET, or one whole-tumor "
                         "label)")
    mapping = {v: LABEL_NAMES[n] for v, n in by_value.items()}
    return mapping, _regions_of(path, set(mapping.values()))


def _regions_of(path: Path, targets: set[int]) -> tuple[str, ...]:
    """The BraTS regions a reference holding the sub-regions ``targets`` describes in full: ET needs 4, TC 1 and 4,
    WT all three (a reference without oedema says nothing of the whole tumor's extent)."""
    regions = tuple(region for region, needs in (("WT", {1, 2, 4}), ("TC", {1, 4}), ("ET", {4}))
                    if needs <= targets)
    if not regions:
        raise InputError(f"{path}: the labels describe no BraTS region in full (WT needs oedema, necrosis/core and "
                         "enhancing tumor; TC the latter two; ET the enhancing tumor)")
    return regions


def _region_label_map(path: Path, labels: Mapping[str, Any]) -> tuple[dict[int, int], tuple[str, ...]]:
    """Region-based labels (nnU-Net v2: ``"whole tumor": [1, 2, 3], "tumor core": [2, 3], ...``): a value in the
    enhancing tumor is ET (4), one in the core otherwise NCR (1), one in the whole tumor only ED (2)."""
    regions: dict[str, set[int]] = {}
    for name, value in labels.items():
        key = _label_name(str(name))
        values = value if isinstance(value, list) else [value]
        if key == "background":
            continue
        if key not in REGION_NAMES or not all(isinstance(v, int) and v > 0 for v in values):
            raise InputError(f"{path}: region label {name!r}: {value!r} is not read here (read: "
                             f"{', '.join(REGION_NAMES)}, each a list of label values)")
        regions[REGION_NAMES[key]] = set(values)
    if "WT" not in regions:
        raise InputError(f"{path}: region-based labels without a whole tumor ({sorted(labels)})")
    mapping = {0: 0}
    for value in sorted(set().union(*regions.values())):
        mapping[value] = 4 if value in regions.get("ET", ()) else 1 if value in regions.get("TC", ()) else 2
    return mapping, tuple(r for r in ("WT", "TC", "ET") if r in regions)


def _label_file(folder: Path, case_id: str, ending: str) -> Path | None:
    label = folder / "labelsTr" / f"{case_id}{ending}"
    return label if label.is_file() else None


def _stacked_cases(folder: Path, images: list[Path], channels: Mapping[int, str],
                   ending: str) -> list[DatasetCase]:
    """Decathlon: one 4D file per case, the channels its volumes."""
    cases = []
    for image in images:
        case_id = image.name[:-len(ending)]
        cases.append(DatasetCase(case_id, {c: image for c in channels.values()},
                                 {c: i for i, c in sorted(channels.items())}, _label_file(folder, case_id, ending)))
    return cases


def _per_channel_cases(folder: Path, images: list[Path], channels: Mapping[int, str],
                       ending: str) -> list[DatasetCase]:
    """nnU-Net: ``<case>_<XXXX><ending>`` per channel."""
    by_case: dict[str, dict[int, Path]] = {}
    for image in images:
        match = re.fullmatch(r"(.+)_(\d{4})", image.name[:-len(ending)])
        if match and int(match.group(2)) in channels:
            by_case.setdefault(match.group(1), {})[int(match.group(2))] = image
    return [DatasetCase(case_id, {channels[i]: path for i, path in sorted(files.items())}, {},
                        _label_file(folder, case_id, ending)) for case_id, files in sorted(by_case.items())]
