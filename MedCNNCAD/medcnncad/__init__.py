"""MedCNNCAD engine: Qt-free segmentation, lesion analysis and metrics for 3D Slicer.

Research use only, not for diagnosis. Array axis order throughout is (K, J, I) =
(z, y, x), as SimpleITK's ``GetArrayFromImage`` and Slicer's ``arrayFromVolume``
return it; physical coordinates are millimetres.
"""

__version__ = "0.1.0"

INTENDED_USE = (
    "Research use only - not for diagnosis. MedCNNCAD is a computer-aided second reader; "
    "every result must be reviewed by a qualified radiologist."
)
