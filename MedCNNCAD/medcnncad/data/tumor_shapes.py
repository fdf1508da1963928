"""Realistic synthetic brain tumors: irregular, heterogeneous, oedema along white matter, mass effect.

The classic phantom tumor (:mod:`medcnncad.data.phantom`) is a smooth ellipsoid with a uniform
rim; real tumors are not. This module draws tumors that look like patients' and returns them
as a compartment map plus a multiplicative texture, ready for the phantom's renderer:

- **glioblastoma**: a lobulated core with a fractal surface, a necrotic centre (most cases)
  inside an enhancing rim whose thickness varies along the surface, with gaps (incomplete
  enhancement) and faint-to-strong contrast; oedema grown *geodesically* through the white
  matter (fast marching, slow in grey matter, almost blocked by CSF); satellites;
- **lower-grade**: a non-enhancing mass (bright on T2/FLAIR, subtle on T1c), sometimes a
  faint enhancing patch, little oedema;
- **metastases**: 1-5 small lesions near the grey-white junction, ring-enhancing or solid,
  each with its own amount of vasogenic oedema (from none to much more than the lesion).

Every tumor pushes the surrounding anatomy outwards (mass effect): a smooth radial
displacement that vanishes at a finite distance, so the anatomy far away is untouched.

Compartment codes are the phantom's tissue-signal rows: :data:`NECROSIS` 3, :data:`ENHANCING`
4, :data:`EDEMA` 5, :data:`NON_ENHANCING` 6 (0: no tumor). :func:`labels_from_compartments`
maps them to BraTS labels (1 necrosis / non-enhancing core, 2 oedema, 4 enhancing).

Arrays are (K, J, I) = (z, y, x) on a 1 mm isotropic grid, so voxel distances are mm.
Everything is deterministic for a given :class:`numpy.random.Generator` state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from medcnncad.errors import InputError

__all__ = ["TUMOR_KINDS", "NECROSIS", "ENHANCING", "EDEMA", "NON_ENHANCING", "RealisticTumorConfig",
           "TissueMaps", "TumorDraw", "fractal_noise", "irregular_blob", "split_rim", "geodesic_edema",
           "radial_displacement", "warp", "mass_effect", "draw_tumor", "labels_from_compartments", "inside_brain"]

TUMOR_KINDS: tuple[str, ...] = ("glioblastoma", "lower-grade", "metastases")
NECROSIS, ENHANCING, EDEMA, NON_ENHANCING = 3, 4, 5, 6
_BRATS_OF_COMPARTMENT = {0: 0, NECROSIS: 1, ENHANCING: 4, EDEMA: 2, NON_ENHANCING: 1}


@dataclass(frozen=True)
class RealisticTumorConfig:
    """Ranges a realistic tumor is drawn from (uniform within each range; mm unless stated).

    Attributes:
        kind_weights: relative frequency of glioblastoma, lower-grade glioma and metastases.
        core_radius_mm: equivalent radius of a glioma's core (enhancing + necrosis or the
            non-enhancing mass), 6-25 mm covers ~1-65 mL.
        lobes: number of lobules the glioma core is the union of (1: one irregular blob).
        roughness: amplitude of the fractal surface perturbation as a fraction of the radius
            (0: smooth; 0.5: ragged, finger-like).
        rim_mm: mean thickness of the enhancing rim (glioblastoma, ring metastases).
        rim_variation: relative variation of the rim thickness along the surface (0-1).
        rim_gap_probability: probability that part of the rim does not enhance (incomplete ring).
        enhancement: T1c signal of enhancing tumor relative to the phantom's nominal enhancing
            signal (1.55 x white matter); 0.7 gives a faint enhancement ~1.1 x white matter.
        necrosis_probability: probability of a necrotic centre in a glioblastoma.
        edema_reach_mm: geodesic reach of glioma oedema through white matter beyond the core.
        edema_gm_speed: oedema spread speed in grey matter relative to white matter (CSF: 1/50).
        lgg_edema_reach_mm: geodesic oedema reach of a lower-grade glioma.
        lgg_enhancing_patch_probability: probability of a faint enhancing patch in a lower-grade glioma.
        mass_effect_mm: outward displacement of the anatomy at the tumor's edge (glioma).
        satellite_probability: probability that a glioblastoma has satellite lesions.
        satellites: how many satellites when it does (inclusive range).
        metastasis_count: number of metastases (inclusive range).
        metastasis_radius_mm: radius of each metastasis.
        metastasis_edema_ratio: oedema reach of a metastasis as a multiple of its radius (0: none).
        texture: standard deviation of the multiplicative texture inside each compartment.
    """

    kind_weights: tuple[float, float, float] = (0.45, 0.25, 0.30)
    core_radius_mm: tuple[float, float] = (6.0, 24.0)
    lobes: tuple[int, int] = (1, 4)
    roughness: tuple[float, float] = (0.12, 0.45)
    rim_mm: tuple[float, float] = (1.5, 6.0)
    rim_variation: float = 0.6
    rim_gap_probability: float = 0.35
    enhancement: tuple[float, float] = (0.7, 1.15)
    necrosis_probability: float = 0.85
    edema_reach_mm: tuple[float, float] = (3.0, 30.0)
    edema_gm_speed: tuple[float, float] = (0.05, 0.3)
    lgg_edema_reach_mm: tuple[float, float] = (0.0, 8.0)
    lgg_enhancing_patch_probability: float = 0.25
    mass_effect_mm: tuple[float, float] = (0.0, 8.0)
    satellite_probability: float = 0.3
    satellites: tuple[int, int] = (1, 3)
    metastasis_count: tuple[int, int] = (1, 5)
    metastasis_radius_mm: tuple[float, float] = (2.5, 11.0)
    metastasis_edema_ratio: tuple[float, float] = (0.0, 3.0)
    texture: tuple[float, float] = (0.04, 0.2)

    def __post_init__(self) -> None:
        if len(self.kind_weights) != len(TUMOR_KINDS) or min(self.kind_weights) < 0 or sum(self.kind_weights) <= 0:
            raise InputError(f"tumor kind weights {self.kind_weights}: give {len(TUMOR_KINDS)} non-negative "
                             f"weights ({', '.join(TUMOR_KINDS)}) with a positive sum")
        for name in ("core_radius_mm", "metastasis_radius_mm"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise InputError(f"{name} {getattr(self, name)}: need 0 < low <= high")


@dataclass
class TissueMaps:
    """Healthy anatomy on the 1 mm grid, (K, J, I) float32: tissue probabilities and T1 intensity.

    ``head`` is the T1 intensity outside the brain (scalp, skull) or ``None`` (skull-stripped).
    """

    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    t1: np.ndarray
    head: np.ndarray | None = None

    def arrays(self) -> dict[str, np.ndarray]:
        """The maps by name (``head`` only when present)."""
        out = {"csf": self.csf, "gm": self.gm, "wm": self.wm, "t1": self.t1}
        if self.head is not None:
            out["head"] = self.head
        return out


@dataclass
class TumorDraw:
    """One drawn tumor on the anatomy's 1 mm grid (K, J, I).

    Attributes:
        compartments: uint8 map of :data:`NECROSIS`, :data:`ENHANCING`, :data:`EDEMA`,
            :data:`NON_ENHANCING` (0 elsewhere).
        texture: float32 multiplicative signal texture (1 outside the tumor).
        tissue: the anatomy after mass effect (tissue maps pushed away from the tumor).
        gains: (sequence, compartment code) -> factor on that compartment's nominal signal.
        donor_signal: sequence -> signal relative to normal white matter inside the tumor
            (transplanted real tumors); ``donor_weight`` says where it replaces the anatomy.
        info: what was drawn (kind, sizes in mm, volumes in mL, centres as KJI indices).
    """

    compartments: np.ndarray
    texture: np.ndarray
    tissue: TissueMaps
    gains: dict[tuple[str, int], float] = field(default_factory=dict)
    donor_signal: dict[str, np.ndarray] = field(default_factory=dict)
    donor_weight: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)


def inside_brain(tissue: TissueMaps) -> np.ndarray:
    """Boolean brain mask of an anatomy: tissue probabilities summing to more than 0.1 (the phantom's brain)."""
    return (tissue.csf + tissue.gm + tissue.wm) > 0.1


def labels_from_compartments(compartments: np.ndarray) -> np.ndarray:
    """BraTS labels (uint8 0/1/2/4) of a compartment map (any shape)."""
    table = np.zeros(256, np.uint8)
    for code, label in _BRATS_OF_COMPARTMENT.items():
        table[code] = label
    return table[compartments]


def fractal_noise(rng: np.random.Generator, shape: tuple[int, ...], scale_mm: float, octaves: int = 3) -> np.ndarray:
    """Zero-mean, unit-std multi-scale noise: Gaussian-smoothed white noise, octaves halving in scale.

    Args:
        rng: random generator (consumed).
        shape: array shape (K, J, I), 1 mm voxels.
        scale_mm: smoothing sigma of the coarsest octave (mm).
        octaves: number of octaves; octave ``o`` has sigma ``scale_mm / 2**o`` and weight ``0.5**o``.

    Returns:
        float32 array of ``shape``.
    """
    total = np.zeros(shape, np.float32)
    for o in range(octaves):
        layer = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32),
                                        max(scale_mm / 2 ** o, 0.6), mode="reflect")
        total += np.float32(0.5 ** o) * layer / max(float(layer.std()), 1e-6)
    total -= total.mean()
    return total / max(float(total.std()), 1e-6)


