"""A real, headless Slicer MRML scene from the slicer-core package (never a mock).

Recipe from shared/NOTES.md: application logic, colour logic with default colour nodes,
module logics for Volumes, Segmentations, Subject Hierarchy and Sequences, default slice views.
"""

from __future__ import annotations

import hashlib

import numpy as np
import slicer
import slicer.util

from medcnncad.slicer.headless import new_scene  # noqa: F401 - re-exported for the tests


def volume_from_image(image, name: str):
    """Add a SimpleITK image as a scalar volume node (KJI array, full IJK-to-RAS)."""
    import SimpleITK as sitk

    from medcnncad.slicer.adaptor import ijk_to_ras_matrix

    return slicer.util.addVolumeFromArray(sitk.GetArrayFromImage(image), ijkToRAS=ijk_to_ras_matrix(image),
                                          name=name)


def scene_fingerprint(scene) -> dict[str, str]:
    """Node ID -> hash of its name, attributes and (for volumes/segmentations) voxels."""
    out = {}
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        digest = hashlib.sha256(f"{node.GetClassName()}|{node.GetName()}".encode())
        for key in sorted(node.GetAttributeNames() or ()):
            digest.update(f"{key}={node.GetAttribute(key)}".encode())
        if node.IsA("vtkMRMLScalarVolumeNode") and node.GetImageData() is not None:
            digest.update(np.ascontiguousarray(slicer.util.arrayFromVolume(node)).tobytes())
        if node.IsA("vtkMRMLSegmentationNode"):
            seg = node.GetSegmentation()
            for i in range(seg.GetNumberOfSegments()):
                digest.update(seg.GetNthSegmentID(i).encode())
        out[node.GetID()] = digest.hexdigest()
    return out
