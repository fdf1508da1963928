"""Lesion grade classification: a 3D CNN on a patch around each lesion, calibrated probabilities."""
