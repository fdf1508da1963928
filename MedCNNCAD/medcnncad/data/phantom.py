"""Deterministic BraTS-like phantoms built from real anatomy, with exact ground truth.

Anatomy comes from the MNI152 2009 symmetric 1 mm template shipped inside nilearn
(T1 intensities plus grey- and white-matter probability maps), so no download is
needed. A tumor is grown inside the white matter: a necrotic core, an enhancing rim
and surrounding oedema, each with the characteristic contrast of the four BraTS
sequences (T1, T1c, T2, FLAIR). Each sequence then gets its own bias field, noise,
intensity scale and simulated slice thickness, and the whole case is resampled onto
a random anisotropic voxel grid.

Beyond the classic set (:data:`PRESETS` ``"classic"``, the default), the generator can
make what clinical scans look like: tumor grade as a hidden variable (high grade:
necrosis, ring enhancement, larger oedema, heterogeneous; low grade: a homogeneous
non-enhancing mass, little or no enhancement), tumor-free cases, lesions down to ~1 mL,
a second real anatomy (Colin27, with its skull, from Debian's ``mricron-data``), tilted
heads, and thick slices (2-7 mm) along any axis. Every feature is off in the classic
configuration, which therefore draws exactly the random numbers it always did.

The ``"realistic"`` preset (``PhantomConfig.realistic`` set) replaces the ellipsoid tumor and the
simple noise model by patient-like tumors (:mod:`medcnncad.data.tumor_shapes`) and a scanner model
(:mod:`medcnncad.data.scanner`): :func:`make_realistic_phantom`, which also renders real tumors
transplanted into the templates (:mod:`medcnncad.data.transplant`).

Labels follow the BraTS convention: 0 background, 1 necrotic / non-enhancing core,
2 peritumoral oedema, 4 enhancing tumor. Regions: WT = {1, 2, 4}, TC = {1, 4},
ET = {4}.

Arrays are in SimpleITK / Slicer order (K, J, I) = (z, y, x); physical units are mm.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from medcnncad.data.mixture import mixture_posteriors, stable_mixture
from medcnncad.data.scanner import ScannerConfig, scan
from medcnncad.data.tumor_shapes import (
    NECROSIS,
    NON_ENHANCING,
    RealisticTumorConfig,
    TissueMaps,
    TumorDraw,
    draw_tumor,
    labels_from_compartments,
)
from medcnncad.data.vessels import VESSEL_SIGNAL, VesselConfig, draw_vessels
from medcnncad.errors import InputError
from medcnncad.io.images import staged_outputs, write_image
from medcnncad.io.segfile import write_seg_nrrd

__all__ = ["cropped_phantom", "crop_around_tumor",
           "SEQUENCES", "ANATOMIES", "PRESETS", "PhantomConfig", "PhantomCase", "make_phantom",
           "make_realistic_phantom", "TumorSource", "write_phantom", "write_sample_case", "preset"]

SEQUENCES: tuple[str, ...] = ("T1", "T1c", "T2", "FLAIR")

COLIN27_DIR = Path("/usr/share/mricron/templates")  # Debian package mricron-data
ANATOMIES: dict[str, str] = {
    "mni152": "MNI152 2009 symmetric 1 mm template and GM/WM maps (nilearn), skull-stripped",
    "colin27": f"Colin27 1 mm (ch2.nii.gz with skull, ch2bet.nii.gz) from Debian mricron-data, {COLIN27_DIR}",
}

# Relative signal of each tissue per sequence (white matter T1 ~ 1). Rows: CSF, GM, WM,
# necrosis, enhancing tumor, oedema, then (graded phantoms only) non-enhancing tumor.
# Chosen to mimic clinical contrast: enhancing tumor is bright only on T1c, oedema is
# bright on T2/FLAIR, necrosis is dark on T1/T1c and bright on T2, CSF is suppressed on
# FLAIR, a low-grade non-enhancing mass is bright on T2/FLAIR and dark on T1/T1c.
_TISSUE_SIGNAL = {
    "T1": (0.25, 0.65, 1.00, 0.30, 0.60, 0.55, 0.48),
    "T1c": (0.25, 0.65, 1.00, 0.25, 1.55, 0.55, 0.50),
    "T2": (1.00, 0.55, 0.35, 0.95, 0.60, 0.80, 0.92),
    "FLAIR": (0.12, 0.60, 0.45, 0.45, 0.75, 1.05, 0.92),
}
# Signal of the head outside the brain (scalp fat, marrow, muscle; bone stays dark), as a
# factor on the anatomy's own T1 intensity.
_HEAD_SIGNAL = {"T1": 1.0, "T1c": 1.1, "T2": 0.75, "FLAIR": 0.65}
# Colin27's eye globes (RAS mm; radius mm), measured on ch2.nii.gz: the dark vitreous spheres in front of the
# orbits (largest component below T1 60 within 16 mm of (+-32, 58, -38): centres (+-34.7, 62.0, -38), the
# volume of a ball of radius 11.5 mm each). The head map renders every sequence from the template's T1, so the
# globes are dark everywhere; in patients the vitreous is water: dark on T1/T1c, bright on T2, dark on FLAIR.
_GLOBES_RAS_MM = ((-34.7, 62.0, -38.0), (34.7, 62.0, -38.0))
_GLOBE_RADIUS_MM = 11.5
_VITREOUS_SIGNAL = {name: signal[0] for name, signal in _TISSUE_SIGNAL.items()}  # CSF's: water
_EYE_STREAM = 0xE7E5  # the globes' contrast draws from its own stream: the rest of a seed's case is unchanged
# Each orbit's contents (globe, fat, muscles, optic nerve) as a capsule from the globe's centre back to the orbital
# apex (RAS mm; radius mm), read off ch2.nii.gz's orbital fat; for the leaky brain masks below
_ORBIT_APEX_RAS_MM = ((-20.0, 28.0, -38.0), (20.0, 28.0, -38.0))
_ORBIT_RADIUS_MM = 13.0
_LEAK_STREAM = 0x1EAC  # the leaky mask draws from its own stream


@dataclass(frozen=True)
class PhantomConfig:
    """Ranges the generator samples from (mm unless stated)."""

    core_radius_mm: tuple[float, float] = (9.0, 20.0)
    rim_thickness_mm: tuple[float, float] = (3.0, 6.0)
    edema_margin_mm: tuple[float, float] = (5.0, 16.0)
    shape_irregularity: float = 0.25
    bias_strength: tuple[float, float] = (0.05, 0.30)
    noise_fraction: tuple[float, float] = (0.02, 0.06)
    slice_thickness_mm: tuple[float, float] = (1.0, 3.0)
    output_spacing_mm: tuple[tuple[float, float], tuple[float, float]] = ((0.9, 1.2), (1.0, 2.0))
    contrast_jitter: float = 0.08
    hgg_fraction: float | None = None
    tumor_free_fraction: float = 0.0
    anatomies: tuple[str, ...] = ("mni152",)
    skull_fraction: float = 0.0
    tilt_deg: float = 0.0
    random_slice_axis: bool = False
    slice_blur_from_spacing: bool = False
    crop_margin_mm: float | None = None  # only the tumor's box plus this margin (fast patches for classifiers)
    grade_core_radius_mm: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {"HGG": (6.0, 22.0), "LGG": (5.0, 20.0)})
    # realistic tumors (medcnncad.data.tumor_shapes) and scanner (medcnncad.data.scanner) instead of the
    # classic ellipsoid: see make_realistic_phantom; None keeps every other preset as it always was
    realistic: RealisticTumorConfig | None = None
    scanner: ScannerConfig = field(default_factory=ScannerConfig)
    # enhancing normal structures (sinuses, cortical veins, choroid plexus; medcnncad.data.vessels), realistic
    # phantoms only; None: none, as in the templates (and as every preset drew before they existed)
    vessels: VesselConfig | None = None
    # skull-on heads: render Colin27's eye globes as water (T2 bright) instead of the head's T1-derived signal;
    # False keeps every preset as it always was
    eyes: bool = False
    # share of skull-on heads cut by a leaky brain mask, as the clinical chain's brain extraction can leave one
    # (the brain plus head tissue within 2-12 mm of it and, in half of them, the orbits' contents; zero beyond)
    leaky_mask: float = 0.0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.anatomies) - set(ANATOMIES))
        if unknown or not self.anatomies:
            raise InputError(f"phantom anatomies {list(self.anatomies)}: choose from {sorted(ANATOMIES)}")
        if self.skull_fraction > 0 and "colin27" not in self.anatomies:
            raise InputError("skull_fraction > 0 needs the 'colin27' anatomy (the MNI152 template has no skull)")


@dataclass
class PhantomCase:
    """One generated case: co-registered sequences and the label map on one grid.

    ``info`` records what was drawn: tumor sizes (mm), ``grade`` ("HGG", "LGG" or
    "none" for a tumor-free case; "MET" for realistic metastases), ``anatomy``, ``skull`` and
    the output grid.
    """

    seed: int
    images: dict[str, sitk.Image]
    label: sitk.Image
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def grade(self) -> str:
        """"HGG", "LGG" or "none" (classic phantoms are all of the high-grade pattern)."""
        return str(self.info.get("grade", "HGG"))


@dataclass(frozen=True)
class _Anatomy:
    """One template on its 1 mm grid; arrays KJI float32 (tissue maps are probabilities)."""

    reference: sitk.Image
    t1: np.ndarray           # T1 intensity of the brain, normalised to max 1
    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    head: np.ndarray | None  # T1 intensity outside the brain (scalp, skull, marrow) or None


def _kji(img) -> np.ndarray:
    """A nibabel image's data (IJK) as a contiguous KJI float32 array."""
    return np.ascontiguousarray(np.asarray(img.get_fdata(), dtype=np.float32).transpose(2, 1, 0))


