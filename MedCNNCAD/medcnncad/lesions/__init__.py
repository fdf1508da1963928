"""Lesions: connected components with volume (mL), centroid (LPS/RAS mm) and diameter, and the
lesion filter (a logistic second stage removing false-positive components)."""
