"""Evaluating models: held-out phantoms, case-probability calibration."""
