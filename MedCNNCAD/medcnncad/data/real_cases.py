"""The real patients of a realdata folder (``../shared/realdata``; its README describes them): inputs, references
and how each reference's label values map onto BraTS values. Never copied into the repository.

Used by the real-patient evaluation (:mod:`medcnncad.evaluation.real`) and by the training data's tumor
transplant (:mod:`medcnncad.data.transplant`); it lives in ``data`` so that both layers can read it.

Each case gets its input sequences under the engine's channel names ("T1", "T1c", "T2",
"FLAIR"), its reference label file (or ``None``), how the reference's label values map onto
the BraTS values {0, 1 NCR, 2 ED, 4 ET}, and whether it is BraTS-preprocessed
(skull-stripped, 1 mm, co-registered) or clinical, and z-scored or raw.

Arrays are in (K, J, I) = (z, y, x) order, as SimpleITK gives them.

Example::

    >>> cases = discover_real_cases("/work/shared/realdata")   # doctest: +SKIP
    >>> case = cases[0]                                          # doctest: +SKIP
    >>> ref = load_reference(case)                               # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk

from medcnncad.data.dataset_json import Dataset, is_dataset_folder, read_dataset
from medcnncad.errors import InputError
from medcnncad.io.images import is_dicom_file, read_picked_volumes, read_volume
from medcnncad.metrics.label_conventions import LABEL_CONVENTIONS, relabel
from medcnncad.models.manifest import sha256_file

__all__ = ["CHANNELS", "BRATS_VALUES", "RealCase", "describe_case", "discover_real_cases", "map_labels",
           "load_reference", "read_dicom_seg_on_grid", "reference_sha256", "is_dicom_seg", "dicom_seg_segments",
           "read_dicom_seg_labels_on_grid"]

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
"""SOP Class UID of a DICOM Segmentation."""

CHANNELS: tuple[str, ...] = ("T1", "T1c", "T2", "FLAIR")
"""Channel names the engine's BraTS models use."""

BRATS_VALUES: frozenset[int] = frozenset({0, 1, 2, 4})
"""BraTS label values: 0 background, 1 NCR (necrosis / non-enhancing core), 2 ED, 4 ET."""

# Label maps per source (reference value -> BraTS value). Values absent from a map are an error.
BRATS2013_MAP: Mapping[int, int] = MappingProxyType({0: 0, 1: 1, 2: 2, 3: 1, 4: 4})
"""BRATS 2013 ``OTMultiClass``: 1 necrosis, 2 oedema, 3 non-enhancing tumor (core), 4 enhancing."""
BRATS2021_MAP: Mapping[int, int] = LABEL_CONVENTIONS["brats"]
"""BraTS 2021 ``_seg``: already BraTS values."""
BRATS2017_MAP: Mapping[int, int] = MappingProxyType({0: 0, 1: 1, 2: 2, 3: 4})
"""This BraTS 2017 ``seg`` file (per the realdata README): 1 NCR/NET, 2 ED, 3 enhancing."""
BRATS2023_MAP: Mapping[int, int] = LABEL_CONVENTIONS["brats2023"]
"""BraTS 2023 ``-seg`` (glioma, metastases, meningioma, sub-Saharan Africa): 1 NETC (necrotic / non-enhancing
core), 2 SNFH (surrounding FLAIR hyperintensity, i.e. oedema), 3 ET. A 4 (the 2024 resection cavity) is refused."""
TCGA_FUSION_MAP: Mapping[int, int] = MappingProxyType({0: 0, 1: 1, 2: 2, 4: 4})
"""BraTS Toolkit fusion (BraTS convention): 1 NCR/NET (core), 2 ED, 4 ET (absent in TCGA-DU-7294)."""
WHOLE_TUMOR_MAP: Mapping[int, int] = MappingProxyType({0: 0, 1: 2})
"""A binary whole-tumor mask. Mapped to 2 (ED) only so that WT = {1, 2, 4} holds it; it says nothing
about the sub-regions: score WT only (``RealCase.regions``)."""


