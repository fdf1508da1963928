"""The real patients of a realdata folder: moved to :mod:`medcnncad.data.real_cases` (the training data's tumor
transplant reads them too, and ``data`` sits below ``evaluation``); re-exported here for existing imports."""

from __future__ import annotations

from medcnncad.data.real_cases import (
    BRATS2013_MAP,
    BRATS2017_MAP,
    BRATS2021_MAP,
    BRATS_VALUES,
    CHANNELS,
    TCGA_FUSION_MAP,
    WHOLE_TUMOR_MAP,
    RealCase,
    describe_case,
    discover_real_cases,
    load_reference,
    map_labels,
    read_dicom_seg_on_grid,
)

__all__ = ["CHANNELS", "BRATS_VALUES", "BRATS2013_MAP", "BRATS2017_MAP", "BRATS2021_MAP", "TCGA_FUSION_MAP",
           "WHOLE_TUMOR_MAP", "RealCase", "describe_case", "discover_real_cases", "map_labels", "load_reference",
           "read_dicom_seg_on_grid"]
