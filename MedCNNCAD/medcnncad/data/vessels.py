"""Normal structures that enhance on post-contrast T1: dural sinuses, cortical veins, choroid plexus.

Real post-contrast T1 shows bright normal structures besides the tumor: the superior sagittal and
transverse sinuses along the brain's surface, cortical veins in the sulci and the choroid plexus in
the lateral ventricles. The templates the phantoms are drawn on (MNI152, Colin27) have none of them,
so a network trained only on phantoms has never seen a bright T1c structure that is *not* tumor, and
on patients it labels sinuses and veins enhancing tumor (found on unlabelled BraTS 2023 cases: a
33 mL false component along the falx and sinuses). :func:`draw_vessels` draws them as a tissue
fraction (label background) that :func:`medcnncad.data.phantom.make_realistic_phantom` renders with
:data:`VESSEL_SIGNAL`: bright on T1c, flow voids (dark) on T2 and mostly on FLAIR.

Arrays are (K, J, I) on the anatomy's 1 mm grid; positions along the axes come from the template's
geometry (LPS, mm), whose x = 0 plane is the mid-sagittal plane (MNI space).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from medcnncad.errors import InputError

__all__ = ["VesselConfig", "VESSEL_SIGNAL", "draw_vessels", "axis_positions_mm"]

# Signal of flowing blood / choroid plexus per sequence, in the phantom's units (white matter T1 = 1);
# T1c is drawn per case from VesselConfig.enhancement instead.
VESSEL_SIGNAL = {"T1": 0.55, "T2": 0.25, "FLAIR": 0.3}


@dataclass(frozen=True)
class VesselConfig:
    """Ranges the enhancing normal structures are drawn from (uniform; mm unless stated).

    Attributes:
        probability: share of cases that have them (the rest: none, as in the templates).
        enhancement: T1c signal relative to white matter (1.0); enhancing tumor is 1.1-1.8.
        sinus_radius_mm: half-thickness of the superior sagittal and transverse sinuses.
        cortical_veins: number of cortical veins (inclusive range).
        vein_length_mm: length of each cortical vein.
        vein_radius_mm: radius of each cortical vein.
        choroid_probability: probability of enhancing choroid plexus in each lateral ventricle.
        choroid_radius_mm: radius of each choroid plexus tuft.
        signal_jitter: relative standard deviation of the T1, T2 and FLAIR signals per case.
    """

    probability: float = 0.8
    enhancement: tuple[float, float] = (1.15, 1.9)
    sinus_radius_mm: tuple[float, float] = (1.5, 3.0)
    cortical_veins: tuple[int, int] = (6, 30)
    vein_length_mm: tuple[float, float] = (15.0, 70.0)
    vein_radius_mm: tuple[float, float] = (0.6, 1.5)
    choroid_probability: float = 0.7
    choroid_radius_mm: tuple[float, float] = (2.0, 4.0)
    signal_jitter: float = 0.25

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0 or not 0.0 <= self.choroid_probability <= 1.0:
            raise InputError(f"vessel probabilities {self.probability}, {self.choroid_probability}: must be in [0, 1]")


def axis_positions_mm(reference: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LPS x, y, z (mm) of every index along I, J and K of an axis-aligned image (x of each I, ...).

    Raises InputError for an oblique image (the templates are axis-aligned)."""
    direction = np.asarray(reference.GetDirection()).reshape(3, 3)
    if not np.allclose(np.abs(direction), np.eye(3), atol=1e-3):
        raise InputError("vessels: the anatomy's grid must be axis-aligned (a template), got an oblique one")
    origin, spacing = np.asarray(reference.GetOrigin()), np.asarray(reference.GetSpacing())
    size = reference.GetSize()
    x, y, z = (origin[a] + direction[a, a] * spacing[a] * np.arange(size[a]) for a in range(3))
    return x, y, z