@dataclass(frozen=True)
class RealCase:
    """One real case.

    Attributes:
        case_id: the folder name.
        source: "BRATS2013", "BraTS2017" ... "BraTS2021", "BraTS2023-GLI" (-MET, -MEN, -SSA),
            "TCGA-BraTSToolkit", "ReMIND", or, for a folder of another name, the file names' convention:
            "BraTS2021-named" (``<case>_t1ce.nii.gz``) or "BraTS2023-named" (``<case>-t1c.nii.gz``); for a case of a
            dataset folder, "Decathlon:<folder>" or "nnU-Net:<folder>" (:mod:`medcnncad.data.dataset_json`).
        inputs: channel name ("T1", "T1c", "T2", "FLAIR") -> image file or DICOM series folder (read them with
            :meth:`input_sources` / :meth:`input_images`, which pick the volumes of a 4D file).
        reference: label file (NIfTI or DICOM SEG), or ``None`` for an unlabelled case.
        label_map: reference value -> BraTS value (empty when there is no reference).
        regions: the BraTS regions the reference supports ("WT", "TC", "ET"); a binary
            whole-tumor reference supports "WT" only.
        preprocessed: True for BraTS-style data (skull-stripped, 1 mm, co-registered);
            False for clinical scans (skull on, own grids).
        zscored: True when the inputs are already z-scored inside the brain.
        reference_is_expert: False when the reference is an algorithm's output (the TCGA fusion).
        reference_grid: channel whose grid the reference is mapped onto (DICOM SEG), else ``None``
            (the reference file has its own grid, equal to the inputs').
        notes: free text (licence, caveats).
        grade: "HGG" / "LGG" where the source says so (the realdata README; a BraTS 2017-2019 release's
            ``HGG/`` and ``LGG/`` folders), else None.
        tumor_type: "glioma", "metastasis" or "meningioma" where the source says so, else None.
        volumes: channel -> 0-based volume of its 4D input file (the Decathlon's stacked sequences); empty when
            every input is a 3D file or a DICOM folder.
    """

    case_id: str
    source: str
    inputs: Mapping[str, Path]
    reference: Path | None
    label_map: Mapping[int, int] = field(default_factory=dict)
    regions: tuple[str, ...] = ("WT", "TC", "ET")
    preprocessed: bool = True
    zscored: bool = False
    reference_is_expert: bool = True
    reference_grid: str | None = None
    notes: str = ""
    grade: str | None = None
    tumor_type: str | None = None
    volumes: Mapping[str, int] = field(default_factory=dict)

    @property
    def labelled(self) -> bool:
        """Whether the case has a reference."""
        return self.reference is not None

    def inputs_folder(self) -> Path:
        """The folder of the case's first input (where to find it)."""
        return Path(next(iter(self.inputs.values()))).parent

    def input_sources(self, channels: Sequence[str] | None = None) -> dict[str, str | sitk.Image]:
        """What the engine reads for ``channels`` (default all, in the case's order): a file or DICOM folder's path,
        or, for a volume of a 4D file, that volume read here (the file read once)."""
        names = list(self.inputs) if channels is None else list(channels)
        read = read_picked_volumes({n: self.inputs[n] for n in names if n in self.volumes}, self.volumes)
        return {name: read[name] if name in read else str(self.inputs[name]) for name in names}

    def input_images(self, channels: Sequence[str] | None = None) -> dict[str, sitk.Image]:
        """The input volumes of ``channels`` (default all), read."""
        return {name: source if isinstance(source, sitk.Image) else read_volume(source)
                for name, source in self.input_sources(channels).items()}

    def map_labels(self, values: np.ndarray) -> np.ndarray:
        """Map a reference label array to BraTS values (see :func:`map_labels`)."""
        return map_labels(values, self.label_map)


