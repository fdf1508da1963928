"""Hand-made case output folders for the library tests: report.json with a retrieval block and thumbnails."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medcnncad.retrieval.versions import DESCRIPTOR_VERSION

MODEL = {"id": "demo", "version": "1.0.0", "weights_sha256": "a" * 64}
NAMES = ["volume", "roundness"]


def fake_case(folder: Path, lesions: list[tuple[float, float, list[float] | None]], model: dict | None = None,
              version: str = DESCRIPTOR_VERSION, given_inputs: list[str] | None = None) -> Path:
    """A case folder whose lesions have radiomics (volume, roundness) and a deep vector each; lesion ids 1..n,
    volume_ml = the first radiomics value. ``given_inputs``: the sequences the run was given (None: not recorded,
    as in reports written before they were)."""
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for index, (volume, roundness, deep) in enumerate(lesions, start=1):
        items.append({"lesion_id": index, "structure": "WT", "volume_ml": volume,
                      "radiomics": {"volume": volume, "roundness": roundness}, "deep": deep})
        sitk.WriteImage(sitk.GetImageFromArray(np.full((8, 8), index * 20, np.uint8)),
                        str(folder / f"lesion_{index}.png"))
    report = {"model": dict(model or MODEL), "lesions": [],
              "retrieval": {"descriptor_version": version, "structure": "WT", "radiomics_names": NAMES,
                            "lesions": items}}
    if given_inputs is not None:
        report["retrieval"]["given_inputs"] = list(given_inputs)
    (folder / "report.json").write_text(json.dumps(report))
    return folder
