"""`medcnncad train segmentation` writes a complete, loadable model and resumes."""

from __future__ import annotations

import json

import torch

from helpers import TEMPLATE
from medcnncad.cli import main
from medcnncad.manifest import load_manifest, sha256_file
from medcnncad.models import load_model


def _tiny_template(tmp_path):
    raw = json.loads(TEMPLATE.read_text())
    raw["id"] = "tiny-test"
    raw["preprocessing"]["spacing_mm"] = [4.0, 4.0, 4.0]
    raw["network"]["kwargs"].update({"channels": [4, 8], "strides": [2], "num_res_units": 0})
    raw["inference"]["roi_size"] = [32, 32, 32]
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(raw))
    return path


def test_train_writes_model_and_resumes(tmp_path):
    out = tmp_path / "model"
    argv = ["train", "segmentation", "--template", str(_tiny_template(tmp_path)), "--out", str(out),
            "--n-train", "1", "--n-val", "1", "--epochs", "1", "--steps-per-epoch", "2", "--patch", "16", "16", "16",
            "--workers", "1"]
    assert main(argv) == 0
    manifest = load_manifest(out)
    assert manifest.id == "tiny-test"
    assert manifest.weights_sha256 == sha256_file(out / "model.pt")
    training = manifest.training
    assert training["epochs"] == 1 and set(training["validation_dice"]) == {"NCR", "ED", "ET", "WT", "TC"}
    assert "medcnncad train segmentation" in training["command"] and "100000" in training["data"]
    first = load_model(out).network.state_dict()
    # resume: a second epoch starts from the checkpoint, not from scratch
    argv[argv.index("--epochs") + 1] = "2"
    assert main(argv + ["--resume"]) == 0
    resumed = load_manifest(out)
    assert resumed.training["epochs"] == 2 and len(resumed.training["history"]) == 2
    assert resumed.training["history"][0] == training["history"][0]
    assert isinstance(load_model(out).network, torch.nn.Module) and first