def map_labels(values: np.ndarray, label_map: Mapping[int, int]) -> np.ndarray:
    """Map integer label values to BraTS values with a lookup table.

    Args:
        values: integer label array (any shape, e.g. (K, J, I)).
        label_map: source value -> BraTS value.

    Returns:
        uint8 array of the same shape with values in {0, 1, 2, 4}.

    Raises:
        InputError: when ``values`` holds a value the map does not know, or the map
            targets a non-BraTS value.
    """
    if not set(label_map.values()) <= BRATS_VALUES:
        raise InputError(f"label map targets non-BraTS values {sorted(set(label_map.values()) - BRATS_VALUES)}")
    present = {int(v) for v in np.unique(values)}
    unknown = sorted(present - set(label_map))
    if unknown:
        raise InputError(f"label values {unknown} are not in the label map {dict(label_map)}")
    return relabel(values, label_map)  # every present value is listed: nothing can merge


def _first(folder: Path, pattern: str) -> Path | None:
    found = sorted(folder.glob(pattern))
    return found[0] if found else None


def _inputs(folder: Path, patterns: Mapping[str, str]) -> dict[str, Path]:
    out = {}
    for channel, pattern in patterns.items():
        path = _first(folder, pattern)
        if path is not None:
            out[channel] = path
    return out


BRATS2021_FILES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "T1": ("*_t1.nii*",), "T1c": ("*_t1ce.nii*", "*_t1c.nii*", "*_t1gd.nii*"), "T2": ("*_t2.nii*",),
    "FLAIR": ("*_flair.nii*",)})
"""The BraTS 2017-2021 file names (``<case>_t1ce.nii.gz``; any case), with the post-contrast T1 spellings of
collections that follow BraTS's labels (UCSF-PDGM ``_T1c``, UPENN-GBM ``_T1GD``)."""
BRATS2021_SEGS: tuple[str, ...] = ("*_seg.nii*", "*_segm.nii*", "*_tumor_segmentation.nii*")
"""Their label files (BraTS ``_seg``, UPENN-GBM ``_segm``, UCSF-PDGM ``_tumor_segmentation``; labels 1, 2, 4)."""
BRATS2023_FILES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "T1": ("*-t1n.nii*",), "T1c": ("*-t1c.nii*",), "T2": ("*-t2w.nii*",), "FLAIR": ("*-t2f.nii*",)})
"""The BraTS 2023 file names (``<case>-t1c.nii.gz``, ``<case>-seg.nii.gz``; labels 1, 2, 3)."""
GRADE_FOLDERS: tuple[str, ...] = ("HGG", "LGG")
"""Sub-folders of a data root that say their cases' grade (the BraTS 2017-2019 releases)."""
BRATS2023_TASKS: tuple[str, ...] = ("GLI", "MET", "MEN", "SSA")
"""BraTS 2023 tasks whose labels follow :data:`BRATS2023_MAP` (the paediatric task's labels differ: not read)."""


PSEUDO_LABEL_MARKER = "pseudo_label.json"
"""A file in a case folder saying that its reference is a model's segmentation, not an expert's
(``research/pseudo_labels.py`` writes it)."""


def _files(folder: Path) -> list[Path]:
    """The entries of ``folder`` sorted by name, without hidden ones (``._*`` companions); none if unreadable."""
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError:
        return []


def _first_named(folder: Path, patterns: Sequence[str]) -> Path | None:
    """The first file of ``folder`` (sorted by name) whose lower-cased name matches a ``patterns`` entry (lower
    case, tried in order), or None. An algorithm's label file (a name with "automated") never matches."""
    names = [(path, path.name.lower()) for path in _files(folder)]
    for pattern in patterns:
        for path, name in names:
            if "automated" not in name and fnmatch.fnmatchcase(name, pattern):
                return path
    return None


def _named_inputs(folder: Path, patterns: Mapping[str, Sequence[str]]) -> dict[str, Path]:
    found = {channel: _first_named(folder, alternatives) for channel, alternatives in patterns.items()}
    return {channel: path for channel, path in found.items() if path is not None}


def _named_case(folder: Path, source: str, files: Mapping[str, Sequence[str]], segs: Sequence[str],
                label_map: Mapping[int, int], tumor_type: str | None, notes: str = "") -> RealCase:
    """A folder of challenge-named files: the inputs ``files`` name, the first label file ``segs`` names."""
    seg = _first_named(folder, segs)
    return RealCase(folder.name, source, _named_inputs(folder, files), seg, label_map if seg else {},
                    notes=notes if seg else "unlabelled", tumor_type=tumor_type)


