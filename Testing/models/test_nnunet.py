"""nnU-Net v2 model folders: described from their JSON, refused untrusted, and then equal to
nnU-Net's own predictor (labels identical, probabilities within 1e-4), folds ensembled.

The models are built here by nnunetv2's own planner, preprocessor and trainer
(``make_nnunet_model.py``, a subprocess: a minute or two of CPU), once per session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medcnncad.errors import ModelError, TrustError
from medcnncad.inference.segmenter import Segmenter
from medcnncad.models.nnunet import describe_nnunet, find_trainer, nnunet_hash
from medcnncad.models.registry import describe_model, load_model, model_format, model_key
from medcnncad.models.trust import add_trusted_hash

nnunetv2 = pytest.importorskip("nnunetv2")
pytestmark = pytest.mark.slow  # the models are trained here by nnU-Net (~2 min of CPU)
HERE = Path(__file__).parent


def _build(tmp_path_factory, *flags: str) -> Path:
    out = tmp_path_factory.mktemp("nnunet")
    env = dict(os.environ, PYTHONIOENCODING="utf-8")  # nnU-Net prints non-ASCII progress bars
    done = subprocess.run([sys.executable, str(HERE / "make_nnunet_model.py"), str(out), *flags],
                          capture_output=True, encoding="utf-8", errors="replace", env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def labels_model(tmp_path_factory) -> Path:
    return _build(tmp_path_factory)


@pytest.fixture(scope="module")
def regions_model(tmp_path_factory) -> Path:
    return _build(tmp_path_factory, "--regions")


def _case(model: Path, index: int = 0) -> dict[str, sitk.Image]:
    raw = model.parents[2] / "raw" / model.parent.name / "imagesTr"
    return {"T1c": sitk.ReadImage(str(raw / f"ph_{index:03d}_0000.nii.gz")),
            "FLAIR": sitk.ReadImage(str(raw / f"ph_{index:03d}_0001.nii.gz"))}


def _reference(model: Path, images: dict[str, sitk.Image], mirror: bool) -> tuple[np.ndarray, np.ndarray]:
    """nnU-Net's own predictor, initialised from the folder as nnUNetv2_predict does (all folds)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(use_mirroring=mirror, perform_everything_on_device=False,
                                device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), use_folds=None)
    stack = np.stack([sitk.GetArrayFromImage(images[c]) for c in ("T1c", "FLAIR")]).astype(np.float32)
    spacing = list(images["T1c"].GetSpacing())[::-1]
    seg, probs = predictor.predict_single_npy_array(stack, {"spacing": spacing}, None, None, True)
    return seg, probs


def test_folder_is_described_from_its_json_without_opening_weights(labels_model):
    assert model_format(labels_model) == "nnunet"
    manifest = describe_model(labels_model)
    assert [c.name for c in manifest.inputs] == ["T1c", "FLAIR"]
    assert [(c.name, c.value) for c in manifest.postprocessing.channels] == [("background", 0), ("tumor", 1),
                                                                             ("core", 2)]
    assert manifest.postprocessing.activation == "softmax"
    assert manifest.raw["folds"] == ["0", "1"] and manifest.raw["format"] == "nnunet"
    assert "nnU-Net v2" in manifest.name and "3d_fullres" in manifest.name
    assert model_key(manifest) == str(labels_model)  # named again by its folder, like a bundle


def test_region_model_paints_regions_in_nnunet_order(regions_model):
    manifest = describe_nnunet(regions_model)
    assert manifest.postprocessing.activation == "sigmoid"
    assert [(c.name, c.value) for c in manifest.postprocessing.channels] == [("whole_tumor", 1), ("tumor_core", 2)]
    # painted values: whole tumor = {1, 2} (1 is painted first, 2 over it), tumor core = {2}
    assert {r.name: r.labels for r in manifest.regions} == {"whole_tumor": (1, 2), "tumor_core": (2,)}