def _unit_vector(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / max(float(np.linalg.norm(v)), 1e-9)


def irregular_blob(rng: np.random.Generator, shape: tuple[int, int, int], center: np.ndarray, radius: float,
                   roughness: float, lobes: int = 1) -> np.ndarray:
    """Level function of an irregular, lobulated solid: > 0 inside, ~ signed distance (mm) to the surface.

    The solid is the union of ``lobes`` ellipsoids (the first centred on ``center`` with radius
    ``radius``, the others smaller and off-centre), its surface pushed in and out by fractal
    noise of amplitude ``roughness * radius``.

    Args:
        rng: random generator.
        shape: box shape (K, J, I), 1 mm voxels.
        center: centre as a (k, j, i) index of the box.
        radius: equivalent radius of the first lobe (mm).
        roughness: surface perturbation as a fraction of ``radius`` (0 = smooth).
        lobes: number of lobes (>= 1).

    Returns:
        float32 level array of ``shape``.
    """
    grid = np.indices(shape, dtype=np.float32)
    level = np.full(shape, -np.inf, np.float32)
    for lobe in range(max(1, lobes)):
        if lobe == 0:
            c, r = np.asarray(center, float), radius
        else:
            r = radius * rng.uniform(0.45, 0.8)
            c = np.asarray(center, float) + _unit_vector(rng) * radius * rng.uniform(0.5, 0.9)
        axes = rng.uniform(0.75, 1.3, size=3)
        rho = np.sqrt(sum(((grid[a] - c[a]) / axes[a]) ** 2 for a in range(3)))
        level = np.maximum(level, r - rho)
    if roughness > 0:
        level += np.float32(roughness * radius) * fractal_noise(rng, shape, max(radius * 0.45, 1.5))
    return level.astype(np.float32)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(np.argmax(sizes)) + 1


def split_rim(rng: np.random.Generator, core: np.ndarray, rim_mm: float, variation: float,
              necrotic: bool, gap: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split a tumor core into enhancing rim, necrosis and non-enhancing parts.

    The rim is the core's outer shell whose thickness ``rim_mm * (1 + variation * noise)`` (at
    least 0.8 mm) varies smoothly along the surface; without ``necrotic`` the whole core
    enhances (a solid enhancing mass). With ``gap`` a smooth patch covering roughly a fifth to a
    half of the rim does not enhance and becomes non-enhancing core.

    Args:
        rng: random generator.
        core: boolean core mask (K, J, I), 1 mm voxels.
        rim_mm: mean rim thickness (mm).
        variation: relative thickness variation (0-1).
        necrotic: whether the centre is necrotic.
        gap: whether the ring is incomplete.

    Returns:
        Boolean masks (enhancing, necrosis, non_enhancing), disjoint, their union ``core``.
    """
    depth = ndimage.distance_transform_edt(core)
    thickness = np.maximum(rim_mm * (1 + variation * fractal_noise(rng, core.shape, max(rim_mm * 2, 4.0), 2)), 0.8)
    enhancing = core & (depth <= thickness) if necrotic else core.copy()
    necrosis = core & ~enhancing
    non_enhancing = np.zeros_like(core)
    if gap and enhancing.any():
        patch = fractal_noise(rng, core.shape, 6.0, 2)
        cut = np.quantile(patch[enhancing], 1 - rng.uniform(0.2, 0.5))
        non_enhancing = enhancing & (patch > cut)
        enhancing &= ~non_enhancing
    return enhancing, necrosis, non_enhancing


def geodesic_edema(core: np.ndarray, wm: np.ndarray, gm: np.ndarray, reach_mm: float,
                   gm_speed: float = 0.15) -> np.ndarray:
    """Oedema that spreads from a core through the white matter (fast marching), not as a sphere.

    The front leaves the core's surface at speed ``wm + gm_speed * gm + 0.02`` (1 in pure white
    matter, ``gm_speed`` in grey matter, ~0.02 in CSF); oedema is where it arrives within
    ``reach_mm`` (its geodesic white-matter distance), outside the core.

    Args:
        core: boolean core mask (K, J, I), 1 mm voxels.
        wm: white-matter probability (K, J, I).
        gm: grey-matter probability (K, J, I).
        reach_mm: geodesic reach (mm); 0 gives no oedema.
        gm_speed: relative speed in grey matter.

    Returns:
        Boolean oedema mask, disjoint from ``core``.
    """
    if reach_mm <= 0 or not core.any():
        return np.zeros_like(core, dtype=bool)
    surface = core & ~ndimage.binary_erosion(core)
    speed = np.clip(wm + gm_speed * gm, 0, 1).astype(np.float32) + np.float32(0.02)
    marching = sitk.FastMarchingImageFilter()
    marching.SetTrialPoints([tuple(int(v) for v in p[::-1]) for p in np.argwhere(surface)])
    marching.SetStoppingValue(float(reach_mm) + 2.0)
    arrival = sitk.GetArrayFromImage(marching.Execute(sitk.GetImageFromArray(speed)))
    return (arrival <= reach_mm) & ~core


def radial_displacement(shape: tuple[int, int, int], center: np.ndarray, radius: float,
                        amplitude: float) -> np.ndarray:
    """Smooth outward displacement (mm) of a mass of ``radius`` pushing its surroundings by ``amplitude``.

    ``u(x) = amplitude * g(r) * (x - c) / r`` with ``g = r / radius`` inside the mass and a
    raised-cosine fall-off from 1 at the mass's edge to exactly 0 at ``radius + max(4 *
    amplitude, 15)`` mm, so the map ``x -> x - u(x)`` is smooth and invertible (|du/dr| < 0.4)
    and voxels farther away do not move at all.

    Args:
        shape: box shape (K, J, I), 1 mm voxels.
        center: centre (k, j, i) index.
        radius: radius of the mass (mm).
        amplitude: displacement at the mass's edge (mm), >= 0.

    Returns:
        float32 (3, K, J, I) displacement in voxels (= mm) along k, j, i.
    """
    grid = np.indices(shape, dtype=np.float32) - np.asarray(center, np.float32)[:, None, None, None]
    r = np.sqrt((grid ** 2).sum(0))
    far = radius + max(4.0 * amplitude, 15.0)
    t = np.clip((r - radius) / (far - radius), 0, 1)
    g = np.where(r < radius, r / max(radius, 1e-6), 0.5 * (1 + np.cos(np.pi * t)))
    return (amplitude * g / np.maximum(r, 1e-6) * grid).astype(np.float32)


def warp(array: np.ndarray, displacement: np.ndarray, order: int = 1) -> np.ndarray:
    """Backward-warp ``array`` (K, J, I): ``out(x) = array(x - displacement(x))`` (voxel units)."""
    coords = np.indices(array.shape, dtype=np.float32) - displacement
    return ndimage.map_coordinates(array, coords, order=order, mode="nearest").astype(array.dtype)


def _box(center: np.ndarray, half: float, shape: tuple[int, ...]) -> tuple[slice, ...]:
    lo = np.maximum(np.floor(np.asarray(center) - half).astype(int), 0)
    hi = np.minimum(np.ceil(np.asarray(center) + half).astype(int) + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def mass_effect(tissue: TissueMaps, center: np.ndarray, radius: float, amplitude: float) -> TissueMaps:
    """The anatomy pushed outwards from ``center`` (KJI index) by a mass of ``radius`` (mm).

    Only the box where the displacement is non-zero is resampled; everything else is the
    input, unchanged to the bit.
    """
    if amplitude <= 0:
        return tissue
    box = _box(center, radius + max(4.0 * amplitude, 15.0) + 2, tissue.wm.shape)
    local = np.asarray(center) - np.array([s.start for s in box])
    shape = tuple(s.stop - s.start for s in box)
    displacement = radial_displacement(shape, local, radius, amplitude)
    out = {}
    for name, array in tissue.arrays().items():
        moved = array.copy()
        moved[box] = warp(array[box], displacement)
        out[name] = moved
    return TissueMaps(**out)


def _texture(rng: np.random.Generator, compartments: np.ndarray, box: tuple[slice, ...],
             config: RealisticTumorConfig) -> np.ndarray:
    """Multiplicative texture: each compartment its own amplitude and grain; 1 outside the tumor."""
    texture = np.ones(compartments.shape, np.float32)
    local = compartments[box]
    field_ = np.ones(local.shape, np.float32)
    for code in (NECROSIS, ENHANCING, EDEMA, NON_ENHANCING):
        inside = local == code
        if inside.any():
            amplitude = rng.uniform(*config.texture)
            grain = rng.uniform(1.0, 5.0)
            field_[inside] = np.exp(amplitude * fractal_noise(rng, local.shape, grain, 2)[inside])
    texture[box] = ndimage.gaussian_filter(field_, 0.5)
    return texture


def _glioma_center(rng: np.random.Generator, wm: np.ndarray, depth_mm: float) -> np.ndarray:
    """A voxel at least ``depth_mm`` inside the white matter (fewer mm where the WM is thinner)."""
    depth = 2.0 * ndimage.distance_transform_edt(wm[::2, ::2, ::2] > 0.3)  # a 2 mm grid: 8x faster, close enough
    candidates = np.argwhere(depth >= min(depth_mm, float(depth.max()) * 0.6))
    return 2.0 * candidates[rng.integers(len(candidates))].astype(float)


def _junction_center(rng: np.random.Generator, tissue: TissueMaps, margin: float) -> np.ndarray:
    """A voxel at the grey-white junction (where metastases lodge), ``margin`` voxels inside the grid."""
    shape = np.asarray(tissue.wm.shape)
    junction = (tissue.wm > 0.25) & (tissue.gm > 0.25)
    candidates = np.argwhere(junction)
    inside = np.all((candidates >= margin) & (candidates < shape - margin), axis=1)
    pool = candidates[inside] if inside.any() else candidates
    if len(pool) == 0:
        return (shape - 1) / 2.0
    return pool[rng.integers(len(pool))].astype(float)


def _grow_core(rng: np.random.Generator, shape: tuple[int, int, int], center: np.ndarray, radius: float,
               roughness: float, lobes: int) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Boolean core mask on the full grid (largest component of an irregular blob) and its box."""
    box = _box(center, radius * 2.6 + 3, shape)
    local = center - np.array([s.start for s in box])
    level = irregular_blob(rng, tuple(s.stop - s.start for s in box), local, radius,
                           roughness, lobes)
    core = np.zeros(shape, bool)
    core[box] = _largest_component(level > 0)
    if not core.any():  # noise erased everything: fall back on the unperturbed centre voxel's ball
        core[tuple(int(round(v)) for v in center)] = True
        core = ndimage.binary_dilation(core, iterations=max(1, int(radius / 2)))
    return core, box


