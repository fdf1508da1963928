"""``medcnncad train candidate``: a training run's weights with a shipped model's manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medcnncad.cli.app import main
from medcnncad.errors import InputError
from medcnncad.models.manifest import sha256_file
from medcnncad.models.registry import find_model, load_model
from medcnncad.training.candidate import make_candidate

SHIPPED = "brats-robust-unet"


def _training_run(folder: Path, **changes) -> Path:
    """A folder as ``train segmentation`` writes it: the shipped network with other weights and the template's
    plain manifest (no clinical chain, no filters, no calibration, no warnings)."""
    shipped = json.loads((find_model(SHIPPED) / "manifest.json").read_text())
    fitted = ("clinical_preprocessing", "case_calibration", "input_warnings")
    raw = {k: v for k, v in shipped.items() if k not in fitted}
    raw["postprocessing"] = {k: shipped["postprocessing"][k] for k in ("activation", "channels", "min_lesion_ml")}
    raw["inference"] = {k: v for k, v in shipped["inference"].items() if k != "test_time_augmentation"}
    raw["version"] = "2.0.0"
    raw["training"] = {"best_epoch": 3, "seconds": 12.5, "data": "a test run"}
    raw.update(changes)
    folder.mkdir()
    state = torch.load(find_model(SHIPPED) / "model.pt", map_location="cpu")
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, folder / "model.pt")
    raw["weights"] = {"file": "model.pt", "sha256": sha256_file(folder / "model.pt")}
    (folder / "manifest.json").write_text(json.dumps(raw))
    return folder


def test_the_candidate_is_the_shipped_manifest_with_the_run_s_weights_and_training(tmp_path):
    # the run brings a calibration of its own; the candidate keeps the shipped model's (2.10.0: none at all)
    own = [{"method": "platt", "a": 1.0, "b": 0.0, "no_candidate_probability": 0.5, "inputs": ["FLAIR"]}]
    run = _training_run(tmp_path / "run", case_calibration=own)
    out = make_candidate(run, SHIPPED, tmp_path / "candidate")
    shipped = json.loads((find_model(SHIPPED) / "manifest.json").read_text())
    got = json.loads((out / "manifest.json").read_text())
    for section in ("clinical_preprocessing", "case_calibration", "input_warnings", "postprocessing", "inference",
                    "preprocessing", "network", "intended_use", "trained_on"):
        assert got.get(section, "absent") == shipped.get(section, "absent"), section
    assert got.get("case_calibration") != own
    assert got["version"] == shipped["version"] + "+candidate"
    assert got["training"]["best_epoch"] == 3 and got["training"]["candidate"]["weights_from"] == str(run.resolve())
    assert sha256_file(out / "model.pt") == sha256_file(run / "model.pt") == got["weights"]["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["candidate", "run"]  # no staging folder left
    loaded = load_model(str(out))
    assert loaded.manifest.clinical is not None and loaded.manifest.inference.test_time_augmentation


@pytest.mark.parametrize("section, value", [("network", {"class": "monai.networks.nets.UNet", "kwargs": {}}),
                                            ("preprocessing", {"spacing_mm": [1.0, 1.0, 1.0]})])
def test_a_run_of_another_network_or_preprocessing_is_refused_by_name(tmp_path, section, value):
    run = _training_run(tmp_path / "run", **{section: value})
    with pytest.raises(InputError, match=f"its '{section}' differs"):
        make_candidate(run, SHIPPED, tmp_path / "candidate")
    assert not (tmp_path / "candidate").exists()


def test_a_run_without_the_residue_snap_fits_and_takes_the_model_s(tmp_path):
    shipped = json.loads((find_model(SHIPPED) / "manifest.json").read_text())
    assert shipped["preprocessing"]["residue_fraction"] == 1e-5
    older = {k: v for k, v in shipped["preprocessing"].items() if k != "residue_fraction"}
    out = make_candidate(_training_run(tmp_path / "run", preprocessing=older), SHIPPED, tmp_path / "candidate")
    assert json.loads((out / "manifest.json").read_text())["preprocessing"] == shipped["preprocessing"]


def test_an_existing_folder_is_left_alone_and_the_cli_says_so_in_one_line(tmp_path, capsys):
    run = _training_run(tmp_path / "run")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["train", "candidate", "--run", str(run), "--like", SHIPPED, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "not an empty folder" in err[0]
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    (run / "model.pt").unlink()
    with pytest.raises(InputError, match="weights model.pt not found"):
        make_candidate(run, SHIPPED, tmp_path / "new")