def _brats2021_named(folder: Path, source: str, tumor_type: str | None = "glioma", notes: str = "") -> RealCase:
    """A folder of BraTS 2017-2021 named files (labels 1 NCR, 2 ED, 4 ET)."""
    return _named_case(folder, source, BRATS2021_FILES, BRATS2021_SEGS, BRATS2021_MAP, tumor_type, notes)


def _brats2023_named(folder: Path, source: str, tumor_type: str | None, notes: str = "") -> RealCase:
    """A folder of BraTS 2023 named files (labels 1 NETC, 2 SNFH, 3 ET)."""
    return _named_case(folder, source, BRATS2023_FILES, ("*-seg.nii*",), BRATS2023_MAP, tumor_type, notes)


BRATS2023_TUMOR_TYPES: Mapping[str, str] = MappingProxyType({"GLI": "glioma", "SSA": "glioma", "MET": "metastasis",
                                                             "MEN": "meningioma"})


def _brats2023_task(name: str) -> str | None:
    """The task of a BraTS 2023 name, upper case (``GLI`` for ``BraTS-GLI-00001-000`` or ``brats-gli-...-t1c.nii.gz``),
    whatever the task; None for other names."""
    parts = name.split("-")
    named = len(parts) >= 4 and parts[0].lower() == "brats" and parts[1].isalpha() and parts[2].isdigit()
    return parts[1].upper() if named else None


def _unread_task(folder: Path) -> str | None:
    """A BraTS 2023 task whose labels are not read (e.g. ``PED``), named by the folder or by any of its files."""
    for name in (folder.name, *(path.name for path in _files(folder))):
        task = _brats2023_task(name)
        if task is not None and task not in BRATS2023_TASKS:
            return task
    return None


def _describe(folder: Path) -> RealCase | None:
    """A RealCase for one folder, or None when the folder is not a known case layout."""
    if _unread_task(folder) is not None:
        return None
    case = _describe_named_collection(folder) or _describe_by_file_names(folder)
    if case is not None and case.labelled and (folder / PSEUDO_LABEL_MARKER).is_file():
        case = replace(case, reference_is_expert=False,
                       notes=f"reference = a model's segmentation (pseudo-label, {PSEUDO_LABEL_MARKER}), not an expert")
    return case


def _describe_by_file_names(folder: Path) -> RealCase | None:
    """A folder of another name: BraTS 2023 or BraTS 2017-2021 file names say the label convention."""
    case = _brats2023_named(folder, "BraTS2023-named", None,
                            "label convention from the file names (BraTS 2023: 1 NETC, 2 SNFH, 3 ET)")
    if case.inputs:
        return case
    case = _brats2021_named(folder, "BraTS2021-named", None,
                            "label convention from the file names (BraTS 2017-2021: 1 NCR, 2 ED, 4 ET)")
    return case if case.inputs else None