def _split_in_box(rng: np.random.Generator, core: np.ndarray, box: tuple[slice, ...], rim_mm: float,
                  variation: float, necrotic: bool, gap: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`split_rim` computed in ``box`` (which holds the core), returned as full-grid masks."""
    parts = split_rim(rng, core[box], rim_mm, variation, necrotic, gap)
    out = []
    for part in parts:
        full = np.zeros(core.shape, bool)
        full[box] = part
        out.append(full)
    return out[0], out[1], out[2]


def _edema_in_box(core: np.ndarray, tissue: TissueMaps, reach: float, gm_speed: float) -> np.ndarray:
    """:func:`geodesic_edema` computed in the core's box grown by the reach (full-grid mask)."""
    edema = np.zeros(core.shape, bool)
    if reach <= 0 or not core.any():
        return edema
    found = ndimage.find_objects(core.astype(np.uint8))[0]
    margin = int(np.ceil(reach)) + 3
    box = tuple(slice(max(0, s.start - margin), min(n, s.stop + margin)) for s, n in zip(found, core.shape))
    edema[box] = geodesic_edema(core[box], tissue.wm[box], tissue.gm[box], reach, gm_speed)
    return edema


def _glioma(rng: np.random.Generator, tissue: TissueMaps, config: RealisticTumorConfig,
            kind: str) -> tuple[np.ndarray, TissueMaps, dict[tuple[str, int], float], dict[str, Any]]:
    """Compartments of one glioblastoma or lower-grade glioma, the displaced anatomy, gains and info."""
    shape = tissue.wm.shape
    radius = rng.uniform(*config.core_radius_mm)
    roughness = rng.uniform(*config.roughness)
    lobes = int(rng.integers(config.lobes[0], config.lobes[1] + 1))
    center = _glioma_center(rng, tissue.wm, 0.5 * radius)
    amplitude = rng.uniform(*config.mass_effect_mm) * (radius / config.core_radius_mm[1]) ** 0.5
    if kind == "lower-grade":
        amplitude *= 0.5
    tissue = mass_effect(tissue, center, radius, amplitude)
    core, box = _grow_core(rng, shape, center, radius, roughness, lobes)
    compartments = np.zeros(shape, np.uint8)
    gains: dict[tuple[str, int], float] = {}
    info: dict[str, Any] = {"kind": kind, "core_radius_mm": float(radius), "roughness": float(roughness),
                            "lobes": lobes, "mass_effect_mm": float(amplitude),
                            "center_kji": [float(v) for v in center]}
    if kind == "glioblastoma":
        necrotic = bool(rng.random() < config.necrosis_probability)
        gap = bool(rng.random() < config.rim_gap_probability)
        rim = rng.uniform(*config.rim_mm)
        enhancing, necrosis, non_enhancing = _split_in_box(rng, core, box, rim, config.rim_variation, necrotic, gap)
        reach = rng.uniform(*config.edema_reach_mm)
        gains[("T1c", ENHANCING)] = float(rng.uniform(*config.enhancement))
        info.update({"rim_mm": float(rim), "necrosis": necrotic, "rim_gap": gap})
    else:
        enhancing = np.zeros(shape, bool)
        if rng.random() < config.lgg_enhancing_patch_probability:
            seed_voxel = np.argwhere(core)[rng.integers(int(core.sum()))]
            ball = np.zeros(shape, bool)
            ball[tuple(seed_voxel)] = True
            enhancing = ndimage.binary_dilation(ball, iterations=int(rng.integers(1, 4))) & core
        necrosis = np.zeros(shape, bool)
        non_enhancing = core & ~enhancing
        reach = rng.uniform(*config.lgg_edema_reach_mm)
        gains[("T1c", ENHANCING)] = float(rng.uniform(0.6, 0.75))   # faint, patchy
        gains[("T1c", NON_ENHANCING)] = float(rng.uniform(1.2, 1.6))  # 0.6-0.8 x WM: subtle on T1c
        gains[("T1", NON_ENHANCING)] = float(rng.uniform(1.1, 1.5))
    compartments[non_enhancing] = NON_ENHANCING
    compartments[necrosis] = NECROSIS
    compartments[enhancing] = ENHANCING
    gm_speed = rng.uniform(*config.edema_gm_speed)
    compartments[_edema_in_box(core, tissue, reach, gm_speed)] = EDEMA
    info.update({"edema_reach_mm": float(reach), "edema_gm_speed": float(gm_speed)})
    if kind == "glioblastoma" and rng.random() < config.satellite_probability:
        count = int(rng.integers(config.satellites[0], config.satellites[1] + 1))
        info["satellites"] = _satellites(rng, compartments, center, radius, reach, count)
    return compartments, tissue, gains, info


def _satellites(rng: np.random.Generator, compartments: np.ndarray, center: np.ndarray, radius: float,
                reach: float, count: int) -> int:
    """Add ``count`` small enhancing nodules (2-4 mm) 1.2-2 radii from the core, inside or near its oedema;
    returns how many landed inside the grid."""
    shape = compartments.shape
    added = 0
    for _ in range(count):
        where = center + _unit_vector(rng) * (radius * rng.uniform(1.2, 2.0) + rng.uniform(0, max(reach, 1) * 0.5))
        if np.any(where < 4) or np.any(where >= np.asarray(shape) - 4):
            continue
        r = rng.uniform(2.0, 4.0)
        box = _box(where, r + 2, shape)
        local = where - np.array([s.start for s in box])
        level = irregular_blob(rng, tuple(s.stop - s.start for s in box), local, r, 0.15)
        nodule = level > 0
        compartments[box][nodule] = ENHANCING
        added += int(nodule.any())
    return added


def _metastases(rng: np.random.Generator, tissue: TissueMaps, config: RealisticTumorConfig
                ) -> tuple[np.ndarray, TissueMaps, dict[tuple[str, int], float], dict[str, Any]]:
    """Compartments of 1-5 metastases at the grey-white junction, each with its own oedema."""
    shape = tissue.wm.shape
    count = int(rng.integers(config.metastasis_count[0], config.metastasis_count[1] + 1))
    compartments = np.zeros(shape, np.uint8)
    lesions = []
    for _ in range(count):
        radius = rng.uniform(*config.metastasis_radius_mm)
        center = _junction_center(rng, tissue, radius + 3)
        tissue = mass_effect(tissue, center, radius, rng.uniform(0.0, 0.3) * radius)
        core, box = _grow_core(rng, shape, center, radius, rng.uniform(0.05, 0.2), 1)
        ring = radius > 4.0 and rng.random() < 0.7
        enhancing, necrosis, _ = _split_in_box(rng, core, box, rng.uniform(1.0, 3.0), 0.4, ring, False)
        reach = radius * rng.uniform(*config.metastasis_edema_ratio)
        edema = _edema_in_box(core, tissue, reach, rng.uniform(*config.edema_gm_speed)) & (compartments == 0)
        compartments[edema] = EDEMA
        compartments[necrosis] = NECROSIS
        compartments[enhancing] = ENHANCING
        lesions.append({"radius_mm": float(radius), "ring": bool(ring), "edema_reach_mm": float(reach),
                        "center_kji": [float(v) for v in center]})
    gains = {("T1c", ENHANCING): float(rng.uniform(0.8, 1.15))}
    return compartments, tissue, gains, {"kind": "metastases", "lesions": lesions}


def draw_tumor(rng: np.random.Generator, tissue: TissueMaps, config: RealisticTumorConfig,
               kind: str | None = None) -> TumorDraw:
    """Draw one realistic tumor into ``tissue`` (the anatomy on its 1 mm KJI grid).

    Args:
        rng: random generator (the same state gives the same tumor).
        tissue: healthy anatomy; not modified (mass effect works on copies).
        config: the ranges to draw from.
        kind: one of :data:`TUMOR_KINDS`; ``None`` draws it with ``config.kind_weights``.

    Returns:
        A :class:`TumorDraw` whose ``info`` holds the kind, sizes and per-compartment volumes (mL).
    """
    if kind is None:
        weights = np.asarray(config.kind_weights, float)
        kind = TUMOR_KINDS[int(rng.choice(len(TUMOR_KINDS), p=weights / weights.sum()))]
    if kind not in TUMOR_KINDS:
        raise InputError(f"tumor kind {kind!r}: choose from {TUMOR_KINDS}")
    if kind == "metastases":
        compartments, moved, gains, info = _metastases(rng, tissue, config)
    else:
        compartments, moved, gains, info = _glioma(rng, tissue, config, kind)
    compartments[~inside_brain(moved)] = 0  # lobes, satellites or oedema reaching past the brain's surface
    found = ndimage.find_objects((compartments > 0).astype(np.uint8))
    box = found[0] if found else tuple(slice(0, 1) for _ in compartments.shape)
    texture = _texture(rng, compartments, box, config)
    info["volumes_ml"] = {name: float((compartments == code).sum()) / 1000.0 for name, code in
                          (("necrosis", NECROSIS), ("enhancing", ENHANCING), ("edema", EDEMA),
                           ("non_enhancing", NON_ENHANCING))}
    return TumorDraw(compartments, texture, moved, gains, info=info)
