"""The models used when none is named (torch-free, so the command line and Slicer start fast)."""

__all__ = ["DEFAULT_MODEL", "DEFAULT_GRADE_CLASSIFIER"]

DEFAULT_MODEL = "brats-demo-unet"  # what `medcnncad segment`/`demo` and the Slicer module use without --model
DEFAULT_GRADE_CLASSIFIER = "brats-grade-densenet"  # the lesion grade classifier used unless told otherwise
