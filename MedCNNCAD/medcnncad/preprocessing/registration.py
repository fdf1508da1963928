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

import threading
import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from medcnncad.errors import InputError
from medcnncad.io.itk_threads import itk_threads

__all__ = ["Registration", "FixedImage", "RegistrationPair", "grids_match", "register_rigid", "resample_to",
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
    if f.size < 100:
        return float("nan")

    def clip(x: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(x, [0.5, 99.5])
        return np.clip(x, lo, hi if hi > lo else lo + 1)

    joint, _, _ = np.histogram2d(clip(f), clip(m), bins=bins)
    p = joint / joint.sum()

    def entropy(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    return (entropy(p.sum(1)) + entropy(p.sum(0))) / entropy(p.ravel())


def gradient_correlation(fixed: sitk.Image, moving_on_fixed: sitk.Image, mask: sitk.Image,
                         sigma_mm: float = 1.5) -> float:
    """Pearson correlation of the gradient magnitudes of two images on one grid, inside ``mask``."""
    inside = sitk.GetArrayViewFromImage(mask) > 0

    def gm(image: sitk.Image) -> sitk.Image:
        return sitk.GradientMagnitudeRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), sigma_mm)

    return _edge_correlation(gm(fixed), gm(moving_on_fixed), inside)


def _edge_correlation(fixed_edges: sitk.Image, moving_edges: sitk.Image, inside: np.ndarray) -> float:
    """Pearson correlation of two gradient-magnitude images inside the boolean (K, J, I) ``inside``."""
    a = sitk.GetArrayViewFromImage(fixed_edges)[inside].astype(np.float64)
    b = sitk.GetArrayViewFromImage(moving_edges)[inside].astype(np.float64)
    if a.size < 100 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


class FixedImage:
    """The fixed side of registrations onto one image, made once for every moving image and try: the image as
    float32, its foreground mask (given, or :func:`foreground_mask`), that mask as a boolean (K, J, I) array and the
    image's gradient magnitude. Read-only once made."""

    def __init__(self, fixed: sitk.Image, fixed_mask: sitk.Image | None = None) -> None:
        self.image = sitk.Cast(fixed, sitk.sitkFloat32)
        self.mask = fixed_mask if fixed_mask is not None else foreground_mask(self.image)
        self.inside = sitk.GetArrayViewFromImage(self.mask) > 0
        self.edges = _gradient_magnitude(self.image)


class RegistrationPair:
    """What every try of registering one image onto another shares, computed once: the fixed side
    (:class:`FixedImage`, which several moving images may share), the moving image as float32 and the quality figures
    before registration (the moving image on the fixed grid unmoved). The moving image's gradient magnitude (the
    gradient-correlation metric's input) is made when first asked for. Read-only once made: tries running side by side
    may share it.
    """

    def __init__(self, fixed: sitk.Image | FixedImage, moving: sitk.Image,
                 fixed_mask: sitk.Image | None = None) -> None:
        side = fixed if isinstance(fixed, FixedImage) else FixedImage(fixed, fixed_mask)
        self.fixed, self.mask, self.inside, self.fixed_edges = side.image, side.mask, side.inside, side.edges
        self.moving = sitk.Cast(moving, sitk.sitkFloat32)
        before = resample_to(self.moving, self.fixed, sitk.Transform())
        self.nmi_before = normalised_mutual_information(self.fixed, before, self.mask)
        self.gc_before = _edge_correlation(self.fixed_edges, _gradient_magnitude(before), self.inside)
        self._moving_edges: sitk.Image | None = None
        self._making = threading.Lock()

    def moving_edges(self) -> sitk.Image:
        """The moving image's gradient magnitude (made once, also when tries ask at the same time)."""
        with self._making:
            if self._moving_edges is None:
                self._moving_edges = _gradient_magnitude(self.moving)
            return self._moving_edges

    def figures_after(self, transform: sitk.Transform) -> tuple[float, float]:
        """Normalised mutual information and gradient-magnitude correlation with ``transform`` applied."""
        after = resample_to(self.moving, self.fixed, transform)
        return (normalised_mutual_information(self.fixed, after, self.mask),
                _edge_correlation(self.fixed_edges, _gradient_magnitude(after), self.inside))


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
    f, m, mask = pair.fixed, pair.moving, pair.mask
    if initialiser == "identity":
        euler = sitk.Euler3DTransform()
        euler.SetCenter(f.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in f.GetSize()]))
        initial: sitk.Transform = euler
    elif initialiser in ("moments", "geometry"):
        how = (sitk.CenteredTransformInitializerFilter.MOMENTS if initialiser == "moments"
               else sitk.CenteredTransformInitializerFilter.GEOMETRY)
        initial = sitk.CenteredTransformInitializer(f, m, sitk.Euler3DTransform(), how)
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
            transform = method.Execute(*((pair.fixed_edges, pair.moving_edges()) if edges else (f, m)))
    except RuntimeError as exc:
        raise itk_failure(exc) from exc
    final = float(method.GetMetricValue())
    if not np.isfinite(final):
        raise InputError(f"rigid registration failed: metric {final}")
    nmi_before, gc_before = pair.nmi_before, pair.gc_before
    nmi_after, gc_after = pair.figures_after(transform)
    angle, shift = _euler_parts(transform, f.TransformContinuousIndexToPhysicalPoint(
        [(n - 1) / 2 for n in f.GetSize()]))
    seconds = time.perf_counter() - start
    if gc_after < min_gradient_correlation:
        raise InputError(_failure(gc_before, gc_after, nmi_before, nmi_after, min_gradient_correlation))
    return Registration(transform, final, nmi_before, nmi_after, gc_before, gc_after, angle, shift, seconds,
                        method.GetOptimizerStopConditionDescription())
