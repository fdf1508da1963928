"""Rigid registration of one MR sequence onto another with SimpleITK.

Euler3D (rotation + translation), Mattes mutual information (or the correlation of gradient
magnitudes, ``metric="gradient-correlation"``), three resolution levels, centred initialisation (by
geometry or by image moments), deterministic sampling with a fixed seed. The quality figure is the
normalised mutual information (Studholme's ``(H(F) + H(M)) / H(F, M)``, 1 = independent, 2 = one
image determines the other) inside the fixed image's foreground, before and after registration, and
the correlation of gradient magnitudes there (edges in the same place give a high correlation whatever
the contrast).

Arrays are in (K, J, I) order, as SimpleITK gives them.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from medcnncad.errors import InputError
from medcnncad.io.itk_threads import itk_threads

__all__ = ["Registration", "FixedImage", "Grid", "RegistrationPair", "grids_match", "register_rigid", "resample_to",
           "foreground_mask", "normalised_mutual_information", "gradient_correlation", "MIN_GRADIENT_CORRELATION",
           "METRICS", "failure_text", "itk_failure"]

METRICS: tuple[str, ...] = ("mattes", "gradient-correlation")
"""What the optimizer maximises: Mattes mutual information of the intensities, or the correlation of the
images' gradient magnitudes (edges in the same place whatever the contrast; the quality figure's own measure)."""
GRADIENT_SIGMA_MM = 1.5

MIN_GRADIENT_CORRELATION = 0.25
"""Below this gradient-magnitude correlation after registration, the images are taken not to show
the same head in the same place (registration failed or different patients)."""


@dataclass(frozen=True)
class Registration:
    """The outcome of :func:`register_rigid`.

    Attributes:
        transform: maps fixed-space points to moving-space points (as ``sitk.Resample`` wants).
        metric: the optimizer's final metric at the finest level (negative Mattes mutual information or
            negative gradient-magnitude correlation: lower is better).
        nmi_before: normalised mutual information inside the fixed foreground, identity transform.
        nmi_after: the same after registration.
        gradient_correlation_before: Pearson correlation of gradient magnitudes inside the fixed
            foreground, identity transform.
        gradient_correlation_after: the same after registration.
        rotation_deg: rotation angle of the found transform (degrees).
        translation_mm: how far the transform moves the fixed image's centre (mm).
        seconds: wall-clock time of the registration.
        stop_condition: the optimizer's stop reason.
    """

    transform: sitk.Transform
    metric: float
    nmi_before: float
    nmi_after: float
    gradient_correlation_before: float
    gradient_correlation_after: float
    rotation_deg: float
    translation_mm: float
    seconds: float
    stop_condition: str


def grids_match(a: sitk.Image, b: sitk.Image, tol_mm: float = 1e-3) -> bool:
    """True when both images have the same size and the same voxel centres within ``tol_mm``.

    Spacing and origin are compared in mm; the direction cosines are compared through the
    position of the far corner voxel, so a tiny rotation over a large field of view counts.
    """
    if a.GetSize() != b.GetSize() or a.GetDimension() != b.GetDimension():
        return False
    far = [n - 1 for n in a.GetSize()]
    for index in ([0] * a.GetDimension(), far, [far[0], 0, 0], [0, far[1], 0], [0, 0, far[2]]):
        pa = np.array(a.TransformIndexToPhysicalPoint(index))
        pb = np.array(b.TransformIndexToPhysicalPoint(index))
        if np.linalg.norm(pa - pb) > tol_mm:
            return False
    return bool(np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol_mm))


def foreground_mask(image: sitk.Image) -> sitk.Image:
    """A uint8 head/brain foreground mask: Otsu threshold, largest component, holes filled."""
    smooth = sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), 2.0)
    mask = sitk.OtsuThreshold(smooth, 0, 1, 128)
    mask = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True) == 1
    mask = sitk.BinaryFillhole(sitk.Cast(mask, sitk.sitkUInt8))
    return sitk.Cast(mask, sitk.sitkUInt8)


def normalised_mutual_information(fixed: sitk.Image, moving_on_fixed: sitk.Image, mask: sitk.Image,
                                  bins: int = 64) -> float:
    """Studholme's NMI ``(H(F) + H(M)) / H(F, M)`` over the voxels of ``mask`` (1 to 2)."""
    inside = sitk.GetArrayViewFromImage(mask) > 0
    f = sitk.GetArrayViewFromImage(fixed)[inside].astype(np.float64)
    m = sitk.GetArrayViewFromImage(moving_on_fixed)[inside].astype(np.float64)
    return _nmi(_clip(f) if f.size >= _MIN_VOXELS else f, m, bins)


