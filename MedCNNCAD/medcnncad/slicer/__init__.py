"""The Slicer side: the module's Qt-free Logic, the MRML adaptor, the inference worker, headless rendering.

Modules here import ``slicer`` (MRML, from Slicer or ``slicer-core``) where they need it; nothing
below this package does.
"""
