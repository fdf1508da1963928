"""The shipped phantom case in Slicer's Sample Data module (local, checksummed files; nothing is downloaded)."""

from __future__ import annotations

import json

from medcnncad.errors import InputError
from medcnncad.io.resources import resource_dir

__all__ = ["SAMPLE_NAME", "register_sample_data"]

SAMPLE_NAME = "MedCNNCADPhantom"
_CHANNELS = ["T1", "T1c", "T2", "FLAIR"]


def register_sample_data() -> None:
    """Register the phantom case (four volumes and the reference segmentation) with Sample Data, under the
    "MedCNNCAD" category; ``SampleData.downloadSamples("MedCNNCADPhantom")`` then loads it.

    Raises:
        InputError: ``Resources/SampleData`` is not installed.
    """
    import SampleData

    folder, icons = resource_dir("SampleData"), resource_dir("Icons")
    if folder is None or icons is None:
        raise InputError("Resources/SampleData or Resources/Icons not found: the sample case is not installed")
    files = json.loads((folder / f"{SAMPLE_NAME}.json").read_text())["files"]
    names = [*_CHANNELS, "reference"]
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="MedCNNCAD", sampleName=SAMPLE_NAME,
        uris=[(folder / files[n]["file"]).as_uri() for n in names],
        fileNames=[files[n]["file"] for n in names],
        nodeNames=[f"Phantom {n}" for n in _CHANNELS] + ["Phantom reference"],
        checksums=[f"SHA256:{files[n]['sha256']}" for n in names],
        loadFileType=["VolumeFile"] * len(_CHANNELS) + ["SegmentationFile"],
        thumbnailFileName=str(icons / "MedCNNCAD.png"))