_MIN_VOXELS = 100
"""Fewer voxels inside the mask than this: no quality figure (NMI nan, correlation 0)."""


def _clip(x: np.ndarray) -> np.ndarray:
    """``x`` clipped to its 0.5th and 99.5th percentiles (the NMI's histogram range)."""
    lo, hi = np.percentile(x, [0.5, 99.5])
    return np.clip(x, lo, hi if hi > lo else lo + 1)


def _nmi(fixed_clipped: np.ndarray, moving: np.ndarray, bins: int) -> float:
    """Studholme's NMI of the fixed values inside the mask (already :func:`_clip`-ped) and the moving ones there."""
    if fixed_clipped.size < _MIN_VOXELS:
        return float("nan")
    joint, _, _ = np.histogram2d(fixed_clipped, _clip(moving), bins=bins)
    p = joint / joint.sum()

    def entropy(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    return (entropy(p.sum(1)) + entropy(p.sum(0))) / entropy(p.ravel())


def gradient_correlation(fixed: sitk.Image, moving_on_fixed: sitk.Image, mask: sitk.Image,
                         sigma_mm: float = 1.5) -> float:
    """Pearson correlation of the gradient magnitudes of two images on one grid, inside ``mask``."""
    inside = sitk.GetArrayViewFromImage(mask) > 0

    def gm(image: sitk.Image) -> np.ndarray:
        edges = sitk.GradientMagnitudeRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), sigma_mm)
        return sitk.GetArrayViewFromImage(edges)[inside].astype(np.float64)

    return _correlation(gm(fixed), gm(moving_on_fixed))


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two gradient-magnitude samples (the voxels inside the mask); 0 when one is flat."""
    if a.size < _MIN_VOXELS or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def _read_only(a: np.ndarray) -> np.ndarray:
    """``a``, no longer writeable: an array that registrations running side by side share."""
    a.flags.writeable = False
    return a


def _deep_copy(image: sitk.Image) -> sitk.Image:
    """A copy of ``image`` with its own ITK image and buffer (``sitk.Image(image)`` alone shares them until written)."""
    copy = sitk.Image(image)
    copy.MakeUnique()
    return copy


@dataclass(frozen=True)
class Grid:
    """A fixed image's grid without its voxels: what resampling onto it needs, and its centre (mm, LPS)."""

    size: tuple[int, ...]
    origin: tuple[float, ...]
    spacing: tuple[float, ...]
    direction: tuple[float, ...]
    centre: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Grid:
        """The grid of ``image``."""
        return cls(image.GetSize(), image.GetOrigin(), image.GetSpacing(), image.GetDirection(),
                   image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))

    def resample(self, moving: sitk.Image, transform: sitk.Transform) -> sitk.Image:
        """``moving`` on this grid through ``transform``: :func:`resample_to` onto the image the grid is of, to the
        bit, without handing that image to ITK."""
        return sitk.Resample(moving, self.size, transform, sitk.sitkLinear, self.origin, self.spacing, self.direction,
                             0.0, sitk.sitkFloat32)