def _describe_named_collection(folder: Path) -> RealCase | None:
    """A RealCase for a folder whose name says its collection (realdata README), else None."""
    name = folder.name
    if name.startswith("brats_2013_"):
        return RealCase(name, "BRATS2013", _inputs(folder, {"T1c": "T1c_subtrMeanDivStd.nii*",
                                                             "FLAIR": "Flair_subtrMeanDivStd.nii*"}),
                        _first(folder, "OTMultiClass.nii*"), BRATS2013_MAP, zscored=True,
                        notes="FLAIR and T1c only, z-scored inside the brain; CC BY-NC-SA 3.0", grade="HGG",
                        tumor_type="glioma")
    for prefix, source in (("BraTS2021_", "BraTS2021"), ("BraTS20_", "BraTS2020"), ("BraTS19_", "BraTS2019"),
                           ("Brats18_", "BraTS2018")):
        if name.startswith(prefix):
            return _brats2021_named(folder, source)
    official = _brats2021_named(folder, "BraTS2017") if name.startswith("Brats17_") else None
    if official is not None and official.inputs:  # the challenge's own file names and labels (1, 2, 4)
        return official
    if name.startswith("Brats17_"):
        seg = _first(folder, "seg.nii*")
        return RealCase(name, "BraTS2017", _inputs(folder, {"T1c": "t1ce*.nii*"}), seg,
                        BRATS2017_MAP if seg else {}, zscored=True, notes="T1c only, z-scored", tumor_type="glioma")
    if name.startswith("TCGA-"):
        bet = folder / "raw_bet"
        return RealCase(name, "TCGA-BraTSToolkit", _inputs(bet, {"T1": "*_t1_bet.nii*", "T1c": "*_t1c_bet.nii*",
                                                                  "T2": "*_t2_bet.nii*", "FLAIR": "*_fla_bet.nii*"}),
                        _first(folder / "fusion", "mav.nii*"), TCGA_FUSION_MAP, reference_is_expert=False,
                        notes="reference = majority vote of five BraTS 2020 algorithms, not an expert", grade="LGG",
                        tumor_type="glioma")
    if name.startswith("ReMIND-"):
        inputs = {}
        for channel, pattern in {"T1c": "*T1post*", "T2": "*T2*"}.items():
            dirs = sorted(p for p in folder.glob(pattern) if p.is_dir())
            if dirs:
                inputs[channel] = dirs[0]
        seg = _first(folder, "*.dcm")
        return RealCase(name, "ReMIND", inputs, seg, WHOLE_TUMOR_MAP if seg else {}, regions=("WT",),
                        preprocessed=False, reference_grid="T1c",
                        notes="clinical DICOM, skull on; DICOM SEG with one binary 'Glioma' segment = WT only",
                        tumor_type="glioma")
    task = _brats2023_task(name) or ""
    if task in BRATS2023_TUMOR_TYPES and name.startswith("BraTS-"):
        return _brats2023_named(folder, f"BraTS2023-{task}", BRATS2023_TUMOR_TYPES[task])
    return None


def describe_case(folder: str | Path) -> RealCase:
    """The :class:`RealCase` of one case folder (its layout tells the source and label convention).

    Raises:
        InputError: when ``folder`` is not a folder or not a known case layout (see the realdata README).
    """
    path = Path(folder)
    if is_dataset_folder(path):
        raise InputError(f"{path}: a dataset folder (dataset.json, imagesTr/), not one case; evaluate-real "
                         "--data reads its cases")
    task = _unread_task(path) if path.is_dir() else None
    if task is not None:
        raise InputError(f"{path}: BraTS task {task}, whose label convention is not read here "
                         f"(read: {', '.join(BRATS2023_TASKS)}; e.g. the paediatric task's labels mean other things)")
    case = _describe(path) if path.is_dir() else None
    if case is None or not case.inputs:
        raise InputError(f"{path}: not a real case folder of a known layout (BRATS 2013, BraTS 2017/2021/2023, "
                         "TCGA BraTS Toolkit, ReMIND; see the realdata README)")
    return case


