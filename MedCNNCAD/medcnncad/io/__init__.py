"""Reading and writing images: volumes (NIfTI, NRRD, MHA, DICOM series), Slicer ``.seg.nrrd``.

Arrays are (K, J, I) = (z, y, x), as SimpleITK and Slicer's ``arrayFromVolume`` give them;
images carry LPS geometry (origin and spacing in mm).
"""

from medcnncad.io.dicom_series import SeriesInfo, list_series, select_series, series_files
from medcnncad.io.images import (
                                 UINT8_SCALE,
                                 atomic_path,
                                 available_memory_bytes,
                                 check_finite,
                                 geometry_text,
                                 read_volume,
                                 same_space,
                                 signals_deferred,
                                 write_image,
                                 write_probability_map,
)
from medcnncad.io.segfile import segment_metadata, terminology_entry, write_seg_nrrd

__all__ = ["SeriesInfo", "list_series", "select_series", "series_files", "UINT8_SCALE", "atomic_path",
           "available_memory_bytes", "check_finite", "geometry_text", "read_volume", "same_space", "signals_deferred",
           "write_image", "write_probability_map", "segment_metadata", "terminology_entry", "write_seg_nrrd"]
