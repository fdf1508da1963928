"""Lesion measurements on hand-built label maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import make_image
from helpers import blob_manifest_dict

from medcnncad.lesions.components import find_lesions, longest_axial_diameter_mm
from medcnncad.models.manifest import parse_manifest


def test_square_lesion_measurements(tmp_path):
    manifest = parse_manifest(blob_manifest_dict(), tmp_path)
    labels = np.zeros((6, 30, 30), np.uint8)
    labels[2:4, 5:15, 10:20] = 3          # 10 x 10 voxels in 2 axial slices
    labels[1, 25, 25] = 3                 # a second, single-voxel lesion
    image = make_image(labels, spacing=(0.5, 0.5, 3.0), origin=(100, 50, -10))
    prob = np.where(labels == 3, 0.9, 0.1).astype(np.float32)
    prob[2, 5, 10] = 0.6
    lesions = find_lesions(labels, image, manifest, {"blob": prob})
    blob = [x for x in lesions if x.structure == "blob"]
    assert len(blob) == 2 and len([x for x in lesions if x.structure == "any"]) == 2
    big = max(blob, key=lambda x: x.voxel_count)
    assert big.voxel_count == 200
    assert big.volume_ml == pytest.approx(200 * 0.5 * 0.5 * 3 / 1000)
    # centroid index (i, j, k) = (14.5, 9.5, 2.5) -> LPS = origin + index * spacing
    assert big.centroid_lps_mm == pytest.approx((100 + 14.5 * 0.5, 50 + 9.5 * 0.5, -10 + 2.5 * 3))
    assert big.centroid_ras_mm == pytest.approx((-(100 + 7.25), -(50 + 4.75), -2.5))
    assert big.longest_diameter_mm == pytest.approx(math.hypot(4.5, 4.5))
    assert big.bbox_min_ijk == (10, 5, 2) and big.bbox_max_ijk == (19, 14, 3)
    assert big.max_probability == pytest.approx(0.9)
    assert big.mean_probability == pytest.approx((199 * 0.9 + 0.6) / 200, rel=1e-6)
    small = min(blob, key=lambda x: x.voxel_count)
    assert small.longest_diameter_mm == 0.0


def test_diameter_uses_axial_plane_only():
    mask = np.zeros((20, 5, 5), bool)
    mask[:, 2, 2] = True  # long along z (superior-inferior), one voxel in-plane
    image = make_image(mask.astype(np.uint8), spacing=(1, 1, 2))
    assert longest_axial_diameter_mm(mask, image) == 0.0
    mask2 = np.zeros((3, 5, 40), bool)
    mask2[1, 2, 3:33] = True
    assert longest_axial_diameter_mm(mask2, make_image(mask2.astype(np.uint8), spacing=(0.7, 1, 2))) == \
        pytest.approx(29 * 0.7)


def test_diameter_with_axial_axis_permuted():
    """When the slice axis of the array is not K, the axial plane still follows the patient."""
    mask = np.zeros((5, 40, 6), bool)
    mask[2, 3:33, 3] = True  # along array axis J
    # direction: image axis j points superior -> the line is cranio-caudal, not in-plane
    image = make_image(mask.astype(np.uint8), direction=(1, 0, 0, 0, 0, 1, 0, 1, 0))
    assert longest_axial_diameter_mm(mask, image) == 0.0


def _brute_force_diameter(mask: np.ndarray, image) -> float:
    """Every pair of voxel centres within each axial slice (no hull, no edge shortcut), in mm."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    axis = 2 - int(np.argmax(np.abs(direction[2, :])))
    matrix = direction * np.asarray(image.GetSpacing())
    in_plane = [a for a in range(3) if a != 2 - axis]
    basis, _ = np.linalg.qr(matrix[:, in_plane])
    best = 0.0
    kji = np.argwhere(mask)
    for value in np.unique(kji[:, axis]):
        xy = (kji[kji[:, axis] == value][:, ::-1] @ matrix.T) @ basis
        best = max(best, float(np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1)).max()))
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_diameter_and_centroid_of_irregular_blobs_equal_brute_force(seed, tmp_path):
    """Edge voxels per slice give the same diameter as all voxel pairs; centroid = scipy's centre of mass."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    mask = ndimage.binary_opening(ndimage.gaussian_filter(rng.random((9, 30, 28)), 2) > 0.5)
    mask[4, 3:8, 20] = True  # a thin spur
    labelled, _ = ndimage.label(mask, np.ones((3, 3, 3)))
    mask = labelled == np.argmax(np.bincount(labelled.ravel())[1:]) + 1
    theta = 0.4  # oblique in-plane direction, anisotropic spacing
    direction = (np.cos(theta), -np.sin(theta), 0, np.sin(theta), np.cos(theta), 0, 0, 0, 1)
    image = make_image(mask.astype(np.uint8), spacing=(0.8, 1.1, 2.5), origin=(3, -7, 11), direction=direction)
    assert longest_axial_diameter_mm(mask, image) == pytest.approx(_brute_force_diameter(mask, image), rel=1e-12)
    manifest = parse_manifest(blob_manifest_dict(), tmp_path)
    found = find_lesions(np.where(mask, 3, 0).astype(np.uint8), image, manifest)
    (lesion,) = [x for x in found if x.structure == "blob"]
    centre_ijk = ndimage.center_of_mass(mask)[::-1]
    assert lesion.centroid_lps_mm == pytest.approx(image.TransformContinuousIndexToPhysicalPoint(centre_ijk), abs=1e-9)
    assert lesion.longest_diameter_mm == pytest.approx(_brute_force_diameter(mask, image), rel=1e-12)


def test_lesions_measured_in_the_occupied_box_equal_whole_grid_scipy(tmp_path):
    from scipy import ndimage

    manifest = parse_manifest(blob_manifest_dict(), tmp_path)
    rng = np.random.default_rng(3)
    labels = np.zeros((30, 40, 50), np.uint8)
    labels[(ndimage.gaussian_filter(rng.random(labels.shape), 2) > 0.56)] = 3
    labels[:, :, :7] = 0  # nothing near one face: the occupied box starts away from the origin
    labels[:4] = 0
    labels[12:20, 14:30, 20:44][rng.random((8, 16, 24)) > 0.2] = 3  # one large, ragged component
    assert labels.any()
    image = make_image(labels, spacing=(0.8, 0.9, 2.0), origin=(-20, 7, 3))
    prob = rng.random(labels.shape).astype(np.float32)
    found = sorted((x for x in find_lesions(labels, image, manifest, {"blob": prob}) if x.structure == "blob"),
                   key=lambda x: x.id)
    full, count = ndimage.label(labels == 3, structure=np.ones((3, 3, 3)))
    assert len(found) == count > 3
    sizes = [x.voxel_count for x in found]  # both the all-pairs path (<= 256 voxels) and the per-slice one
    assert min(sizes) <= 256 < max(sizes)
    for lesion, box in zip(found, ndimage.find_objects(full)):
        mask = full == lesion.id
        assert lesion.voxel_count == mask.sum()
        assert lesion.bbox_min_ijk == tuple(s.start for s in box[::-1])
        centroid = image.TransformContinuousIndexToPhysicalPoint(ndimage.center_of_mass(mask)[::-1])
        assert lesion.centroid_lps_mm == pytest.approx(centroid, abs=1e-9)
        assert lesion.mean_probability == pytest.approx(float(prob[mask].mean(dtype=np.float64)), rel=1e-9)
        assert lesion.longest_diameter_mm == pytest.approx(_brute_force_diameter(mask, image), rel=1e-12)
    assert find_lesions(np.zeros_like(labels), image, manifest) == []


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (1, 0, 0, 0, 0, 1, 0, 1, 0),
                                       (0, 0, 1, 1, 0, 0, 0, 1, 0)])
def test_diameter_of_large_blobs_equals_brute_force_whichever_array_axis_is_axial(direction):
    """The edge voxels of every slice are found in one erosion by an in-slice cross; whether the axial slices
    run across array axis K, J or I, the diameter is the all-pairs one (sagittal and coronal acquisitions)."""
    from scipy import ndimage

    rng = np.random.default_rng(7)
    mask = ndimage.gaussian_filter(rng.random((24, 26, 22)), 2) > 0.5
    mask[5:19, 4:20, 3:18] |= rng.random((14, 16, 15)) > 0.6  # ragged, with holes: edges inside slices too
    labelled, _ = ndimage.label(mask, np.ones((3, 3, 3)))
    mask = labelled == np.argmax(np.bincount(labelled.ravel())[1:]) + 1
    assert mask.sum() > 256  # the edge path, not the all-pairs one
    image = make_image(mask.astype(np.uint8), spacing=(0.8, 1.1, 2.5), origin=(3, -7, 11), direction=direction)
    assert longest_axial_diameter_mm(mask, image) == pytest.approx(_brute_force_diameter(mask, image), rel=1e-12)
