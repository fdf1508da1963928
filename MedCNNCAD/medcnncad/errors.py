"""Errors the engine raises for bad input, bad models and refused trust.

Every error names the offending file or value in its message, so the CLI can
print it as one line and exit with code 2, and the Slicer module can show it
in one message box.
"""

from __future__ import annotations

__all__ = ["RunCancelled", "MedCNNCADError", "InputError", "ModelError", "TrustError"]


class MedCNNCADError(ValueError):
    """Base class of every error that is the user's input, not a bug."""


class InputError(MedCNNCADError):
    """An input volume, reference or output location is unusable."""


class ModelError(MedCNNCADError):
    """A model manifest, bundle or weights file is invalid or was tampered with."""


class TrustError(ModelError):
    """A MONAI bundle contains executable expressions and was not trusted."""


class RunCancelled(MedCNNCADError):
    """A run the user cancelled; nothing was written or added to the scene."""