def discover_real_cases(root: str | Path) -> list[RealCase]:
    """Every case folder of a realdata root that has a known layout, sorted by case id.

    Args:
        root: the realdata folder (e.g. ``/work/shared/realdata``).

    Returns:
        The cases; unlabelled ones have ``reference=None``. Folders of unknown layout are skipped.

    Raises:
        InputError: when ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder (the real-patient data, e.g. ../shared/realdata)")
    if is_dataset_folder(root):
        return _dataset_cases(read_dataset(root))
    cases = []
    for folder in (p for p in _files(root) if p.is_dir()):
        case = _describe(folder)
        if is_dataset_folder(folder):
            cases += _dataset_cases(read_dataset(folder))
        elif case is None and folder.name.upper() in GRADE_FOLDERS:  # BraTS 2017-2019 releases: HGG/, LGG/
            cases += [replace(c, grade=folder.name.upper()) for c in
                      (_describe(p) for p in _files(folder) if p.is_dir()) if c is not None]
        elif case is not None:
            cases.append(case)
    found = sorted((c for c in cases if c.inputs), key=lambda c: c.case_id)
    for first, second in zip(found, found[1:]):
        if first.case_id == second.case_id:
            raise InputError(f"{root}: case id {first.case_id} twice ({first.source}: {first.inputs_folder()}; "
                             f"{second.source}: {second.inputs_folder()}); a case's rows must name one patient")
    return found


def _dataset_cases(dataset: Dataset) -> list[RealCase]:
    """The cases of a Decathlon or nnU-Net dataset folder (:mod:`medcnncad.data.dataset_json`)."""
    notes = f"label convention from {dataset.folder.name}/dataset.json: {dict(dataset.label_map)}"
    if dataset.unread_channels:
        notes += f"; channels not read (none of T1, T1c, T2, FLAIR): {', '.join(dataset.unread_channels)}"
    return [RealCase(c.case_id, dataset.source, c.inputs, c.label, dataset.label_map if c.label else {},
                     dataset.regions, notes=notes if c.label else "unlabelled", volumes=c.volumes)
            for c in dataset.cases if c.inputs]


def read_dicom_seg_on_grid(seg_path: str | Path, grid: sitk.Image, segment: int = 1) -> sitk.Image:
    """Rasterise one segment of a DICOM SEG onto an image grid (nearest neighbour).

    The SEG's frames are stacked into a volume by their ImagePositionPatient along the slice
    normal (its own grid, from the frames' orientation and pixel spacing), then resampled
    onto ``grid`` with nearest-neighbour interpolation, so a SEG drawn on another series of
    the same frame of reference lands where it belongs.

    Args:
        seg_path: the DICOM SEG file.
        grid: the target image (e.g. the T1c series).
        segment: SegmentNumber to read.

    Returns:
        uint8 mask (0/1) on ``grid``.

    Raises:
        InputError: when the segment has no frames or the frames are not parallel/equally spaced.
    """
    ds = pydicom.dcmread(str(seg_path))
    shared = ds.SharedFunctionalGroupsSequence[0]
    per_frame = ds.PerFrameFunctionalGroupsSequence
    pixels = ds.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]

    def item(frame: Any, name: str) -> Any:
        seq = getattr(frame, name, None) or getattr(shared, name, None)
        if not seq:
            raise InputError(f"{seg_path}: DICOM SEG without {name}")
        return seq[0]

    orientation = np.array(item(per_frame[0], "PlaneOrientationSequence").ImageOrientationPatient, dtype=np.float64)
    spacing_rc = [float(v) for v in item(per_frame[0], "PixelMeasuresSequence").PixelSpacing]
    thickness = float(getattr(item(per_frame[0], "PixelMeasuresSequence"), "SpacingBetweenSlices", 0) or
                      getattr(item(per_frame[0], "PixelMeasuresSequence"), "SliceThickness", 1.0))
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    frames = [i for i, f in enumerate(per_frame)
              if int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber) == segment]
    if not frames:
        raise InputError(f"{seg_path}: segment {segment} has no frames")
    positions = np.array([item(per_frame[i], "PlanePositionSequence").ImagePositionPatient for i in frames],
                         dtype=np.float64)
    depth = positions @ normal
    order = np.argsort(depth)
    depth_sorted = depth[order]
    if len(frames) > 1:
        steps = np.diff(depth_sorted)
        step = float(np.min(steps[steps > 1e-6])) if np.any(steps > 1e-6) else thickness
    else:
        step = thickness
    n_slices = int(round((depth_sorted[-1] - depth_sorted[0]) / step)) + 1
    volume = np.zeros((n_slices, pixels.shape[1], pixels.shape[2]), np.uint8)
    for i in order:
        k = int(round((depth[i] - depth_sorted[0]) / step))
        volume[k] = np.maximum(volume[k], (pixels[frames[i]] > 0).astype(np.uint8))
    image = sitk.GetImageFromArray(volume)
    image.SetOrigin(tuple(positions[order[0]]))
    # DICOM PixelSpacing is (row spacing, column spacing); ITK spacing is (x = along a row, y, z)
    image.SetSpacing((spacing_rc[1], spacing_rc[0], step))
    image.SetDirection(tuple(np.column_stack([row, col, normal]).ravel()))
    return sitk.Resample(image, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def is_dicom_seg(path: str | Path) -> bool:
    """Whether ``path`` is a DICOM Segmentation file (SOP class Segmentation Storage), not a folder or image."""
    file = Path(path)
    if not file.is_file() or not is_dicom_file(file):
        return False
    header = pydicom.dcmread(str(file), stop_before_pixels=True, specific_tags=["SOPClassUID"])
    return str(getattr(header, "SOPClassUID", "")) == SEGMENTATION_STORAGE


def dicom_seg_segments(seg_path: str | Path) -> dict[int, str]:
    """A DICOM SEG's segments: SegmentNumber -> SegmentLabel, in increasing order (read without its pixels)."""
    header = pydicom.dcmread(str(seg_path), stop_before_pixels=True)
    items = getattr(header, "SegmentSequence", [])
    return dict(sorted((int(item.SegmentNumber), str(getattr(item, "SegmentLabel", ""))) for item in items))


def _segments_with_frames(seg_path: str | Path) -> list[int]:
    """The SegmentNumbers that at least one frame of a DICOM SEG holds (a SEG omits a segment's empty frames)."""
    header = pydicom.dcmread(str(seg_path), stop_before_pixels=True)
    return sorted({int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
                   for frame in header.PerFrameFunctionalGroupsSequence})


def read_dicom_seg_labels_on_grid(seg_path: str | Path, grid: sitk.Image) -> sitk.Image:
    """Every segment of a DICOM SEG rasterised onto ``grid`` (:func:`read_dicom_seg_on_grid`) as one label map whose
    value is the SegmentNumber (a one-segment SEG gives 0/1).

    Raises:
        InputError: naming the file and two segments when segments overlap (one value per voxel is needed).
    """
    values = np.zeros(grid.GetSize()[::-1], np.uint8)
    for number in _segments_with_frames(seg_path):
        mask = sitk.GetArrayFromImage(read_dicom_seg_on_grid(seg_path, grid, number)) > 0  # a view would outlive it
        overlap = np.unique(values[mask & (values > 0)])
        if overlap.size:
            raise InputError(f"{seg_path}: segments {int(overlap[0])} and {number} overlap; a reference needs one "
                             "label per voxel")
        values[mask] = number
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(grid)
    return image


def reference_sha256(case: RealCase) -> str | None:
    """SHA-256 of a real case's reference file (None without one): it names the patient whatever its folder is
    called, so a renamed copy of a training patient is still recognised as one (``evaluate-real``)."""
    return None if case.reference is None or not Path(case.reference).is_file() else sha256_file(case.reference)


def load_reference(case: RealCase, grid: sitk.Image | None = None) -> sitk.Image:
    """The case's reference as a uint8 BraTS-valued label image.

    Args:
        case: a labelled case.
        grid: the image to map a DICOM SEG onto; default the case's ``reference_grid`` input
            (read from disk). Ignored for NIfTI references (they carry their own grid).

    Raises:
        InputError: for an unlabelled case, or label values the case's convention does not know (naming the
            file).
    """
    if case.reference is None:
        raise InputError(f"{case.case_id}: no reference")
    if case.reference.suffix == ".dcm":
        if grid is None:
            if case.reference_grid is None:
                raise InputError(f"{case.case_id}: a DICOM SEG reference needs a grid")
            grid = case.input_images([case.reference_grid])[case.reference_grid]
        raw = read_dicom_seg_on_grid(case.reference, grid)
    else:
        raw = sitk.ReadImage(str(case.reference))
    try:
        values = case.map_labels(sitk.GetArrayViewFromImage(raw))
    except InputError as exc:
        raise InputError(f"{case.reference}: {exc} (read as {case.source}; evaluate-real --reference-labels names "
                         "another convention, e.g. brats2024, whose 4 is the resection cavity)") from None
    mapped = sitk.GetImageFromArray(values)
    mapped.CopyInformation(raw)
    return mapped
