"""Synthetic data: BraTS-like phantoms on real anatomy templates (classic and realistic tumors, real tumors
transplanted into templates), the real cases' layouts, and augmentation pipelines."""
