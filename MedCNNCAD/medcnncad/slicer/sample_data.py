"""The shipped phantom case in Slicer's Sample Data module (local, checksummed files; nothing is downloaded)."""

from __future__ import annotations

import json
import pathlib

__all__ = ["SAMPLE_NAME", "sample_data_folder", "register_sample_data"]

SAMPLE_NAME = "MedCNNCADPhantom"
_CHANNELS = ["T1", "T1c", "T2", "FLAIR"]


def sample_data_folder(module_dir: pathlib.Path) -> pathlib.Path:
    """``Resources/SampleData`` next to the module file (installed extension) or at the top of the source tree."""
    folder = module_dir / "Resources" / "SampleData"
    return folder if (folder / f"{SAMPLE_NAME}.json").exists() else module_dir.parent / "Resources" / "SampleData"


def register_sample_data(module_dir: pathlib.Path) -> None:
    """Register the phantom case (four volumes and the reference segmentation) with Sample Data, under the
    "MedCNNCAD" category; ``SampleData.downloadSamples("MedCNNCADPhantom")`` then loads it."""
    import SampleData

    folder = sample_data_folder(module_dir)
    files = json.loads((folder / f"{SAMPLE_NAME}.json").read_text())["files"]
    names = [*_CHANNELS, "reference"]
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="MedCNNCAD", sampleName=SAMPLE_NAME,
        uris=[(folder / files[n]["file"]).as_uri() for n in names],
        fileNames=[files[n]["file"] for n in names],
        nodeNames=[f"Phantom {n}" for n in _CHANNELS] + ["Phantom reference"],
        checksums=[f"SHA256:{files[n]['sha256']}" for n in names],
        loadFileType=["VolumeFile"] * len(_CHANNELS) + ["SegmentationFile"],
        thumbnailFileName=str(module_dir / "Resources" / "Icons" / "MedCNNCAD.png"))
