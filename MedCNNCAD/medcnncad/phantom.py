"""Deterministic BraTS-like phantoms built from real anatomy, with exact ground truth.

Anatomy comes from the MNI152 2009 symmetric 1 mm template shipped inside nilearn
(T1 intensities plus grey- and white-matter probability maps), so no download is
needed. A tumor is grown inside the white matter: a necrotic core, an enhancing rim
and surrounding oedema, each with the characteristic contrast of the four BraTS
sequences (T1, T1c, T2, FLAIR). Each sequence then gets its own bias field, noise,
intensity scale and simulated slice thickness, and the whole case is resampled onto
a random anisotropic voxel grid.

Labels follow the BraTS convention: 0 background, 1 necrotic / non-enhancing core,
2 peritumoral oedema, 4 enhancing tumor. Regions: WT = {1, 2, 4}, TC = {1, 4},
ET = {4}.

Arrays are in SimpleITK / Slicer order (K, J, I) = (z, y, x); physical units are mm.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

__all__ = ["SEQUENCES", "PhantomConfig", "PhantomCase", "make_phantom", "write_phantom", "write_sample_case"]

SEQUENCES: tuple[str, ...] = ("T1", "T1c", "T2", "FLAIR")

# Relative signal of each tissue per sequence (white matter T1 ~ 1). Rows: CSF, GM, WM,
# necrosis, enhancing tumor, oedema. Chosen to mimic clinical contrast: enhancing tumor
# is bright only on T1c, oedema is bright on T2/FLAIR, necrosis is dark on T1/T1c and
# bright on T2, CSF is suppressed on FLAIR.
_TISSUE_SIGNAL = {
    "T1": (0.25, 0.65, 1.00, 0.30, 0.60, 0.55),
    "T1c": (0.25, 0.65, 1.00, 0.25, 1.55, 0.55),
    "T2": (1.00, 0.55, 0.35, 0.95, 0.60, 0.80),
    "FLAIR": (0.12, 0.60, 0.45, 0.45, 0.75, 1.05),
}


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


@dataclass
class PhantomCase:
    """One generated case: co-registered sequences and the label map on one grid."""

    seed: int
    images: dict[str, sitk.Image]
    label: sitk.Image
    info: dict[str, float] = field(default_factory=dict)


@functools.lru_cache(maxsize=1)
def _anatomy() -> tuple[sitk.Image, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNI152 T1 and tissue probabilities (CSF, GM, WM) as KJI float32 arrays."""
    from nilearn import datasets

    paths = {
        "t1": datasets.load_mni152_template(resolution=1),
        "gm": datasets.load_mni152_gm_template(resolution=1),
        "wm": datasets.load_mni152_wm_template(resolution=1),
    }
    arrays = {}
    reference = None
    for key, img in paths.items():
        # nibabel arrays are IJK in RAS; convert to KJI and build the LPS geometry.
        data = np.asarray(img.get_fdata(), dtype=np.float32).transpose(2, 1, 0)
        arrays[key] = np.ascontiguousarray(data)
        if reference is None:
            reference = _image_from_ras_affine(arrays[key], img.affine)
    t1 = arrays["t1"] / max(float(arrays["t1"].max()), 1e-6)
    gm, wm = arrays["gm"], arrays["wm"]
    brain = ndimage.binary_fill_holes(t1 > 0.05)
    csf = np.clip(brain.astype(np.float32) - gm - wm, 0.0, 1.0)
    return reference, t1, csf, np.clip(gm, 0, 1), np.clip(wm, 0, 1)


def _image_from_ras_affine(array_kji: np.ndarray, affine_ras: np.ndarray) -> sitk.Image:
    """Wrap a KJI array in a SimpleITK image whose geometry matches a NIfTI RAS affine."""
    lps = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(affine_ras, dtype=float)[:3, :]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    image = sitk.GetImageFromArray(array_kji)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(v) for v in lps[:, 3]))
    image.SetDirection(tuple(float(v) for v in (lps[:, :3] / spacing).ravel()))
    return image


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


@functools.lru_cache(maxsize=1)
def _white_matter_depth() -> np.ndarray:
    """Distance (mm) of each voxel inside the white matter from its edge, KJI."""
    wm = _anatomy()[4]
    return ndimage.distance_transform_edt(wm > 0.3).astype(np.float32)


def _tumor_center(rng: np.random.Generator, margin_mm: float) -> np.ndarray:
    """A white-matter voxel at least ``margin_mm`` deep inside the white matter (KJI index)."""
    depth = _white_matter_depth()
    candidates = np.argwhere(depth >= min(margin_mm, float(depth.max()) * 0.6))
    return candidates[rng.integers(len(candidates))].astype(float)