def _ball_offsets(radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer (dk, dj, di) offsets of a ball and each one's partial-volume weight (1 inside, 0 beyond r + 0.5)."""
    r = int(np.ceil(radius + 0.5))
    grid = np.mgrid[-r:r + 1, -r:r + 1, -r:r + 1].reshape(3, -1).T
    weight = np.clip(radius + 0.5 - np.linalg.norm(grid, axis=1), 0.0, 1.0)
    keep = weight > 0
    return grid[keep], weight[keep]


def _paint(out: np.ndarray, points: np.ndarray, radius: float) -> None:
    """Balls of ``radius`` (voxels) at (K, J, I) ``points``, kept as the largest fraction per voxel."""
    if len(points) == 0:
        return
    offsets, weights = _ball_offsets(radius)
    idx = (np.round(points).astype(int)[:, None, :] + offsets[None]).reshape(-1, 3)
    w = np.broadcast_to(weights, (len(points), len(weights))).reshape(-1).astype(np.float32)
    inside = np.all((idx >= 0) & (idx < np.asarray(out.shape)), axis=1)
    np.maximum.at(out, tuple(idx[inside].T), w[inside])


def _vein_path(rng: np.random.Generator, depth: np.ndarray, gradient: list[np.ndarray], start: np.ndarray,
               length: int, target_depth: float) -> np.ndarray:
    """A persistent random walk of ``length`` 1 mm steps that stays about ``target_depth`` under the surface."""
    position, direction = start.astype(float), rng.standard_normal(3)
    points = []
    shape = np.asarray(depth.shape)
    for _ in range(length):
        direction = direction / (np.linalg.norm(direction) + 1e-9) + 0.35 * rng.standard_normal(3)
        direction /= np.linalg.norm(direction) + 1e-9
        index = tuple(np.clip(np.round(position).astype(int), 0, shape - 1))
        if depth[index] <= 0:
            break
        normal = np.array([g[index] for g in gradient])  # points inwards (depth grows)
        position = position + direction - normal * (depth[index] - target_depth) * 0.5
        points.append(position.copy())
    return np.asarray(points).reshape(-1, 3)


def draw_vessels(rng: np.random.Generator, brain: np.ndarray, csf: np.ndarray, reference: sitk.Image,
                 config: VesselConfig) -> np.ndarray:
    """A float32 (K, J, I) fraction of enhancing normal structures inside ``brain`` (all zero for the
    ``1 - config.probability`` share of cases).

    Args:
        rng: the case's random generator.
        brain: boolean (K, J, I) brain mask on the anatomy's 1 mm grid.
        csf: CSF fraction (K, J, I) on that grid (the ventricles hold the choroid plexus).
        reference: the grid's geometry (axis-aligned; x = 0 mid-sagittal).
        config: ranges.
    """
    out = np.zeros(brain.shape, np.float32)
    if rng.random() >= config.probability or not brain.any():
        return out
    x_i, y_j, z_k = axis_positions_mm(reference)
    depth = ndimage.distance_transform_edt(brain).astype(np.float32)  # mm from outside (1 mm grid)
    centre_k, centre_j, _ = np.argwhere(brain).mean(0)
    z_centre, y_centre = np.interp(centre_k, np.arange(len(z_k)), z_k), np.interp(centre_j, np.arange(len(y_j)), y_j)
    _sinuses(rng, out, brain, depth, x_i, y_j, z_k, (z_centre, y_centre), config)
    _cortical_veins(rng, out, brain, depth, config)
    _choroid_plexus(rng, out, csf, depth, x_i, y_j, y_centre, config)
    return np.where(brain, out, 0).astype(np.float32)


def _sinuses(rng: np.random.Generator, out: np.ndarray, brain: np.ndarray, depth: np.ndarray, x_i: np.ndarray,
             y_j: np.ndarray, z_k: np.ndarray, centre_mm: tuple[float, float], config: VesselConfig) -> None:
    """Superior sagittal sinus (the midline of the convexity, above the brain's centre, LPS z and y in mm, or
    behind it) and the two transverse sinuses (the posterior surface at the level of the torcula)."""
    radius = rng.uniform(*config.sinus_radius_mm)
    shell = brain & (depth <= 1.5 * radius)
    z_centre, y_centre = centre_mm
    midline = np.abs(x_i)[None, None, :] <= radius
    convexity = (z_k[:, None, None] >= z_centre) | (y_j[None, :, None] >= y_centre + 30)  # LPS: +y posterior
    sagittal = shell & midline & convexity
    torcula_z = z_centre - rng.uniform(5, 20)
    transverse = shell & (np.abs(z_k[:, None, None] - torcula_z) <= radius) & (y_j[None, :, None] >= y_centre + 25)
    sinus = (sagittal | transverse).astype(np.float32)
    out[...] = np.maximum(out, ndimage.gaussian_filter(sinus, 0.6))


def _cortical_veins(rng: np.random.Generator, out: np.ndarray, brain: np.ndarray, depth: np.ndarray,
                    config: VesselConfig) -> None:
    """Thin tubes that wander along the cortex about 1-2 mm under the brain's surface."""
    surface = np.argwhere(brain & (depth > 0.5) & (depth <= 2.5))
    if len(surface) == 0:
        return
    gradient = [g.astype(np.float32) for g in np.gradient(ndimage.gaussian_filter(depth, 1.0))]
    norms = np.sqrt(sum(g * g for g in gradient)) + 1e-6
    gradient = [g / norms for g in gradient]
    for _ in range(int(rng.integers(config.cortical_veins[0], config.cortical_veins[1] + 1))):
        start = surface[int(rng.integers(len(surface)))]
        length = int(rng.uniform(*config.vein_length_mm))
        path = _vein_path(rng, depth, gradient, start, length, rng.uniform(1.0, 2.0))
        _paint(out, path, rng.uniform(*config.vein_radius_mm))


def _choroid_plexus(rng: np.random.Generator, out: np.ndarray, csf: np.ndarray, depth: np.ndarray, x_i: np.ndarray,
                    y_j: np.ndarray, y_centre: float, config: VesselConfig) -> None:
    """A tuft in the atrium of each lateral ventricle (deep CSF behind the brain's centre ``y_centre``, LPS mm,
    either side of the midline)."""
    ventricle = (csf > 0.5) & (depth > 20) & (y_j[None, :, None] >= y_centre)
    for side in (-1, 1):
        if rng.random() >= config.choroid_probability:
            continue
        candidates = np.argwhere(ventricle & (side * x_i[None, None, :] > 5))
        if len(candidates) == 0:
            continue
        seed = candidates[int(rng.integers(len(candidates)))]
        tuft = np.zeros(out.shape, np.float32)
        _paint(tuft, seed[None].astype(float), rng.uniform(*config.choroid_radius_mm))
        out[...] = np.maximum(out, tuft * (csf > 0.3))