class FixedImage:
    """The fixed side of registrations onto one image, made once for every moving image and try: the image as
    float32, its foreground mask (given, or :func:`foreground_mask`), the image's gradient magnitude, its grid, and
    what the quality figures read of them as read-only arrays (the mask as a boolean (K, J, I) array; the image's
    values and its gradient magnitudes inside the mask).

    Registrations running side by side share the arrays and the grid, never the SimpleITK images (:meth:`copy`):
    ITK writes pipeline state into a filter's input image, and ``sitk.GetArrayViewFromImage`` calls ``MakeUnique``,
    which swaps the image's buffer when another holder (an ``ImageRegistrationMethod`` keeping the mask) shares it.
    """

    def __init__(self, fixed: sitk.Image, fixed_mask: sitk.Image | None = None) -> None:
        self.image = sitk.Cast(fixed, sitk.sitkFloat32)
        self.mask = fixed_mask if fixed_mask is not None else foreground_mask(self.image)
        self.edges = _gradient_magnitude(self.image)
        self.grid = Grid.of(self.image)
        self.inside = _read_only(sitk.GetArrayViewFromImage(self.mask) > 0)
        values = sitk.GetArrayViewFromImage(self.image)[self.inside].astype(np.float64)
        self.values = _read_only(_clip(values) if values.size >= _MIN_VOXELS else values)
        self.edge_values = _read_only(sitk.GetArrayViewFromImage(self.edges)[self.inside].astype(np.float64))

    def copy(self, image: bool = True, edges: bool = True) -> FixedImage:
        """This fixed side for a registration that runs beside others: its own deep copy of the mask, and of the image
        and its gradient magnitude where asked (those not asked for stay shared: the job must not use them); the
        arrays and the grid are shared."""
        twin = copy.copy(self)
        twin.mask = _deep_copy(self.mask)
        if image:
            twin.image = _deep_copy(self.image)
        if edges:
            twin.edges = _deep_copy(self.edges)
        return twin


class RegistrationPair:
    """What every try of registering one image onto another shares, computed once: the fixed side
    (:class:`FixedImage`, which several moving images may share), the moving image as float32 and the quality figures
    before registration (the moving image on the fixed grid unmoved). The moving image's gradient magnitude (the
    gradient-correlation metric's input) is made when first asked for.

    Tries that run side by side each take their own :meth:`for_try` copy (a try hands its pair's images to ITK).
    """

    def __init__(self, fixed: sitk.Image | FixedImage, moving: sitk.Image,
                 fixed_mask: sitk.Image | None = None) -> None:
        self.side = fixed if isinstance(fixed, FixedImage) else FixedImage(fixed, fixed_mask)
        self.moving = sitk.Cast(moving, sitk.sitkFloat32)
        self.nmi_before, self.gc_before = self.figures_after(sitk.Transform())
        self._moving_edges: sitk.Image | None = None
        self._making = threading.Lock()

    def for_try(self, metric: str, initialiser: str) -> RegistrationPair:
        """This pair for one try (``metric``, ``initialiser`` as :func:`register_rigid` takes them) that runs beside
        other tries: the same figures and arrays, and its own deep copy of each image the try hands to ITK (the moving
        image and the fixed mask; the fixed image for mutual information or a start from the images' centres; the
        fixed gradient magnitude for the gradient correlation). The same results as the pair itself, to the bit."""
        twin = copy.copy(self)
        twin.side = self.side.copy(image=metric != "gradient-correlation" or initialiser != "identity",
                                   edges=metric == "gradient-correlation")
        twin.moving = _deep_copy(self.moving)
        twin._moving_edges = None if self._moving_edges is None else _deep_copy(self._moving_edges)
        twin._making = threading.Lock()
        return twin

    def moving_edges(self) -> sitk.Image:
        """The moving image's gradient magnitude (made once, also when tries ask at the same time)."""
        with self._making:
            if self._moving_edges is None:
                self._moving_edges = _gradient_magnitude(self.moving)
            return self._moving_edges

    def figures_after(self, transform: sitk.Transform) -> tuple[float, float]:
        """Normalised mutual information and gradient-magnitude correlation with ``transform`` applied (read from the
        fixed side's arrays: the fixed images themselves are not touched)."""
        after = self.side.grid.resample(self.moving, transform)
        after_edges = _gradient_magnitude(after)  # held while its view is read (a view does not keep it alive)
        inside = self.side.inside
        moved = sitk.GetArrayViewFromImage(after)[inside].astype(np.float64)
        edges = sitk.GetArrayViewFromImage(after_edges)[inside].astype(np.float64)
        return _nmi(self.side.values, moved, bins=64), _correlation(self.side.edge_values, edges)


