"""Synthetic data: BraTS-like phantoms on real anatomy templates, and augmentation pipelines."""
