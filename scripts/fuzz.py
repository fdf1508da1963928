"""Coverage-guided fuzzing (atheris) of the manifest parser, label-map checks, metrics and the
volume reader. Not part of CI: ``python scripts/fuzz.py TARGET SECONDS`` (``pip install atheris``).

Any exception other than the engine's own ``MedCNNCADError`` is a finding; atheris then
writes the crashing input as ``crash-*`` in the working directory. Findings that were fixed
are kept as regression inputs in ``Testing/fuzz_regressions/<target>/`` and replayed by
``Testing/io/test_fuzz_regressions.py``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[1]

with atheris.instrument_imports():
    import json

    import numpy as np

    from medcnncad.errors import MedCNNCADError
    from medcnncad.io.images import read_volume
    from medcnncad.metrics.segmentation import check_label_image, compute_metrics, structures_for_labels
    from medcnncad.models.manifest import parse_manifest

_TMP = Path(tempfile.mkdtemp(prefix="medcnncad-fuzz-"))


def manifest_target(data: bytes) -> None:
    """Arbitrary bytes as a manifest (JSON text; non-JSON is the parser's concern)."""
    try:
        doc = json.loads(data.decode("utf-8", errors="replace"))
    except (json.JSONDecodeError, RecursionError):
        return
    try:
        parse_manifest(doc, _TMP)
    except MedCNNCADError:
        pass


def metrics_target(data: bytes) -> None:
    """Two small label maps and a spacing decoded from the bytes."""
    fdp = atheris.FuzzedDataProvider(data)
    shape = tuple(fdp.ConsumeIntInRange(1, 9) for _ in range(3))
    n = int(np.prod(shape))
    pred = np.frombuffer(fdp.ConsumeBytes(n).ljust(n, b"\0"), dtype=np.uint8).reshape(shape) % 5
    ref = np.frombuffer(fdp.ConsumeBytes(n).ljust(n, b"\0"), dtype=np.uint8).reshape(shape) % 5
    spacing = [fdp.ConsumeFloatInRange(0.01, 10.0) for _ in range(3)]
    values = sorted(int(v) for v in np.union1d(pred, ref) if v)
    try:
        compute_metrics(pred, ref, spacing, structures_for_labels(values, {"all": values} if values else None))
    except MedCNNCADError:
        pass


def reader_target(data: bytes) -> None:
    """Arbitrary bytes behind an NRRD or NIfTI file name, through the engine's reader and label check."""
    for suffix in (".nrrd", ".nii"):
        path = _TMP / f"input{suffix}"
        path.write_bytes((b"NRRD0004\n" if suffix == ".nrrd" else b"") + data)
        try:
            check_label_image(read_volume(path), str(path))
        except MedCNNCADError:
            pass


TARGETS = {"manifest": manifest_target, "metrics": metrics_target, "reader": reader_target}


def _seed_corpus(target: str) -> Path:
    """A fresh corpus folder seeded with valid inputs (the demo manifest; small valid NRRD/NIfTI)."""
    import shutil

    import SimpleITK as sitk

    corpus = _TMP / f"corpus-{target}"
    corpus.mkdir()
    if target == "manifest":
        shutil.copy(ROOT / "Resources" / "Models" / "brats-demo-unet" / "manifest.json", corpus / "demo.json")
    elif target == "reader":
        image = sitk.GetImageFromArray(np.arange(24, dtype=np.uint8).reshape(2, 3, 4) % 3)
        for suffix in (".nrrd", ".nii"):
            sitk.WriteImage(image, str(_TMP / f"seed{suffix}"), False)
        data = (_TMP / "seed.nrrd").read_bytes()
        (corpus / "seed_nrrd").write_bytes(data[len(b"NRRD0004\n"):])
        (corpus / "seed_nii").write_bytes((_TMP / "seed.nii").read_bytes())
    return corpus


if __name__ == "__main__":
    target, seconds = sys.argv[1], int(sys.argv[2])
    atheris.Setup([sys.argv[0], str(_seed_corpus(target)), f"-max_total_time={seconds}", "-rss_limit_mb=4096",
                   *sys.argv[3:]], TARGETS[target])
    atheris.Fuzz()