@functools.lru_cache(maxsize=2)
def _anatomy(name: str = "mni152") -> _Anatomy:
    """Load (once per process) the template ``name`` of :data:`ANATOMIES`."""
    if name == "colin27":
        return _colin27()
    from nilearn import datasets

    t1_img = datasets.load_mni152_template(resolution=1)
    t1 = _kji(t1_img)
    gm = _kji(datasets.load_mni152_gm_template(resolution=1))
    wm = _kji(datasets.load_mni152_wm_template(resolution=1))
    reference = _image_from_ras_affine(t1, t1_img.affine)
    t1 = t1 / max(float(t1.max()), 1e-6)
    brain = ndimage.binary_fill_holes(t1 > 0.05)
    csf = np.clip(brain.astype(np.float32) - gm - wm, 0.0, 1.0)
    return _Anatomy(reference, t1, csf, np.clip(gm, 0, 1), np.clip(wm, 0, 1), None)


def _colin27() -> _Anatomy:
    """Colin27 with its skull; tissue probabilities from a 3-class Gaussian mixture of the brain."""
    paths = [COLIN27_DIR / "ch2.nii.gz", COLIN27_DIR / "ch2bet.nii.gz"]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"Colin27 template {missing[0]} not found: install the Debian package "
                                "mricron-data (apt-get install mricron-data)")
    head_img = nib.load(str(paths[0]))
    head, brain_t1 = _kji(head_img), _kji(nib.load(str(paths[1])))
    brain = brain_t1 > 0
    values = brain_t1[brain]  # CSF < GM < WM on T1; the same maps on every machine (data.mixture)
    posterior = mixture_posteriors(values, stable_mixture(values[::10]))
    maps = [np.zeros(brain.shape, np.float32) for _ in range(3)]
    for m, column in zip(maps, posterior.T):
        m[brain] = column
        m[:] = ndimage.gaussian_filter(m, 0.6)  # partial volume at tissue borders
    scale = max(float(np.percentile(brain_t1[brain], 99.5)), 1e-6)
    outside = np.where(brain, 0.0, head / scale).astype(np.float32)
    affine = head_img.affine  # type: ignore[attr-defined]  # nibabel stubs: load() returns FileBasedImage
    reference = _image_from_ras_affine(head, affine)
    return _Anatomy(reference, np.clip(brain_t1 / scale, 0, 1), maps[0], maps[1], maps[2], outside)


def _image_from_ras_affine(array_kji: np.ndarray, affine_ras: np.ndarray) -> sitk.Image:
    """Wrap a KJI array in a SimpleITK image whose geometry matches a NIfTI RAS affine."""
    lps = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(affine_ras, dtype=float)[:3, :]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    image = sitk.GetImageFromArray(array_kji)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(v) for v in lps[:, 3]))
    image.SetDirection(tuple(float(v) for v in (lps[:, :3] / spacing).ravel()))
    return image


def _points_lps(reference: sitk.Image) -> np.ndarray:
    """Each voxel's LPS position (mm) on ``reference``'s grid, (K, J, I, 3) float32."""
    size = reference.GetSize()
    index = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in size[::-1]], indexing="ij")[::-1], -1)
    direction = np.asarray(reference.GetDirection(), dtype=np.float32).reshape(3, 3)
    return (index * np.asarray(reference.GetSpacing(), dtype=np.float32)) @ direction.T + \
        np.asarray(reference.GetOrigin(), dtype=np.float32)


def _lps(ras: tuple[float, float, float]) -> np.ndarray:
    return np.asarray([-ras[0], -ras[1], ras[2]], dtype=np.float32)


def _globes(reference: sitk.Image) -> np.ndarray:
    """Share (0-1) of each voxel of ``reference``'s grid inside Colin27's eye globes, KJI float32 (1 mm edge)."""
    points = _points_lps(reference)
    share = np.zeros(points.shape[:3], np.float32)
    for centre in _GLOBES_RAS_MM:
        distance = np.linalg.norm(points - _lps(centre), axis=-1)
        share = np.maximum(share, np.clip(_GLOBE_RADIUS_MM + 0.5 - distance, 0.0, 1.0))
    return share


