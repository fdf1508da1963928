"""The models used when none is named (torch-free, so the command line and Slicer start fast)."""

__all__ = ["DEFAULT_MODEL", "DEMO_MODEL", "DEFAULT_GRADE_CLASSIFIER"]

DEFAULT_MODEL = "brats-robust-unet"
"""What `medcnncad segment`, `batch` and the Slicer module use without --model: the shipped model that takes
any subset of T1, T1c, T2, FLAIR and runs the clinical preprocessing chain (docs/models.md says how far it
is from a usable second reader on real patients)."""
DEMO_MODEL = "brats-demo-unet"
"""What `medcnncad demo` runs on its held-out phantom (fast; all four sequences)."""
DEFAULT_GRADE_CLASSIFIER = "brats-grade-densenet"
"""The lesion grade classifier used unless told otherwise."""