def resample_to(moving: sitk.Image, fixed: sitk.Image, transform: sitk.Transform | None = None,
                label: bool = False) -> sitk.Image:
    """Resample ``moving`` onto ``fixed``'s grid through ``transform`` (fixed -> moving points).

    Args:
        moving: the image to move.
        fixed: defines the output grid.
        transform: default identity.
        label: nearest-neighbour interpolation and the moving pixel type (for label maps);
            otherwise B-spline-free linear interpolation into float32.
    """
    transform = transform if transform is not None else sitk.Transform()
    if label:
        return sitk.Resample(moving, fixed, transform, sitk.sitkNearestNeighbor, 0, moving.GetPixelID())
    return sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def _euler_parts(transform: sitk.Transform, centre: tuple[float, ...]) -> tuple[float, float]:
    """Rotation angle (deg) of a rigid transform and how far it moves ``centre`` (mm)."""
    p0 = np.array(transform.TransformPoint(tuple(centre)))
    matrix = np.column_stack([np.array(transform.TransformPoint(tuple(np.add(centre, e)))) - p0 for e in np.eye(3)])
    cos = np.clip((np.trace(matrix) - 1) / 2, -1.0, 1.0)
    return float(np.degrees(np.arccos(cos))), float(np.linalg.norm(p0 - np.asarray(centre)))


def register_rigid(fixed: sitk.Image, moving: sitk.Image, seed: int = 0, initialiser: str = "moments",
                   fixed_mask: sitk.Image | None = None, sampling: float = 0.02, bins: int = 50,
                   iterations: int = 100, threads: int = 1,
                   min_gradient_correlation: float = MIN_GRADIENT_CORRELATION, metric: str = "mattes",
                   pair: RegistrationPair | None = None) -> Registration:
    """Rigidly register ``moving`` onto ``fixed``.

    Args:
        fixed: reference image (its grid is the target).
        moving: image to align.
        seed: seed of the metric's random sampling (same seed, inputs and threads: same result).
            Any value, 0 included: SimpleITK reads a seed of 0 as "seed from the wall clock"
            (``sitkWallClock``), so ``seed + 1`` is what ITK gets.
        initialiser: "moments" (centres of mass), "geometry" (centres of the image boxes),
            "identity" (start from the scanner coordinates; best when both series come from one
            session) or "auto" (identity and moments both tried, the lower final Mattes metric kept;
            twice the time).
        fixed_mask: restrict the metric and the quality figures to this uint8 mask on ``fixed``'s
            grid (default: an Otsu foreground of ``fixed``).
        sampling: share of the voxels sampled per iteration at full resolution (random, seeded);
            16x and 4x that at the 4x and 2x shrunk levels.
        bins: Mattes histogram bins.
        iterations: per resolution level.
        threads: ITK threads of the registration (1 keeps the metric sums in a fixed order).
        min_gradient_correlation: raise below this gradient-magnitude correlation after registration.
        metric: "mattes" (mutual information of the intensities, ``bins`` bins) or "gradient-correlation"
            (correlation of gradient magnitudes smoothed by 1.5 mm: robust where a thick-slice sequence's
            intensity histogram misleads mutual information).
        pair: ``RegistrationPair(fixed, moving, fixed_mask)`` already made (several tries of one pair share it;
            the same result as without it).

    Returns:
        The :class:`Registration`.

    Raises:
        InputError: when the images are not 3D, the optimizer fails, or the result's gradient
            correlation is below ``min_gradient_correlation`` (e.g. sequences of different
            patients, or a registration stuck in a wrong minimum), naming the figures.
    """
    if fixed.GetDimension() != 3 or moving.GetDimension() != 3:
        raise InputError("register_rigid needs two 3D images")
    if metric not in METRICS:
        raise InputError(f"registration metric {metric!r}: choose {' or '.join(METRICS)}")
    pair = pair if pair is not None else RegistrationPair(fixed, moving, fixed_mask)
    if initialiser == "auto":  # both starts, keep the better final metric
        return _best_of_both(pair, seed, sampling, bins, iterations, threads, min_gradient_correlation, metric)
    return _register(pair, seed, initialiser, sampling, bins, iterations, threads, min_gradient_correlation, metric)


def _itk_seed(seed: int) -> int:
    """The seed handed to ITK: never 0, which SimpleITK takes as "seed from the wall clock"."""
    if seed < 0:
        raise InputError(f"registration seed {seed}: must be >= 0")
    return seed + 1


def itk_failure(exc: RuntimeError) -> InputError:
    """An ITK error met while registering, as the one-line InputError the chain raises (ITK's last line, cut)."""
    return InputError(f"rigid registration failed: {str(exc).strip().splitlines()[-1][:200]}")