def _orbits(reference: sitk.Image) -> np.ndarray:
    """KJI bool: voxels of ``reference``'s grid within :data:`_ORBIT_RADIUS_MM` of either orbit's axis (globe
    centre to apex)."""
    points = _points_lps(reference)
    inside = np.zeros(points.shape[:3], bool)
    for centre, apex in zip(_GLOBES_RAS_MM, _ORBIT_APEX_RAS_MM):
        a, b = _lps(centre), _lps(apex)
        t = np.clip(((points - a) @ (b - a)) / float((b - a) @ (b - a)), 0.0, 1.0)
        inside |= np.linalg.norm(points - (a + t[..., None] * (b - a)), axis=-1) <= _ORBIT_RADIUS_MM
    return inside


def _leaky_mask(seed: int, config: PhantomConfig, skull: bool, brain: np.ndarray, head: np.ndarray | None,
                reference: sitk.Image) -> tuple[np.ndarray, dict[str, Any]] | None:
    """A brain mask as brain extraction may leave it on a skull-on head (KJI on ``reference``'s grid, float32
    0/1) and what was drawn (for the case's ``info``), or ``None``.

    In ``config.leaky_mask`` of the skull-on cases: the brain, the head tissue within 2-12 mm of it, and in half
    of those the orbits' contents (:func:`_orbits`), which deepbet's mask from a T2 can hold (docs/models.md).
    """
    if not (skull and head is not None and config.leaky_mask > 0):
        return None
    rng = np.random.default_rng([seed, _LEAK_STREAM])
    if rng.random() >= config.leaky_mask:
        return None
    tissue = head > 0.02
    inside = brain > 0
    margin = float(rng.uniform(2.0, 12.0))
    distance = ndimage.distance_transform_edt(~inside, sampling=reference.GetSpacing()[::-1])
    keep = inside | (tissue & (distance <= margin))
    orbits = bool(rng.random() < 0.5)
    if orbits:
        keep |= tissue & _orbits(reference)
    return keep.astype(np.float32), {"margin_mm": round(margin, 1), "orbits": orbits}


def _outside_mask(seed: int, config: PhantomConfig, skull: bool, brain: np.ndarray, head: np.ndarray | None,
                  reference: sitk.Image) -> tuple[np.ndarray, dict[str, Any] | None]:
    """The mask (KJI float32 0/1) outside which a case is zero: the brain, the whole head when ``skull``, or a
    leaky brain mask (:func:`_leaky_mask`), with what the leaky mask drew (else ``None``)."""
    leaky = _leaky_mask(seed, config, skull, brain, head, reference)
    if leaky is not None:
        return leaky
    return (np.maximum(brain, (head > 0.02).astype(np.float32)) if skull and head is not None else brain), None


def _eye_signal(seed: int, config: PhantomConfig, skull: bool,
                reference: sitk.Image) -> tuple[np.ndarray, dict[str, float]] | None:
    """The globes' share map and each sequence's vitreous signal (jittered), or ``None`` without eyes."""
    if not (skull and config.eyes):
        return None
    rng = np.random.default_rng([seed, _EYE_STREAM])
    signal = {name: float(value * (1 + config.contrast_jitter * rng.standard_normal()))
              for name, value in _VITREOUS_SIGNAL.items()}
    return _globes(reference), signal


