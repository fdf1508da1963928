"""Real tumors transplanted into healthy anatomy: training cases whose tumors are patients' own.

A *donor* is a real labelled case (a folder of a realdata-style collection, read at training
time and never copied into the repository): its label map mapped to BraTS values with the
case's own convention (:mod:`medcnncad.data.real_cases`) and each of its sequences expressed
relative to the patient's normal-appearing white matter (NAWM). A transplant pastes a donor's
tumor, label and signals together, into a healthy template (MNI152 / Colin27) at a white-matter
site, after a random rotation, scaling and smooth elastic deformation, with per-sequence
intensity augmentation and mass effect; the label follows the same transform (nearest
neighbour). Sequences the donor lacks (the BRATS 2013 cases have FLAIR and T1c only) are rendered
from the label with the phantom's tissue contrasts.

Signal relative to NAWM: raw-intensity donors ``v / median(v in NAWM)``; z-scored donors
(zero-signal offset lost) ``(v - p0.5) / (median(v in NAWM) - p0.5)`` with ``p0.5`` the 0.5th
percentile inside the brain (the darkest tissue, close to no signal). NAWM: the brightest of three
Gaussian-mixture classes (of > 10 % of the voxels) of T1 (or T1c) inside the brain, at least 5 mm from
the tumor.

Leave-patient-out is the caller's job: :func:`transplant_phantom` takes an explicit list of donor
folders, so a training run lists its training patients and never its validation ones.

Arrays are (K, J, I) = (z, y, x); the donors must be on 1 mm grids (BraTS-preprocessed).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from medcnncad.data.mixture import mixture_posteriors, stable_mixture
from medcnncad.data.phantom import PhantomCase, PhantomConfig, TumorSource, make_realistic_phantom
from medcnncad.data.phantom import preset as get_preset
from medcnncad.data.real_cases import describe_case, load_reference
from medcnncad.data.tumor_shapes import (
    EDEMA,
    ENHANCING,
    NECROSIS,
    NON_ENHANCING,
    TissueMaps,
    TumorDraw,
    inside_brain,
    mass_effect,
)
from medcnncad.errors import InputError
from medcnncad.io.images import read_volume

__all__ = ["TransplantConfig", "TumorDonor", "load_donor", "transplant_source", "transplant_phantom"]


@dataclass(frozen=True)
class TransplantConfig:
    """Ranges a transplant is drawn from (uniform within each range).

    Attributes:
        rotation_deg: each Euler angle within +- this (degrees).
        scale: isotropic scale factor of the tumor.
        anisotropy: extra per-axis scale within +- this fraction.
        elastic_mm: peak amplitude of the smooth elastic displacement (mm).
        elastic_scale_mm: smoothness (Gaussian sigma, mm) of the elastic field.
        gamma: per-sequence exponent on the donor's signal relative to white matter.
        intensity_scale: per-sequence multiplicative jitter (standard deviation) of the donor's signal.
        mass_effect_mm: outward push of the surrounding anatomy at the tumor's edge (mm).
        blend_mm: width of the soft border between the donor's signal and the template (mm).
    """

    rotation_deg: float = 30.0
    scale: tuple[float, float] = (0.8, 1.2)
    anisotropy: float = 0.1
    elastic_mm: float = 3.0
    elastic_scale_mm: float = 10.0
    gamma: tuple[float, float] = (0.85, 1.15)
    intensity_scale: float = 0.1
    mass_effect_mm: tuple[float, float] = (0.0, 5.0)
    blend_mm: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.scale[0] <= self.scale[1]:
            raise InputError(f"transplant scale {self.scale}: need 0 < low <= high")
        if not 0 <= self.anisotropy < 0.5 or self.elastic_mm < 0 or self.blend_mm <= 0:
            raise InputError("transplant anisotropy must be in [0, 0.5), elastic_mm >= 0 and blend_mm > 0")


@dataclass(frozen=True)
class TumorDonor:
    """A real tumor cut out of its patient: BraTS label and signals relative to NAWM, 1 mm (K, J, I).

    Attributes:
        case_id: the donor folder's name.
        label: uint8 BraTS labels (0/1/2/4) in the tumor's box plus a margin.
        signal: sequence -> float32 signal relative to normal-appearing white matter, same box.
        source: the donor's collection ("BraTS2021", "BRATS2013", ...).
        grade: "HGG" / "LGG" where the source says so, else "HGG" when the tumor enhances and "LGG"
            when it does not (a heuristic: some lower-grade gliomas enhance).
    """

    case_id: str
    label: np.ndarray
    signal: dict[str, np.ndarray]
    source: str
    grade: str = "HGG"

    @property
    def tumor_ml(self) -> float:
        """Whole-tumor volume (mL, 1 mm voxels)."""
        return float((self.label > 0).sum()) / 1000.0


def _nawm(reference: np.ndarray, brain: np.ndarray, tumor: np.ndarray) -> np.ndarray:
    """Normal-appearing white matter: the voxels assigned to the brightest of 3 Gaussian-mixture classes
    (each holding > 10 % of the voxels) of a T1-weighted image, inside the brain and >= 5 mm from the tumor."""
    away = brain & (ndimage.distance_transform_edt(~tumor) >= 5)
    values = reference[away]
    mixture = stable_mixture(values[::20])  # the same classes on every machine
    means = np.where(mixture.weights > 0.1, mixture.means, -np.inf)  # not a small class of vessels
    nawm = np.zeros_like(away)
    nawm[away] = mixture_posteriors(values, mixture).argmax(axis=1) == int(np.argmax(means))
    if nawm.sum() < 100:
        raise InputError("could not find normal-appearing white matter in the donor (fewer than 100 voxels)")
    return nawm


def _relative_to_nawm(values: np.ndarray, brain: np.ndarray, nawm: np.ndarray, zscored: bool) -> np.ndarray:
    """Signal relative to NAWM (see the module docstring), float32, 0 outside the brain."""
    offset = float(np.percentile(values[brain], 0.5)) if zscored else 0.0
    level = float(np.median(values[nawm])) - offset
    if level <= 0:
        raise InputError(f"donor white-matter signal {level:.3g} is not above the darkest tissue")
    return np.where(brain, (values - offset) / level, 0).astype(np.float32)


@functools.lru_cache(maxsize=16)
def load_donor(folder: str | Path, margin_mm: int = 6) -> TumorDonor:
    """Read one real labelled case as a tumor donor (cached per folder).

    Args:
        folder: a case folder of a known layout (:func:`medcnncad.data.real_cases.describe_case`).
        margin_mm: margin kept around the tumor's bounding box.

    Returns:
        The donor's tumor label and signals relative to NAWM.

    Raises:
        InputError: for an unlabelled case, a whole-tumor-only reference (no sub-regions), a case that
            is not BraTS-preprocessed (1 mm, skull-stripped, co-registered), or an empty label.
    """
    case = describe_case(folder)
    if not case.labelled or set(case.regions) != {"WT", "TC", "ET"}:
        raise InputError(f"{case.case_id}: a donor needs a reference with tumor sub-regions (this one: "
                         f"{'none' if not case.labelled else '/'.join(case.regions)})")
    if not case.preprocessed:
        raise InputError(f"{case.case_id}: a donor must be BraTS-preprocessed (1 mm, skull-stripped, co-registered)")
    images = case.input_images()
    first = next(iter(images.values()))
    if not np.allclose(first.GetSpacing(), 1.0, atol=0.05):
        raise InputError(f"{case.case_id}: donor spacing {first.GetSpacing()} mm, expected 1 mm")
    label = sitk.GetArrayFromImage(load_reference(case))
    arrays = {name: sitk.GetArrayFromImage(img).astype(np.float32) for name, img in images.items()}
    mask_file = Path(folder) / "brainmask.nii.gz"
    brain = (sitk.GetArrayFromImage(read_volume(mask_file)) > 0) if mask_file.is_file() else \
        np.any([a != 0 for a in arrays.values()], axis=0)
    tumor = label > 0
    if not tumor.any():
        raise InputError(f"{case.case_id}: the reference is empty")
    reference = arrays.get("T1", arrays.get("T1c", next(iter(arrays.values()))))
    nawm = _nawm(reference, brain & ~tumor, tumor)
    box = ndimage.find_objects(tumor.astype(np.uint8))[0]
    box = tuple(slice(max(0, s.start - margin_mm), min(n, s.stop + margin_mm)) for s, n in zip(box, tumor.shape))
    signal = {name: _relative_to_nawm(a, brain, nawm, case.zscored)[box] for name, a in arrays.items()}
    grade = case.grade or ("HGG" if (label == 4).any() else "LGG")
    return TumorDonor(case.case_id, label[box].astype(np.uint8), signal, case.source, grade)


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    angles = np.deg2rad(rng.uniform(-max_deg, max_deg, size=3))
    matrix = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        a, b = [i for i in range(3) if i != axis]
        turn = np.eye(3)
        turn[a, a], turn[a, b], turn[b, a], turn[b, b] = c, -s, s, c
        matrix = turn @ matrix
    return matrix


def _elastic(rng: np.random.Generator, shape: tuple[int, ...], amplitude: float, scale: float) -> np.ndarray:
    """Smooth random displacement (3, K, J, I) whose largest component magnitude is ``amplitude`` (voxels)."""
    if amplitude <= 0:
        return np.zeros((3, *shape), np.float32)
    field_ = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), scale) for _ in range(3)])
    return (field_ * amplitude / max(float(np.abs(field_).max()), 1e-9)).astype(np.float32)


@dataclass(frozen=True)
class _Placement:
    """Where and how a donor lands: output box, centre, and the map from output to donor voxel coordinates."""

    box: tuple[slice, ...]
    coords: np.ndarray  # (3, *box shape) donor (k, j, i) coordinates of each output voxel
    center: np.ndarray
    scales: np.ndarray


def _placement(rng: np.random.Generator, donor: TumorDonor, tissue: TissueMaps, config: TransplantConfig) -> _Placement:
    """Draw rotation, scale, elastic field and a white-matter site; the output box holds the moved tumor."""
    rotation = _rotation(rng, config.rotation_deg)
    scales = rng.uniform(*config.scale) * (1 + rng.uniform(-config.anisotropy, config.anisotropy, 3))
    points = np.argwhere(donor.label > 0).astype(float)
    donor_center = points.mean(0)
    radius = float(np.sqrt(((points - donor_center) ** 2).sum(1)).max())
    equivalent = (3 * len(points) / (4 * np.pi)) ** (1 / 3)
    depth = 2.0 * ndimage.distance_transform_edt(tissue.wm[::2, ::2, ::2] > 0.3)
    sites = np.argwhere(depth >= min(0.4 * equivalent * scales.mean(), float(depth.max()) * 0.6)) * 2.0
    center = sites[rng.integers(len(sites))].astype(float)
    half = radius * float(scales.max()) + config.elastic_mm + config.blend_mm + 3
    lo = np.maximum(np.floor(center - half).astype(int), 0)
    hi = np.minimum(np.ceil(center + half).astype(int) + 1, tissue.wm.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    shape = tuple(int(b - a) for a, b in zip(lo, hi))
    grid = np.indices(shape, dtype=np.float64).reshape(3, -1) + lo[:, None] - center[:, None]
    # output offset x = R S (donor offset)  =>  donor offset = S^-1 R^T x
    donor_offsets = (rotation.T @ grid) / scales[:, None]
    coords = donor_offsets.reshape(3, *shape) + donor_center[:, None, None, None]
    coords += _elastic(rng, shape, config.elastic_mm, config.elastic_scale_mm)
    return _Placement(box, coords.astype(np.float32), center, scales)


def _blend_weight(wt: np.ndarray, blend_mm: float) -> np.ndarray:
    """1 inside the whole tumor, falling linearly to 0 over ``blend_mm`` outside it (float32)."""
    outside = ndimage.distance_transform_edt(~wt)
    return np.clip(1.0 - outside / blend_mm, 0, 1).astype(np.float32)


def _paste(rng: np.random.Generator, donors: Sequence[TumorDonor], config: TransplantConfig,
           tissue: TissueMaps) -> TumorDraw:
    """Transplant one randomly chosen donor into ``tissue`` (the :data:`TumorSource` of a transplant)."""
    donor = donors[int(rng.integers(len(donors)))]
    place = _placement(rng, donor, tissue, config)
    label = ndimage.map_coordinates(donor.label, place.coords, order=0, mode="constant", cval=0)
    equivalent = (3 * (label > 0).sum() / (4 * np.pi)) ** (1 / 3)
    amplitude = rng.uniform(*config.mass_effect_mm)
    moved = mass_effect(tissue, place.center, float(equivalent) * 0.6, amplitude)
    shape = tissue.wm.shape
    compartments = np.zeros(shape, np.uint8)
    core_code = NECROSIS if (donor.label == 4).any() else NON_ENHANCING
    compartments[place.box] = np.select([label == 1, label == 2, label == 4], [core_code, EDEMA, ENHANCING], 0)
    compartments[~inside_brain(moved)] = 0  # a tumor near the surface is cut where the template's brain ends
    weight = np.zeros(shape, np.float32)
    weight[place.box] = _blend_weight(label > 0, config.blend_mm)
    signals = {}
    for name, values in donor.signal.items():
        local = ndimage.map_coordinates(values, place.coords, order=1, mode="nearest")
        local = np.power(np.clip(local, 0, None), rng.uniform(*config.gamma))
        local *= 1 + config.intensity_scale * rng.standard_normal()
        full = np.ones(shape, np.float32)
        full[place.box] = local
        signals[name] = full
    info = {"kind": "transplant", "grade": donor.grade, "donor": donor.case_id, "donor_source": donor.source,
            "donor_tumor_ml": donor.tumor_ml, "scales": [float(s) for s in place.scales],
            "mass_effect_mm": float(amplitude), "center_kji": [float(v) for v in place.center],
            "volumes_ml": {n: float((compartments == c).sum()) / 1000.0 for n, c in
                           (("core", core_code), ("edema", EDEMA), ("enhancing", ENHANCING))}}
    return TumorDraw(compartments, np.ones(shape, np.float32), moved, donor_signal=signals, donor_weight=weight,
                     info=info)


def transplant_source(donors: Sequence[str | Path | TumorDonor], config: TransplantConfig | None = None) -> TumorSource:
    """A tumor source for :func:`medcnncad.data.phantom.make_realistic_phantom` that transplants real tumors.

    Args:
        donors: donor case folders (or loaded donors); each draw picks one at random.
        config: transform and intensity ranges; default :class:`TransplantConfig`.

    Raises:
        InputError: for an empty list or a folder that cannot be a donor (see :func:`load_donor`).
    """
    if not donors:
        raise InputError("tumor transplant: no donor cases given")
    loaded = [d if isinstance(d, TumorDonor) else load_donor(str(d)) for d in donors]
    cfg = config or TransplantConfig()

    def draw(rng: np.random.Generator, tissue: TissueMaps) -> TumorDraw:
        return _paste(rng, loaded, cfg, tissue)

    return draw


def transplant_phantom(seed: int, donors: Sequence[str | Path | TumorDonor], config: PhantomConfig | None = None,
                       transplant: TransplantConfig | None = None) -> PhantomCase:
    """One training case: a real donor's tumor in a healthy template, rendered like a realistic phantom.

    Deterministic for a seed and donor list. Anatomy, skull, grid and scanner follow ``config``
    (default: the ``"realistic"`` preset with no tumor-free cases).

    Args:
        seed: random seed.
        donors: donor case folders (the caller's training patients only: leave-patient-out).
        config: phantom configuration; its tumor-free share is ignored (every transplant has a tumor).
        transplant: transform and intensity ranges.

    Returns:
        A :class:`medcnncad.data.phantom.PhantomCase` whose ``info`` names the donor.
    """
    base = config or get_preset("realistic")
    return make_realistic_phantom(seed, replace(base, tumor_free_fraction=0.0), transplant_source(donors, transplant))
