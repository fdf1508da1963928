"""Agreement metrics (Dice, HD95, ASSD, lesion-wise detection) and classification calibration."""

from medcnncad.metrics.segmentation import StructureMetrics, compute_metrics, dice

__all__ = ["StructureMetrics", "compute_metrics", "dice"]
