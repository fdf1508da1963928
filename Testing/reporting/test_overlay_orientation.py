"""The overlay's orientation letters name the patient directions its slices really show."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from medcnncad.reporting.case_outputs import VIEW_EDGES, _display_slices

# letter -> (LPS axis, True when the direction is the axis' positive end): x+ = Left, y+ = Posterior, z+ = Superior
_DIRECTIONS = {"R": (0, False), "L": (0, True), "A": (1, False), "P": (1, True), "I": (2, False), "S": (2, True)}


def _slab(direction_letter: str, stored: tuple[float, ...]) -> sitk.Image:
    """A 21^3 volume stored with direction ``stored`` whose voxels in the outer 3 mm towards ``direction_letter``
    are 1, the rest 0."""
    image = sitk.Image(21, 21, 21, sitk.sitkUInt8)
    image.SetDirection(stored)
    image.SetOrigin((4.0, -7.0, 2.0))
    axis, positive = _DIRECTIONS[direction_letter]
    points = np.array([[image.TransformIndexToPhysicalPoint((i, j, k)) for i in range(21)]
                       for k in range(21) for j in range(21)]).reshape(21, 21, 21, 3)  # K, J, I, xyz
    along = points[..., axis]
    edge = along.max() - 3 if positive else along.min() + 3
    array = (along >= edge) if positive else (along <= edge)
    out = sitk.GetImageFromArray(array.astype(np.uint8))
    out.CopyInformation(image)
    return out


@pytest.mark.parametrize("stored", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1),
                                    (0, 0, 1, 1, 0, 0, 0, 1, 0)], ids=["LPS", "RAS", "sagittal-stored"])
def test_each_letter_sits_on_the_side_that_shows_that_direction(stored):
    for letter in _DIRECTIONS:
        lps = sitk.DICOMOrient(_slab(letter, stored), "LPS")  # what render_overlays shows
        for view, array in _display_slices(lps, (10, 10, 10)):
            left, right, top, bottom = VIEW_EDGES[view]
            rows, cols = np.nonzero(array)
            if letter in (left, right):
                assert cols.size and (cols.mean() < 10) == (letter == left), (view, letter)
            elif letter in (top, bottom):
                assert rows.size and (rows.mean() < 10) == (letter == top), (view, letter)
            else:  # the direction through the slice: the centre slice lies outside the 3 mm slab
                assert not array.any(), (view, letter)
