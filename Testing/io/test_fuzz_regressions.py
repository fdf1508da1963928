"""Inputs that once crashed the engine (found by scripts/fuzz.py or by probing): now one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medcnncad.errors import MedCNNCADError
from medcnncad.io.images import read_volume
from medcnncad.metrics.segmentation import check_label_image
from medcnncad.models.manifest import parse_manifest
from medcnncad.models.weights import build_network

HERE = Path(__file__).resolve().parents[1] / "fuzz_regressions"


@pytest.mark.parametrize("path", sorted((HERE / "manifest").glob("*.json")), ids=lambda p: p.name)
def test_manifest_regressions(path, tmp_path):
    raw = json.loads(path.read_text())
    with pytest.raises(MedCNNCADError):
        manifest = parse_manifest(raw, tmp_path)
        build_network(manifest.network_class, manifest.network_kwargs)


@pytest.mark.parametrize("path", sorted((HERE / "reader").glob("*.bin")), ids=lambda p: p.name)
@pytest.mark.parametrize("suffix", [".nii", ".nrrd"])
def test_reader_regressions(path, suffix, tmp_path):
    target = tmp_path / f"input{suffix}"
    target.write_bytes((b"NRRD0004\n" if suffix == ".nrrd" else b"") + path.read_bytes())
    try:
        check_label_image(read_volume(target), str(target))
    except MedCNNCADError as exc:
        assert str(target) in str(exc)


def test_corpus_is_not_empty():
    assert len(list(HERE.glob("*/*"))) >= 3