def _with_eyes(image: np.ndarray, name: str, eyes: tuple[np.ndarray, dict[str, float]] | None) -> np.ndarray:
    """``image`` (KJI, before the scanner) with the globes' voxels given the vitreous signal of ``name``."""
    if eyes is None:
        return image
    share, signal = eyes
    return (image * (1 - share) + share * np.float32(signal[name])).astype(image.dtype, copy=False)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cells: int = 6) -> np.ndarray:
    """Zero-mean, unit-std low-frequency noise of the given shape.

    Cubic upsampling of ``cells``^3 random values to a quarter-size grid, then linear
    upsampling to ``shape`` (fast, and smooth at the scale of ``shape / cells``).
    """
    coarse = rng.standard_normal([max(2, cells)] * len(shape))
    mid_shape = [max(c, (s + 3) // 4) for s, c in zip(shape, coarse.shape)]
    mid = ndimage.zoom(coarse, [m / c for m, c in zip(mid_shape, coarse.shape)], order=3, mode="nearest")
    field_ = ndimage.zoom(mid, [s / m for s, m in zip(shape, mid.shape)], order=1, mode="nearest")
    field_ = field_[tuple(slice(0, s) for s in shape)]
    field_ -= field_.mean()
    return (field_ / max(float(field_.std()), 1e-6)).astype(np.float32)


@functools.lru_cache(maxsize=2)
def _white_matter_depth(anatomy: str = "mni152") -> np.ndarray:
    """Distance (mm) of each voxel inside the white matter from its edge, KJI."""
    wm = _anatomy(anatomy).wm
    return ndimage.distance_transform_edt(wm > 0.3).astype(np.float32)


def _tumor_center(rng: np.random.Generator, margin_mm: float, anatomy: str = "mni152") -> np.ndarray:
    """A white-matter voxel at least ``margin_mm`` deep inside the white matter (KJI index)."""
    depth = _white_matter_depth(anatomy)
    candidates = np.argwhere(depth >= min(margin_mm, float(depth.max()) * 0.6))
    return candidates[rng.integers(len(candidates))].astype(float)


@dataclass
class _Tumor:
    """Partial-volume fractions on the 1 mm grid (KJI) and what was drawn."""

    necrosis: np.ndarray
    enhancing: np.ndarray
    edema: np.ndarray
    non_enhancing: np.ndarray | None  # graded phantoms only (label 1, like necrosis)
    info: dict[str, Any]
    gains: dict[tuple[str, int], float] = field(default_factory=dict)  # (sequence, tissue) signal factors
    heterogeneity: float = 0.08

    def fractions(self) -> list[np.ndarray]:
        """Tumor tissue fractions in :data:`_TISSUE_SIGNAL` row order (rows 3...)."""
        extra = [] if self.non_enhancing is None else [self.non_enhancing]
        return [self.necrosis, self.enhancing, self.edema, *extra]


def _draw_grade(rng: np.random.Generator, config: PhantomConfig) -> str:
    """"none" (tumor-free), "HGG", "LGG" or "classic"; draws only for the features that are on."""
    if config.tumor_free_fraction > 0 and rng.random() < config.tumor_free_fraction:
        return "none"
    if config.hgg_fraction is None:
        return "classic"
    return "HGG" if rng.random() < config.hgg_fraction else "LGG"


def _tumor_sizes(rng: np.random.Generator, config: PhantomConfig, grade: str) -> tuple[float, float, float, bool]:
    """Core radius, enhancing rim thickness, oedema radius (mm) and whether a necrotic centre exists.

    High grade: a necrotic centre in most cases, a rim 2-6 mm, oedema 3-20 mm beyond the core.
    Low grade: no necrosis, oedema only 1-10 mm beyond the core. Core sizes overlap on purpose.
    """
    if grade == "classic":
        r_core = rng.uniform(*config.core_radius_mm)
        rim = rng.uniform(*config.rim_thickness_mm)
        r_edema = r_core + rng.uniform(*config.edema_margin_mm)
        return r_core, rim, r_edema, bool(r_core - rim > 3.0 and rng.random() < 0.85)
    r_core = rng.uniform(*config.grade_core_radius_mm[grade])
    if grade == "HGG":
        rim = rng.uniform(2.0, 6.0)
        return r_core, rim, r_core + rng.uniform(3.0, 20.0), bool(r_core - rim > 2.5 and rng.random() < 0.85)
    return r_core, 0.0, r_core + rng.uniform(1.0, 10.0), False


def _tumor_fractions(rng: np.random.Generator, config: PhantomConfig, brain: np.ndarray, anatomy: str,
                     grade: str) -> _Tumor:
    """Grow one tumor of ``grade`` in the white matter of ``anatomy`` (KJI, 1 mm grid)."""
    r_core, rim, r_edema, has_necrosis = _tumor_sizes(rng, config, grade)
    shape = brain.shape
    center = _tumor_center(rng, 0.5 * r_core, anatomy)
    half = int(np.ceil(r_edema * 1.6)) + 2
    lo = np.maximum(center.astype(int) - half, 0)
    hi = np.minimum(center.astype(int) + half + 1, shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), 0)
    offsets = grid - center[:, None, None, None]
    axes = rng.uniform(0.8, 1.25, size=3)
    rho = np.sqrt(((offsets / axes[:, None, None, None]) ** 2).sum(0))
    box_shape = rho.shape
    rho_core = rho * (1 + config.shape_irregularity * 0.5 * _smooth_noise(rng, box_shape, 5))
    rho_edema = rho * (1 + config.shape_irregularity * _smooth_noise(rng, box_shape, 4))

    def soft(inside_dist: np.ndarray) -> np.ndarray:
        # 1 mm partial-volume ramp around the level set.
        return np.clip(inside_dist + 0.5, 0.0, 1.0).astype(np.float32)

    core = soft(r_core - rho_core)
    necrosis = soft((r_core - rim) - rho_core) if has_necrosis else np.zeros_like(core)
    enhancing = np.clip(core - necrosis, 0, 1)
    non_enhancing = None
    info: dict[str, Any] = {"core_radius_mm": float(r_core), "rim_mm": float(rim),
                            "edema_radius_mm": float(r_edema), "necrosis": float(has_necrosis)}
    tumor = _Tumor(necrosis, enhancing, np.zeros_like(core), None, info)
    if grade == "LGG":  # a non-enhancing mass; in about a third of cases a faint patch of enhancement
        patchy = rng.random() < 0.35
        patch = (_smooth_noise(rng, box_shape, 4) > rng.uniform(0.8, 1.6)) if patchy else np.zeros(box_shape, bool)
        enhancing = core * patch
        non_enhancing = core - enhancing
        tumor.gains = {("T1c", 4): float(rng.uniform(0.72, 0.88))}
        tumor.heterogeneity = float(rng.uniform(0.01, 0.05))
        info["patchy_enhancement"] = float(patchy)
    elif grade == "HGG":
        tumor.gains = {("T1c", 4): float(rng.uniform(0.88, 1.15))}
        tumor.heterogeneity = float(rng.uniform(0.10, 0.22))
    edema = np.clip(soft(r_edema - rho_edema) - core, 0, 1) * brain[box]
    parts = [necrosis, enhancing, edema] + ([non_enhancing] if non_enhancing is not None else [])
    full = [np.zeros(shape, np.float32) for _ in parts]
    for dst, src in zip(full, parts):
        dst[box] = src * (brain[box] > 0)
    tumor.necrosis, tumor.enhancing, tumor.edema = full[:3]
    tumor.non_enhancing = full[3] if len(full) > 3 else (np.zeros(shape, np.float32) if grade == "HGG" else None)
    info["heterogeneity"] = tumor.heterogeneity
    return tumor


def _no_tumor(shape: tuple[int, ...], graded: bool) -> _Tumor:
    zeros = [np.zeros(shape, np.float32) for _ in range(4 if graded else 3)]
    return _Tumor(zeros[0], zeros[1], zeros[2], zeros[3] if graded else None, {"core_radius_mm": 0.0})


def _labels_from_fractions(necrosis: np.ndarray, enhancing: np.ndarray, edema: np.ndarray) -> np.ndarray:
    """BraTS label map: the tissue with the largest fraction wins where it exceeds 0.5 in total."""
    stack = np.stack([1.0 - necrosis - enhancing - edema, necrosis, edema, enhancing], 0)
    winner = np.argmax(stack, axis=0)
    return np.array([0, 1, 2, 4], dtype=np.uint8)[winner]


@dataclass(frozen=True)
class _Slices:
    """Where the thick slices are: array axis (KJI) and thickness in mm (None: draw it)."""

    axis: int = 0
    thickness_mm: float | None = None


def _sequence(rng: np.random.Generator, config: PhantomConfig, name: str, fractions: list[np.ndarray],
              anatomy: _Anatomy, mask: np.ndarray, tumor: _Tumor, skull: bool, slices: _Slices,
              eyes: tuple[np.ndarray, dict[str, float]] | None = None) -> np.ndarray:
    """One MRI sequence on the 1 mm grid: tissue mixture, texture, bias, noise, thick slices.

    ``fractions`` are the tissue fractions in :data:`_TISSUE_SIGNAL` row order; ``mask`` is
    the brain (or the head when ``skull``) outside which the image is zero; ``eyes`` (from
    :func:`_eye_signal`) gives the eye globes water's signal.
    """
    jitter = 1 + config.contrast_jitter * rng.standard_normal(len(fractions))
    signal = np.asarray(_TISSUE_SIGNAL[name][:len(fractions)]) * jitter
    for (sequence, tissue), gain in tumor.gains.items():
        if sequence == name:
            signal[tissue] *= gain
    image = np.zeros_like(anatomy.t1)
    for frac, value in zip(fractions, signal):
        image += frac * np.float32(value)
    tumor_parts = range(3, len(fractions))
    tumor_sum = cast(np.ndarray, sum(fractions[i] for i in tumor_parts))  # fractions has >= 1 tumor part
    if name == "T1":  # half of the signal is the template's own T1 texture
        tumor_signal = sum(signal[i] * fractions[i] for i in tumor_parts)
        image = 0.5 * image + 0.5 * (anatomy.t1 * (1 - tumor_sum) + tumor_signal)
    if skull:
        image += anatomy.head * np.float32(_HEAD_SIGNAL[name] * (1 + config.contrast_jitter * rng.standard_normal()))
        image = _with_eyes(image, name, eyes)
    boxes = ndimage.find_objects((tumor_sum > 0).astype(np.uint8))
    if boxes:
        box = boxes[0]
        image[box] *= 1 + tumor.heterogeneity * _smooth_noise(rng, image[box].shape, 6) * tumor_sum[box]
    bias = np.exp(rng.uniform(*config.bias_strength) * _smooth_noise(rng, image.shape, 3))
    image *= bias
    thickness = slices.thickness_mm if slices.thickness_mm is not None else rng.uniform(*config.slice_thickness_mm)
    sigma_slice = thickness / 2.355
    if sigma_slice > 0.5:
        image = ndimage.gaussian_filter1d(image, sigma_slice, axis=slices.axis)
    image += rng.uniform(*config.noise_fraction) * rng.standard_normal(image.shape).astype(np.float32)
    image = np.clip(image, 0, None) * mask
    return (image * rng.uniform(300, 1500)).astype(np.float32)


def _resample(image: sitk.Image, spacing: tuple[float, float, float], label: bool) -> sitk.Image:
    """Resample onto a grid with the same origin/direction and the given spacing (x, y, z mm)."""
    size = [int(round(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    interp = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    return sitk.Resample(image, size, sitk.Transform(), interp, image.GetOrigin(), spacing,
                         image.GetDirection(), 0, image.GetPixelID())


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A random rotation matrix, each Euler angle uniform in +-``max_deg`` degrees."""
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, size=3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _tilted_grid(reference: sitk.Image, spacing: tuple[float, float, float], rotation: np.ndarray) -> sitk.Image:
    """An empty grid with the given spacing (x, y, z mm) whose axes are ``rotation`` times the
    reference's, large enough to hold the whole reference volume (a tilted head in the scanner)."""
    direction = rotation @ np.asarray(reference.GetDirection()).reshape(3, 3)
    size = np.asarray(reference.GetSize())
    corners = np.array([reference.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
                        for corner in np.ndindex(2, 2, 2) for corner in [np.asarray(corner) * (size - 1)]])
    local = corners @ direction  # coordinates along the new axes
    lo, hi = local.min(0), local.max(0)
    grid = sitk.Image([int(np.ceil((h - low) / s)) + 1 for low, h, s in zip(lo, hi, spacing)], sitk.sitkUInt8)
    grid.SetSpacing(spacing)
    grid.SetDirection(tuple(direction.ravel()))
    grid.SetOrigin(tuple(direction @ lo))
    return grid


def _output_geometry(rng: np.random.Generator, config: PhantomConfig) -> tuple[tuple[float, float, float], _Slices]:
    """Output spacing (x, y, z mm) and where the thick slices lie (the 1 mm grid's KJI axis)."""
    inplane = rng.uniform(*config.output_spacing_mm[0])
    thick = rng.uniform(*config.output_spacing_mm[1])
    axis_xyz = int(rng.integers(3)) if config.random_slice_axis else 2
    spacing = [inplane, inplane, inplane]
    spacing[axis_xyz] = thick
    slices = _Slices(axis=2 - axis_xyz, thickness_mm=thick if config.slice_blur_from_spacing else None)
    return (spacing[0], spacing[1], spacing[2]), slices


def make_phantom(seed: int, config: PhantomConfig | None = None) -> PhantomCase:
    """Generate one BraTS-like case; the same seed and config always give the same voxels.

    Args:
        seed: random seed (any non-negative integer).
        config: sampling ranges and features; defaults to the classic :class:`PhantomConfig`. With
            ``config.realistic`` set, the case comes from :func:`make_realistic_phantom`.

    Returns:
        A :class:`PhantomCase` whose images (float32) and label (uint8, BraTS values
        0/1/2/4) share one anisotropic grid in LPS physical space.
    """
    config = config or PhantomConfig()
    if config.realistic is not None:
        return make_realistic_phantom(seed, config)
    rng = np.random.default_rng(seed)
    name = config.anatomies[int(rng.integers(len(config.anatomies)))] if len(config.anatomies) > 1 \
        else config.anatomies[0]
    anatomy = _anatomy(name)
    brain = ((anatomy.csf + anatomy.gm + anatomy.wm) > 0.1).astype(np.float32)
    skull = anatomy.head is not None and config.skull_fraction > 0 and rng.random() < config.skull_fraction
    grade = _draw_grade(rng, config)
    graded = config.hgg_fraction is not None
    tumor = _no_tumor(brain.shape, graded) if grade == "none" else \
        _tumor_fractions(rng, config, brain, name, grade)
    if config.crop_margin_mm is not None and grade != "none":
        anatomy, brain, tumor = _crop_around_tumor(anatomy, brain, tumor, config.crop_margin_mm)
    tissue = tumor.fractions()
    normal = np.clip(1.0 - sum(tissue), 0, 1)
    fractions = [anatomy.csf * normal, anatomy.gm * normal, anatomy.wm * normal, *tissue]
    spacing, slices = _output_geometry(rng, config)
    rotation = _rotation(rng, config.tilt_deg) if config.tilt_deg > 0 else None
    mask, leaky = _outside_mask(seed, config, skull, brain, anatomy.head, anatomy.reference)
    core = tumor.necrosis + (tumor.non_enhancing if tumor.non_enhancing is not None else 0)
    label = sitk.GetImageFromArray(_labels_from_fractions(core, tumor.enhancing, tumor.edema))
    label.CopyInformation(anatomy.reference)
    grid = None if rotation is None else _tilted_grid(anatomy.reference, spacing, rotation)

    def place(image: sitk.Image, is_label: bool) -> sitk.Image:
        if grid is None:
            return _resample(image, spacing, label=is_label)
        interp = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
        return sitk.Resample(image, grid, sitk.Transform(), interp, 0, image.GetPixelID())

    images = {}
    eyes = _eye_signal(seed, config, skull, anatomy.reference)
    for sequence in SEQUENCES:
        img = sitk.GetImageFromArray(_sequence(rng, config, sequence, fractions, anatomy, mask, tumor, skull, slices,
                                               eyes))
        img.CopyInformation(anatomy.reference)
        images[sequence] = place(img, False)
    info = dict(tumor.info)
    info.update({"spacing_x_mm": spacing[0], "spacing_z_mm": spacing[2]})
    if config != PhantomConfig():
        info.update({"grade": "HGG" if grade == "classic" else grade, "anatomy": name, "skull": bool(skull),
                     "spacing_mm": [float(v) for v in spacing],
                     "tilt_deg": 0.0 if rotation is None else
                     float(np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1, 1))))})
        if leaky is not None:
            info["leaky_mask"] = leaky
    return PhantomCase(seed=seed, images=images, label=place(label, True), info=info)


def _crop_around_tumor(anatomy: _Anatomy, brain: np.ndarray, tumor: _Tumor,
                       margin_mm: float) -> tuple[_Anatomy, np.ndarray, _Tumor]:
    """Everything restricted to the tumor's bounding box plus ``margin_mm`` (1 mm grid)."""
    parts = tumor.fractions()
    box = ndimage.find_objects((cast(np.ndarray, sum(parts)) > 0).astype(np.uint8))[0]
    m = int(np.ceil(margin_mm))
    box = tuple(slice(max(0, b.start - m), min(n, b.stop + m)) for b, n in zip(box, brain.shape))
    k, j, i = box
    reference = anatomy.reference[i.start:i.stop, j.start:j.stop, k.start:k.stop]
    cropped = _Anatomy(reference, anatomy.t1[box], anatomy.csf[box], anatomy.gm[box], anatomy.wm[box],
                       None if anatomy.head is None else anatomy.head[box])
    tumor.necrosis, tumor.enhancing, tumor.edema = (a[box] for a in parts[:3])
    if tumor.non_enhancing is not None:
        tumor.non_enhancing = tumor.non_enhancing[box]
    return cropped, brain[box], tumor


TumorSource = Callable[[np.random.Generator, TissueMaps], TumorDraw]
"""Draws a tumor into healthy anatomy (1 mm KJI grid): :func:`medcnncad.data.tumor_shapes.draw_tumor` or a
transplanted real tumor (:func:`medcnncad.data.transplant.transplant_source`)."""

_VESSEL_STREAM = 0x7E55E1  # the vessels draw from their own stream: the same seed gives the same case without them
_GRADE_OF_KIND = {"glioblastoma": "HGG", "lower-grade": "LGG", "metastases": "MET", "none": "none"}


def make_realistic_phantom(seed: int, config: PhantomConfig, draw: TumorSource | None = None) -> PhantomCase:
    """One case with a realistic tumor (or ``draw``'s) and scanner-like appearance; deterministic for a seed.

    Anatomy, skull, tumor-free share, output grid, tilt and crop follow ``config`` as in
    :func:`make_phantom`; the tumor comes from ``draw`` (default: :func:`draw_tumor` with
    ``config.realistic``), its compartments are rendered with the classic tissue contrasts times
    their texture (or, where ``draw`` gives them, a transplanted tumor's own signals), and every
    sequence goes through :func:`medcnncad.data.scanner.scan` (contrast, bias, blur, slices,
    Rician noise).

    Args:
        seed: random seed.
        config: a configuration with ``realistic`` set (``None`` uses the default ranges).
        draw: tumor source; ``None`` draws a synthetic one.

    Returns:
        A :class:`PhantomCase` (images float32, label uint8 BraTS 0/1/2/4, one grid, LPS, mm)
        whose ``info`` has the tumor ``kind``, ``grade`` (HGG, LGG, MET, none, or a transplant's donor grade)
        and volumes.
    """
    rng = np.random.default_rng(seed)
    name = config.anatomies[int(rng.integers(len(config.anatomies)))]
    anatomy = _anatomy(name)
    skull = anatomy.head is not None and config.skull_fraction > 0 and rng.random() < config.skull_fraction
    tissue = TissueMaps(anatomy.csf, anatomy.gm, anatomy.wm, anatomy.t1, anatomy.head)
    free = config.tumor_free_fraction > 0 and rng.random() < config.tumor_free_fraction
    if free:
        tumor = TumorDraw(np.zeros(tissue.wm.shape, np.uint8), np.ones(tissue.wm.shape, np.float32), tissue,
                          info={"kind": "none"})
    elif draw is not None:
        tumor = draw(rng, tissue)
    else:
        tumor = draw_tumor(rng, tissue, config.realistic or RealisticTumorConfig())
    reference = anatomy.reference
    if config.crop_margin_mm is not None and not free:
        tumor, reference = _crop_draw(tumor, reference, config.crop_margin_mm)
    moved = tumor.tissue
    brain = ((moved.csf + moved.gm + moved.wm) > 0.1).astype(np.float32)
    mask, leaky = _outside_mask(seed, config, skull, brain, moved.head, reference)
    fractions = _compartment_fractions(tumor)
    vessels = _vessels(np.random.default_rng([seed, _VESSEL_STREAM]), config, brain, fractions, reference)
    spacing, slices = _output_geometry(rng, config)
    rotation = _rotation(rng, config.tilt_deg) if config.tilt_deg > 0 else None
    grid = None if rotation is None else _tilted_grid(reference, spacing, rotation)

    def place(array: np.ndarray, is_label: bool) -> sitk.Image:
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(reference)
        if grid is None:
            return _resample(image, spacing, label=is_label)
        interp = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
        return sitk.Resample(image, grid, sitk.Transform(), interp, 0, image.GetPixelID())

    images, scanner = {}, {}
    eyes = _eye_signal(seed, config, skull, reference)
    for sequence in SEQUENCES:
        array, scanner[sequence] = _realistic_sequence(rng, config, sequence, fractions, tumor, skull, slices,
                                                       vessels, eyes)
        images[sequence] = place(array * mask, False)
    kind = str(tumor.info.get("kind", "glioblastoma"))
    grade = tumor.info.get("grade", _GRADE_OF_KIND.get(kind, "HGG"))  # a transplant's is its donor's
    info = {**tumor.info, "grade": grade, "anatomy": name, "skull": bool(skull),
            "spacing_mm": [float(v) for v in spacing], "scanner": scanner}
    if vessels is not None:
        info["vessels_ml"] = round(float(vessels[0].sum()) / 1000.0, 2)  # 1 mm grid
    if leaky is not None:
        info["leaky_mask"] = leaky
    return PhantomCase(seed=seed, images=images, label=place(labels_from_compartments(tumor.compartments), True),
                       info=info)


def _compartment_fractions(tumor: TumorDraw) -> list[np.ndarray]:
    """Tissue fractions in :data:`_TISSUE_SIGNAL` row order: CSF, GM, WM (displaced, outside the tumor),
    then necrosis, enhancing, oedema, non-enhancing with a 0.6 mm partial-volume blur at their borders."""
    parts = [np.zeros(tumor.compartments.shape, np.float32) for _ in range(NECROSIS, NON_ENHANCING + 1)]
    found = ndimage.find_objects((tumor.compartments > 0).astype(np.uint8))
    if found:
        box = tuple(slice(max(0, s.start - 3), s.stop + 3) for s in found[0])
        local = tumor.compartments[box]
        for code, part in zip(range(NECROSIS, NON_ENHANCING + 1), parts):
            part[box] = ndimage.gaussian_filter((local == code).astype(np.float32), 0.6)
    normal = np.clip(1.0 - cast(np.ndarray, sum(parts)), 0, 1)
    tissue = tumor.tissue
    return [tissue.csf * normal, tissue.gm * normal, tissue.wm * normal, *parts]


_VesselDraw = tuple[np.ndarray, dict[str, float]]  # vessel fraction (K, J, I) on the 1 mm grid, signal per sequence


def _vessels(rng: np.random.Generator, config: PhantomConfig, brain: np.ndarray, fractions: list[np.ndarray],
             reference: sitk.Image) -> _VesselDraw | None:
    """The case's enhancing normal structures outside the tumor (fraction, 1 mm grid) and their signal per
    sequence; None when the configuration has none. ``rng`` is the vessels' own stream, so a case drawn with
    them equals the same seed's case without them (label, geometry, noise) except where they are."""
    if config.vessels is None:
        return None
    fraction = draw_vessels(rng, brain > 0, fractions[0], reference, config.vessels)
    fraction *= np.clip(1.0 - cast(np.ndarray, sum(fractions[3:])), 0, 1)  # the tumor keeps its own signal
    jitter = config.vessels.signal_jitter
    signal = {name: float(v * (1 + jitter * rng.standard_normal())) for name, v in VESSEL_SIGNAL.items()}
    signal["T1c"] = float(rng.uniform(*config.vessels.enhancement))
    return fraction.astype(np.float32), signal


def _realistic_sequence(rng: np.random.Generator, config: PhantomConfig, name: str, fractions: list[np.ndarray],
                        tumor: TumorDraw, skull: bool, slices: _Slices,
                        vessels: _VesselDraw | None = None,
                        eyes: tuple[np.ndarray, dict[str, float]] | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """One sequence on the 1 mm grid: tissue mixture with tumor texture (or donor signal) and enhancing
    normal structures (``vessels``: fraction and signal per sequence), the eye globes as water (``eyes``, from
    :func:`_eye_signal`), then the scanner."""
    signal = np.asarray(_TISSUE_SIGNAL[name]) * (1 + config.contrast_jitter * rng.standard_normal(7))
    for (sequence, code), gain in tumor.gains.items():
        if sequence == name:
            signal[code] *= gain
    normal = cast(np.ndarray, sum(f * np.float32(v) for f, v in zip(fractions[:3], signal[:3])))
    tumor_signal = cast(np.ndarray, sum(f * np.float32(v) for f, v in zip(fractions[3:], signal[3:])))
    if name == "T1":  # half of the normal signal is the template's own T1 texture, as in the classic phantoms
        normal = 0.5 * normal + 0.5 * tumor.tissue.t1 * cast(np.ndarray, sum(fractions[:3]))
    image = (normal + tumor_signal * tumor.texture).astype(np.float32)
    if vessels is not None:
        fraction, vessel_signal = vessels
        image = image * (1 - fraction) + fraction * np.float32(vessel_signal[name])
    if name in tumor.donor_signal and tumor.donor_weight is not None:
        w = tumor.donor_weight
        image = (1 - w) * image + w * tumor.donor_signal[name] * np.float32(signal[2])
    if skull and tumor.tissue.head is not None:
        head_signal = _HEAD_SIGNAL[name] * (1 + config.contrast_jitter * rng.standard_normal())
        image += tumor.tissue.head * np.float32(head_signal)
        image = _with_eyes(image, name, eyes)
    thickness = slices.thickness_mm if slices.thickness_mm is not None else rng.uniform(*config.slice_thickness_mm)
    image, drawn = scan(rng, image, float(signal[2]), config.scanner, slices.axis, thickness)
    return (image * rng.uniform(300, 1500)).astype(np.float32), drawn


def _crop_draw(tumor: TumorDraw, reference: sitk.Image, margin_mm: float) -> tuple[TumorDraw, sitk.Image]:
    """A drawn tumor and its grid restricted to the tumor's bounding box plus ``margin_mm`` (1 mm grid)."""
    found = ndimage.find_objects((tumor.compartments > 0).astype(np.uint8))[0]
    m = int(np.ceil(margin_mm))
    box = tuple(slice(max(0, b.start - m), min(n, b.stop + m)) for b, n in zip(found, tumor.compartments.shape))
    k, j, i = box
    tissue = TissueMaps(**{key: array[box] for key, array in tumor.tissue.arrays().items()})
    cropped = TumorDraw(tumor.compartments[box], tumor.texture[box], tissue, tumor.gains,
                        {key: array[box] for key, array in tumor.donor_signal.items()},
                        None if tumor.donor_weight is None else tumor.donor_weight[box], tumor.info)
    return cropped, reference[i.start:i.stop, j.start:j.stop, k.start:k.stop]


PRESETS: dict[str, PhantomConfig] = {
    # the set the first demo model was trained and evaluated on
    "classic": PhantomConfig(),
    # grade as a hidden variable (for the lesion grade classifier), otherwise classic
    "graded": PhantomConfig(hgg_fraction=0.5),
    # training distribution of the robust model: both grades, tumor-free cases, lesions down to
    # ~1 mL, two anatomies, skull on/off, tilted heads, 1-7 mm slices along any axis
    "robust": PhantomConfig(
        hgg_fraction=0.5, tumor_free_fraction=0.1, anatomies=("mni152", "colin27"), skull_fraction=0.5,
        tilt_deg=15.0, random_slice_axis=True, slice_blur_from_spacing=True,
        output_spacing_mm=((0.8, 1.3), (1.0, 7.0)), bias_strength=(0.05, 0.45), noise_fraction=(0.01, 0.08),
        contrast_jitter=0.15, grade_core_radius_mm={"HGG": (4.0, 22.0), "LGG": (4.5, 20.0)}),
    # training mix for skull-on heads (only Colin27 has a skull): mostly skull on, thick slices
    # along any axis, strong bias field; trained together with "robust" ("robust,robust-head")
    "robust-head": PhantomConfig(
        hgg_fraction=0.5, tumor_free_fraction=0.15, anatomies=("colin27",), skull_fraction=0.85,
        tilt_deg=15.0, random_slice_axis=True, slice_blur_from_spacing=True,
        output_spacing_mm=((0.8, 1.3), (2.0, 7.5)), bias_strength=(0.1, 0.5), noise_fraction=(0.01, 0.08),
        contrast_jitter=0.15, grade_core_radius_mm={"HGG": (4.0, 22.0), "LGG": (4.5, 20.0)}),
    # held-out evaluation: different seeds AND different settings from "robust"
    "heldout": PhantomConfig(
        hgg_fraction=0.5, tumor_free_fraction=0.1, anatomies=("mni152", "colin27"), skull_fraction=0.4,
        tilt_deg=20.0, random_slice_axis=True, slice_blur_from_spacing=True,
        output_spacing_mm=((0.7, 1.0), (1.0, 4.0)), bias_strength=(0.1, 0.55), noise_fraction=(0.02, 0.07),
        contrast_jitter=0.12, grade_core_radius_mm={"HGG": (5.0, 20.0), "LGG": (5.0, 18.0)}),
    # clinical-like: skull on, axial 5-7 mm slices, strong bias field (evaluated on T1c alone)
    "clinical-like": PhantomConfig(
        hgg_fraction=0.5, tumor_free_fraction=0.15, anatomies=("colin27",), skull_fraction=1.0,
        tilt_deg=10.0, slice_blur_from_spacing=True, output_spacing_mm=((0.8, 1.0), (5.0, 7.0)),
        bias_strength=(0.2, 0.5), noise_fraction=(0.02, 0.06), contrast_jitter=0.12),
}
# "robust" with mostly low-grade tumors (85 % of tumor cases): the low-grade core, a homogeneous
# non-enhancing mass inside oedema, is the region the robust model learns worst; trained
# together with "robust-head" ("robust-lgg,robust-head")
PRESETS["robust-lgg"] = replace(PRESETS["robust"], hgg_fraction=0.15)
# "robust" with per-case tissue contrast jittered 25 % instead of 15 % (each tissue's signal, each
# sequence): a fixed intensity rule no longer tells tumor core from oedema, so training has to use
# the case's own context; trained together with "robust-head" ("robust-jitter,robust-head")
PRESETS["robust-jitter"] = replace(PRESETS["robust"], contrast_jitter=0.25)
# patient-like tumors (medcnncad.data.tumor_shapes: irregular, heterogeneous glioblastomas, lower-grade
# gliomas and metastases, oedema along white matter, mass effect) and scanner (medcnncad.data.scanner:
# gamma, bias, blur, Rician noise) on the "robust" geometry: two anatomies, skull on/off, tilted heads,
# 1-7 mm slices along any axis, 10 % tumor-free. The classic bias_strength and noise_fraction are unused
# (the scanner model replaces them); contrast_jitter still jitters each tissue's signal.
PRESETS["realistic"] = replace(PRESETS["robust"], hgg_fraction=None, realistic=RealisticTumorConfig(),
                               scanner=ScannerConfig())
# "realistic" with the normal structures that enhance on post-contrast T1 (dural sinuses, cortical veins,
# choroid plexus; medcnncad.data.vessels) in 80 % of the cases, labelled background: bright T1c that is
# not tumor, which the templates lack and patients' scans always have
PRESETS["realistic-vessels"] = replace(PRESETS["realistic"], vessels=VesselConfig())
# skull-on heads as "robust-head" draws them (Colin27, skull on in 85 %, 2-7.5 mm slices along any axis, 15 %
# tumor-free) with realistic tumors, the scanner model and the enhancing normal structures; runs 12 and 13
# trained with it and were not shipped (docs/models.md)
PRESETS["realistic-head-vessels"] = replace(PRESETS["robust-head"], hgg_fraction=None,
                                            realistic=RealisticTumorConfig(), scanner=ScannerConfig(),
                                            vessels=VesselConfig())
# the two skull-on mixes with the eye globes rendered as water (bright on T2; `eyes`): a patient's T2 shows
# them bright inside a brain mask that holds the orbits (docs/models.md, run 19); same draws otherwise
PRESETS["robust-head-eyes"] = replace(PRESETS["robust-head"], eyes=True)
PRESETS["realistic-head-vessels-eyes"] = replace(PRESETS["realistic-head-vessels"], eyes=True)
# and half of their skull-on heads cut by a leaky brain mask (`leaky_mask`): head tissue next to the brain and the
# orbits' contents left inside, zero beyond, as the clinical chain's brain extraction can leave them (run 20)
PRESETS["robust-head-leaky"] = replace(PRESETS["robust-head-eyes"], leaky_mask=0.5)
PRESETS["realistic-head-vessels-leaky"] = replace(PRESETS["realistic-head-vessels-eyes"], leaky_mask=0.5)
# the two vessel presets with dural sinuses as wide as patients' (radius 3-6 mm: 6-12 mm across, where the default
# 1.5-3 mm draws 3-6 mm); the radius is the vessels' stream's first draw after the presence draw, so every other
# part of a case is the same (run 21, docs/evaluations/robust-run21_plan.md)
WIDE_SINUSES = VesselConfig(sinus_radius_mm=(3.0, 6.0))
PRESETS["realistic-vessels-wide"] = replace(PRESETS["realistic-vessels"], vessels=WIDE_SINUSES)
PRESETS["realistic-head-vessels-wide"] = replace(PRESETS["realistic-head-vessels"], vessels=WIDE_SINUSES)


def preset(name: str) -> PhantomConfig:
    """The :data:`PRESETS` configuration ``name`` (ValueError naming the choices otherwise)."""
    if name not in PRESETS:
        raise InputError(f"phantom preset {name!r}: choose from {sorted(PRESETS)}")
    return PRESETS[name]


def write_phantom(case: PhantomCase, out_dir: str | Path) -> dict[str, Path]:
    """Write ``<seq>.nii.gz`` per sequence and ``label.nii.gz``, all together or none (an interrupted run leaves no
    case whose sequences and label come from two seeds); returns the paths by name."""
    out = Path(out_dir)
    names = {**{name: f"{name}.nii.gz" for name in case.images}, "label": "label.nii.gz"}
    with staged_outputs(out) as staging:
        for name, image in [*case.images.items(), ("label", case.label)]:
            write_image(image, staging / names[name])
    return {name: out / file for name, file in names.items()}


def write_sample_case(out_dir: str | Path, manifest, seed: int = 900_000) -> dict[str, Path]:
    """The compact sample case shipped for Slicer's Sample Data module (a recipe, deterministic).

    The phantom is cropped to its brain's bounding box and each sequence is stored as
    8-bit NRRD (scaled to 0-255): ``MedCNNCADPhantom_<seq>.nrrd``. The reference is a
    Slicer segmentation ``MedCNNCADPhantom_reference.seg.nrrd`` whose segments carry the
    names, colours and terminology of ``manifest``'s labels (BraTS values 1, 2, 4).
    """
    case = make_phantom(seed)
    brain = np.argwhere(sitk.GetArrayViewFromImage(case.images["T1"]) > 0)
    (k0, j0, i0), (k1, j1, i1) = brain.min(0), brain.max(0) + 1
    out = Path(out_dir)
    with staged_outputs(out) as staging:  # every file of the sample, or none
        written = _write_sample_files(case, (k0, j0, i0), (k1, j1, i1), manifest, staging)
    return {name: out / path.name for name, path in written.items()}


def _write_sample_files(case: PhantomCase, low: Any, high: Any, manifest: Any, out: Path) -> dict[str, Path]:
    """The sample case's files (:func:`write_sample_case`) cropped to the (K, J, I) box ``low`` to ``high``."""
    (k0, j0, i0), (k1, j1, i1) = low, high
    paths = {}
    for name, image in [*case.images.items(), ("label", case.label)]:
        crop = image[int(i0):int(i1), int(j0):int(j1), int(k0):int(k1)]
        array = sitk.GetArrayFromImage(crop)
        if name != "label":
            array = np.clip(np.round(array / max(float(array.max()), 1e-6) * 255), 0, 255)
        small = sitk.GetImageFromArray(array.astype(np.uint8))
        small.CopyInformation(crop)
        if name == "label":
            paths["reference"] = write_seg_nrrd(array, crop, manifest, out / "MedCNNCADPhantom_reference.seg.nrrd")
        else:
            paths[name] = write_image(small, out / f"MedCNNCADPhantom_{name}.nrrd")
    return paths


def cropped_phantom(seed: int = 900_001, box_mm: tuple[float, float, float] = (96.0, 96.0, 72.0),
                    config: PhantomConfig | None = None) -> tuple[dict[str, sitk.Image], sitk.Image]:
    """A phantom cropped to a ``box_mm`` (x, y, z) box around its tumor: fast to segment (tests, benchmarks).

    Returns:
        Sequence name -> cropped image, and the cropped label map (BraTS values 0/1/2/4).
    """
    return crop_around_tumor(make_phantom(seed, config), box_mm)


def crop_around_tumor(case: PhantomCase, box_mm: tuple[float, float, float] = (96.0, 96.0, 72.0)
                      ) -> tuple[dict[str, sitk.Image], sitk.Image]:
    """A generated case cropped to a ``box_mm`` (x, y, z) box around its tumor (:func:`cropped_phantom`)."""
    label = sitk.GetArrayFromImage(case.label)
    center = np.argwhere(label > 0).mean(0)[::-1]  # (i, j, k)
    spacing = np.array(case.label.GetSpacing())
    half = np.asarray(box_mm) / 2 / spacing
    lo = np.maximum((center - half).astype(int), 0)
    hi = np.minimum((center + half).astype(int), np.array(case.label.GetSize()))

    def crop(img: sitk.Image) -> sitk.Image:
        return img[int(lo[0]):int(hi[0]), int(lo[1]):int(hi[1]), int(lo[2]):int(hi[2])]

    return {n: crop(img) for n, img in case.images.items()}, crop(case.label)