def failure_text(reg: Registration, threshold: float) -> str:
    """The one-line reason a registration is refused: its quality figures against ``threshold``."""
    return _failure(reg.gradient_correlation_before, reg.gradient_correlation_after, reg.nmi_before, reg.nmi_after,
                    threshold)


def _failure(gc_before: float, gc_after: float, nmi_before: float, nmi_after: float, threshold: float) -> str:
    return (f"rigid registration failed: gradient-magnitude correlation after registration {gc_after:.3f} < "
            f"{threshold} (before {gc_before:.3f}; NMI {nmi_before:.3f} -> {nmi_after:.3f}): the sequences may "
            f"show different patients or the optimizer stopped in a wrong place")


def _best_of_both(pair: RegistrationPair, seed: int, sampling: float, bins: int, iterations: int, threads: int,
                  min_gradient_correlation: float, metric: str) -> Registration:
    """Identity and moments starts both tried; the lower final metric is kept."""
    start = time.perf_counter()
    tries = [_register(pair, seed, how, sampling, bins, iterations, threads, -2.0, metric)
             for how in ("identity", "moments")]
    best = min(tries, key=lambda r: r.metric)
    best = Registration(**{**best.__dict__, "seconds": time.perf_counter() - start})
    if best.gradient_correlation_after < min_gradient_correlation:
        raise InputError(_failure(best.gradient_correlation_before, best.gradient_correlation_after,
                                  best.nmi_before, best.nmi_after, min_gradient_correlation))
    return best


def _gradient_magnitude(image: sitk.Image) -> sitk.Image:
    return sitk.GradientMagnitudeRecursiveGaussian(image, GRADIENT_SIGMA_MM)


def _register(pair: RegistrationPair, seed: int, initialiser: str, sampling: float, bins: int, iterations: int,
              threads: int, min_gradient_correlation: float, metric: str = "mattes") -> Registration:
    """One registration from one start (see :func:`register_rigid`)."""
    start = time.perf_counter()
    m, mask = pair.moving, pair.side.mask  # the fixed image itself only where the metric or the start reads it
    if initialiser == "identity":
        euler = sitk.Euler3DTransform()
        euler.SetCenter(pair.side.grid.centre)
        initial: sitk.Transform = euler
    elif initialiser in ("moments", "geometry"):
        how = (sitk.CenteredTransformInitializerFilter.MOMENTS if initialiser == "moments"
               else sitk.CenteredTransformInitializerFilter.GEOMETRY)
        initial = sitk.CenteredTransformInitializer(pair.side.image, m, sitk.Euler3DTransform(), how)
    else:
        raise InputError(f"initialiser {initialiser!r}: choose auto, moments, geometry or identity")

    method = sitk.ImageRegistrationMethod()
    method.SetNumberOfThreads(threads)
    if metric == "gradient-correlation":
        method.SetMetricAsCorrelation()
    else:
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    # the same number of samples at every level (a share of the coarse level's few voxels is too noisy)
    method.SetMetricSamplingPercentagePerLevel([min(1.0, sampling * 16), min(1.0, sampling * 4), sampling],
                                               _itk_seed(seed))
    method.SetMetricFixedMask(mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-4, numberOfIterations=iterations,
                                                    relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=False)
    try:
        edges = metric == "gradient-correlation"
        with itk_threads(threads):  # the v4 metric's sums: in a fixed order
            transform = method.Execute(*((pair.side.edges, pair.moving_edges()) if edges else (pair.side.image, m)))
    except RuntimeError as exc:
        raise itk_failure(exc) from exc
    final = float(method.GetMetricValue())
    if not np.isfinite(final):
        raise InputError(f"rigid registration failed: metric {final}")
    nmi_before, gc_before = pair.nmi_before, pair.gc_before
    nmi_after, gc_after = pair.figures_after(transform)
    angle, shift = _euler_parts(transform, pair.side.grid.centre)
    seconds = time.perf_counter() - start
    if gc_after < min_gradient_correlation:
        raise InputError(_failure(gc_before, gc_after, nmi_before, nmi_after, min_gradient_correlation))
    return Registration(transform, final, nmi_before, nmi_after, gc_before, gc_after, angle, shift, seconds,
                        method.GetOptimizerStopConditionDescription())
