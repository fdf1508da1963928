"""The shipped sample case (``Resources/SampleData``, registered with Slicer's Sample Data), as images.

Benchmarks and the GPU check use it because it needs no template download; ``brats_size=True``
puts it on a BraTS-size grid (240 x 240 x 155 voxels of 1 mm, the sample's centre at the grid's).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from medcnncad.errors import InputError
from medcnncad.io.resources import resource_dir

__all__ = ["SEQUENCES", "load_sample_case"]

SEQUENCES = ("T1", "T1c", "T2", "FLAIR")


def load_sample_case(brats_size: bool = False) -> dict[str, sitk.Image]:
    """The four sample sequences as float32 images (held-out phantom seed 900000, cropped to the brain).

    Args:
        brats_size: resample (linear) onto a 240 x 240 x 155, 1 mm grid centred on the sample.

    Returns:
        Sequence name -> image (LPS geometry; arrays are (K, J, I)).

    Raises:
        InputError: the sample data are not installed.
    """
    folder = resource_dir("SampleData")
    if folder is None:
        raise InputError("Resources/SampleData not found: the sample case is not installed")
    images = {n: sitk.ReadImage(str(folder / f"MedCNNCADPhantom_{n}.nrrd"), sitk.sitkFloat32) for n in SEQUENCES}
    if not brats_size:
        return images
    first = images["T1"]
    center = np.asarray(first.TransformContinuousIndexToPhysicalPoint(
        [float(v) for v in (np.asarray(first.GetSize()) - 1) / 2]))
    grid = sitk.Image([240, 240, 155], sitk.sitkFloat32)
    grid.SetDirection(first.GetDirection())
    grid.SetOrigin(tuple(center - np.asarray(first.GetDirection()).reshape(3, 3) @ np.array([119.5, 119.5, 77.0])))
    return {n: sitk.Resample(img, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            for n, img in images.items()}