def _tumor_fractions(
    rng: np.random.Generator, config: PhantomConfig, brain: np.ndarray, wm: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """Partial-volume fractions of necrosis, enhancing tumor and oedema (KJI, 1 mm grid)."""
    r_core = rng.uniform(*config.core_radius_mm)
    rim = rng.uniform(*config.rim_thickness_mm)
    r_edema = r_core + rng.uniform(*config.edema_margin_mm)
    has_necrosis = r_core - rim > 3.0 and rng.random() < 0.85
    shape = brain.shape
    center = _tumor_center(rng, 0.5 * r_core)
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
    edema = np.clip(soft(r_edema - rho_edema) - core, 0, 1) * brain[box]
    full = [np.zeros(shape, np.float32) for _ in range(3)]
    for dst, src in zip(full, (necrosis, enhancing, edema)):
        dst[box] = src * (brain[box] > 0)
    info = {"core_radius_mm": float(r_core), "rim_mm": float(rim), "edema_radius_mm": float(r_edema),
            "necrosis": float(has_necrosis)}
    return full[0], full[1], full[2], info


def _labels_from_fractions(necrosis: np.ndarray, enhancing: np.ndarray, edema: np.ndarray) -> np.ndarray:
    """BraTS label map: the tissue with the largest fraction wins where it exceeds 0.5 in total."""
    stack = np.stack([1.0 - necrosis - enhancing - edema, necrosis, edema, enhancing], 0)
    winner = np.argmax(stack, axis=0)
    return np.array([0, 1, 2, 4], dtype=np.uint8)[winner]


def _sequence(
    rng: np.random.Generator,
    config: PhantomConfig,
    name: str,
    fractions: list[np.ndarray],
    t1_template: np.ndarray,
    brain: np.ndarray,
) -> np.ndarray:
    """One MRI sequence on the 1 mm grid: tissue mixture, texture, bias, noise, thick slices."""
    signal = np.asarray(_TISSUE_SIGNAL[name]) * (1 + config.contrast_jitter * rng.standard_normal(6))
    image = np.zeros_like(t1_template)
    for frac, value in zip(fractions, signal):
        image += frac * np.float32(value)
    tumor = fractions[3] + fractions[4] + fractions[5]
    if name == "T1":  # half of the signal is the template's own T1 texture
        tumor_signal = sum(signal[i] * fractions[i] for i in (3, 4, 5))
        image = 0.5 * image + 0.5 * (t1_template * (1 - tumor) + tumor_signal)
    box = ndimage.find_objects((tumor > 0).astype(np.uint8))[0]
    image[box] *= 1 + 0.08 * _smooth_noise(rng, image[box].shape, 6) * tumor[box]
    bias = np.exp(rng.uniform(*config.bias_strength) * _smooth_noise(rng, image.shape, 3))
    image *= bias
    sigma_slice = rng.uniform(*config.slice_thickness_mm) / 2.355
    if sigma_slice > 0.5:
        image = ndimage.gaussian_filter1d(image, sigma_slice, axis=0)
    image += rng.uniform(*config.noise_fraction) * rng.standard_normal(image.shape).astype(np.float32)
    image = np.clip(image, 0, None) * brain
    return (image * rng.uniform(300, 1500)).astype(np.float32)


def _resample(image: sitk.Image, spacing: tuple[float, float, float], label: bool) -> sitk.Image:
    """Resample onto a grid with the same origin/direction and the given spacing (x, y, z mm)."""
    size = [int(round(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    interp = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    return sitk.Resample(image, size, sitk.Transform(), interp, image.GetOrigin(), spacing,
                         image.GetDirection(), 0, image.GetPixelID())


def make_phantom(seed: int, config: PhantomConfig | None = None) -> PhantomCase:
    """Generate one BraTS-like case; the same seed always gives the same voxels.

    Args:
        seed: random seed (any non-negative integer).
        config: sampling ranges; defaults to :class:`PhantomConfig`.

    Returns:
        A :class:`PhantomCase` whose images (float32) and label (uint8, BraTS values
        0/1/2/4) share one anisotropic grid in LPS physical space.
    """
    config = config or PhantomConfig()
    rng = np.random.default_rng(seed)
    reference, t1, csf, gm, wm = _anatomy()
    brain = ((csf + gm + wm) > 0.1).astype(np.float32)
    necrosis, enhancing, edema, info = _tumor_fractions(rng, config, brain, wm)
    normal = np.clip(1.0 - necrosis - enhancing - edema, 0, 1)
    fractions = [csf * normal, gm * normal, wm * normal, necrosis, enhancing, edema]
    inplane = rng.uniform(*config.output_spacing_mm[0])
    spacing = (inplane, inplane, rng.uniform(*config.output_spacing_mm[1]))
    images = {}
    for name in SEQUENCES:
        array = _sequence(rng, config, name, fractions, t1, brain)
        img = sitk.GetImageFromArray(array)
        img.CopyInformation(reference)
        images[name] = _resample(img, spacing, label=False)
    label = sitk.GetImageFromArray(_labels_from_fractions(necrosis, enhancing, edema))
    label.CopyInformation(reference)
    info.update({"spacing_x_mm": spacing[0], "spacing_z_mm": spacing[2]})
    return PhantomCase(seed=seed, images=images, label=_resample(label, spacing, label=True), info=info)


def write_phantom(case: PhantomCase, out_dir: str | Path) -> dict[str, Path]:
    """Write ``<seq>.nii.gz`` per sequence and ``label.nii.gz``; returns the paths by name."""
    from .io import write_image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / f"{name}.nii.gz" for name in case.images}
    for name, img in case.images.items():
        write_image(img, paths[name])
    paths["label"] = out / "label.nii.gz"
    write_image(case.label, paths["label"])
    return paths


def write_sample_case(out_dir: str | Path, manifest, seed: int = 900_000) -> dict[str, Path]:
    """The compact sample case shipped for Slicer's Sample Data module (a recipe, deterministic).

    The phantom is cropped to its brain's bounding box and each sequence is stored as
    8-bit NRRD (scaled to 0-255): ``MedCNNCADPhantom_<seq>.nrrd``. The reference is a
    Slicer segmentation ``MedCNNCADPhantom_reference.seg.nrrd`` whose segments carry the
    names, colours and terminology of ``manifest``'s labels (BraTS values 1, 2, 4).
    """
    from .io import write_image
    from .segfile import write_seg_nrrd

    case = make_phantom(seed)
    brain = np.argwhere(sitk.GetArrayViewFromImage(case.images["T1"]) > 0)
    (k0, j0, i0), (k1, j1, i1) = brain.min(0), brain.max(0) + 1
    out = Path(out_dir)
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