def test_pickled_checkpoint_needs_trust_keyed_by_hash(labels_model):
    with pytest.raises(TrustError, match="full pickles"):
        load_model(labels_model)
    add_trusted_hash(nnunet_hash(labels_model))
    assert load_model(labels_model).source == "nnunet"


def test_tensor_only_checkpoint_needs_no_trust(labels_model, tmp_path):
    folder = tmp_path / labels_model.name
    (folder / "fold_0").mkdir(parents=True)
    for name in ("dataset.json", "plans.json"):
        (folder / name).write_text((labels_model / name).read_text())
    full = torch.load(labels_model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    safe = {"network_weights": full["network_weights"], "trainer_name": full["trainer_name"],
            "init_args": {"configuration": full["init_args"]["configuration"]},
            "inference_allowed_mirroring_axes": full["inference_allowed_mirroring_axes"]}
    torch.save(safe, folder / "fold_0" / "checkpoint_final.pth")
    model = load_model(folder)
    assert model.manifest.raw["folds"] == ["0"] and model.manifest.raw["trainer"] == "nnUNetTrainer"


@pytest.mark.parametrize("mirror", [False, True])
def test_engine_equals_nnunet_predictor_with_folds_ensembled(labels_model, mirror):
    images = _case(labels_model, 1)
    result = Segmenter(load_model(labels_model, trust=True), device="cpu").run(images, tta=mirror)
    seg, probs = _reference(labels_model, images, mirror)
    np.testing.assert_array_equal(result.label_map, seg)
    assert set(np.unique(seg)) >= {0, 1}  # the comparison is not between two empty maps
    for channel in (1, 2):
        name = ["background", "tumor", "core"][channel]
        np.testing.assert_allclose(result.probabilities[name], probs[channel], atol=1e-4)
    assert result.execution_policy["runner"] == "the model format's own predictor (nnunet)"
    assert result.lesions, "downstream features run on its output: a lesion table"


def test_one_fold_differs_from_the_ensemble(labels_model):
    """The two folds hold different weights, so the ensemble is not one fold twice."""
    from medcnncad.models.nnunet import load_nnunet

    images = _case(labels_model, 2)
    both = Segmenter(load_nnunet(labels_model, trust=True), device="cpu").run(images)
    one = Segmenter(load_nnunet(labels_model, trust=True, folds=["0"]), device="cpu").run(images)
    assert float(np.abs(both.probabilities["tumor"] - one.probabilities["tumor"]).max()) > 1e-3


def test_region_model_equals_nnunet_predictor(regions_model):
    images = _case(regions_model, 0)
    result = Segmenter(load_model(regions_model, trust=True), device="cpu").run(images, tta=False)
    seg, probs = _reference(regions_model, images, False)
    np.testing.assert_array_equal(result.label_map, seg)
    np.testing.assert_allclose(result.probabilities["whole_tumor"], probs[0], atol=1e-4)
    np.testing.assert_allclose(result.probabilities["tumor_core"], probs[1], atol=1e-4)


def test_trainer_lookup_stays_inside_nnunetv2(monkeypatch, tmp_path):
    evil = tmp_path / "ext"
    evil.mkdir()
    (evil / "evil.py").write_text("raise SystemExit('imported')\nclass EvilTrainer: pass\n")
    monkeypatch.setenv("nnUNet_extTrainer", str(evil))
    assert find_trainer("EvilTrainer") is None
    assert find_trainer("nnUNetTrainer").__name__ == "nnUNetTrainer"


def test_broken_folders_are_one_line_errors(labels_model, tmp_path):
    folder = tmp_path / "broken"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text("{}")
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1}}))
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"x")
    with pytest.raises(ModelError, match="channel_names"):
        describe_model(folder)
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1"},
                                                     "labels": {"background": 0, "wt": [1, 2]}}))
    with pytest.raises(ModelError, match="regions_class_order"):
        describe_model(folder)
