"""Clinical-style re-acquisition of a volume: thick 2D slices and a rigid misalignment.

Clinical series rarely come as BraTS data do (co-registered, 1 mm): FLAIR and T2 are often 2D acquisitions with
5 mm slices, and no two series are exactly aligned. :func:`reacquire` simulates both on a real or synthetic
volume so that the engine's chain (registration, resampling back) can be measured on them
(``research/clinical_degradation.py``, the registration tests).

Images are SimpleITK images (LPS, mm); rotations in degrees about the image centre, shifts in mm.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

__all__ = ["reacquire", "FWHM_TO_SIGMA"]

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))  # a Gaussian's sigma from its full width at half maximum


def reacquire(image: sitk.Image, slice_mm: float = 5.0, in_plane_mm: float = 0.9,
              rotation_deg: Sequence[float] = (0.0, 0.0, 0.0), shift_mm: Sequence[float] = (0.0, 0.0, 0.0)
              ) -> sitk.Image:
    """``image`` acquired again as axial slices ``slice_mm`` thick (the image's third axis) with ``in_plane_mm``
    pixels, through a rigid motion M of ``rotation_deg`` (about x, y, z, degrees) and ``shift_mm`` about the image
    centre: the new image at point p shows the old one at M(p), so the head appears moved by M's inverse, and a
    registration of the new image onto the old one should find M's inverse (fixed -> moving points).

    The slice profile is a Gaussian of full width at half maximum ``slice_mm`` along the third axis; the new grid
    keeps the image's origin and direction and covers its extent; linear interpolation into float32. Where the
    moved head leaves the old field of view the new image takes the old one's corner value (its background: 0,
    or a z-scored volume's constant), so that a constant background stays constant.
    """
    profiled = sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32),
                                               [1e-3, 1e-3, slice_mm * FWHM_TO_SIGMA])
    extent = np.array(image.GetSize()) * np.array(image.GetSpacing())
    spacing = (in_plane_mm, in_plane_mm, slice_mm)
    grid = sitk.Image([max(1, int(np.floor(e / s))) for e, s in zip(extent, spacing)], sitk.sitkFloat32)
    grid.SetSpacing(spacing)
    grid.SetDirection(image.GetDirection())
    grid.SetOrigin(image.GetOrigin())
    motion = sitk.Euler3DTransform()
    motion.SetCenter(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
    motion.SetRotation(*np.deg2rad(np.asarray(rotation_deg, float)))
    motion.SetTranslation(tuple(float(v) for v in shift_mm))
    background = float(sitk.GetArrayViewFromImage(image)[0, 0, 0])
    return sitk.Resample(profiled, grid, motion, sitk.sitkLinear, background, sitk.sitkFloat32)
