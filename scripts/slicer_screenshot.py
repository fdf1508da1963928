"""Render docs/slicer_screenshot.png: the demo model's result on the sample case, through
Slicer's slice pipeline on the headless slicer-core scene (``make screenshot``)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(out: Path = ROOT / "docs" / "slicer_screenshot.png") -> Path:
    import slicer

    from medcnncad.slicer.headless import application_logic, new_scene
    from medcnncad.slicer.logic import SecondReaderLogic
    from medcnncad.slicer.render import render_slice_views

    new_scene()
    volumes = {n: slicer.modules.volumes.logic().AddArchetypeVolume(
        str(ROOT / "Resources" / "SampleData" / f"MedCNNCADPhantom_{n}.nrrd"), f"Phantom {n}")
        for n in ("T1", "T1c", "T2", "FLAIR")}
    run = SecondReaderLogic().segment(volumes, model="demo", device="cpu")
    largest = max(run.lesions, key=lambda les: les.voxel_count)
    return render_slice_views(volumes["T1c"], run.segmentation, out, largest.centroid_ras_mm,
                              app_logic=application_logic())


if __name__ == "__main__":
    print(main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "slicer_screenshot.png"))
