"""`medcnncad train classification`: a complete, calibrated, loadable classifier; patch cache; resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medcnncad.classification.grade import load_classifier
from medcnncad.cli import main
from medcnncad.models.manifest import load_manifest, sha256_file

TEMPLATE = Path(__file__).resolve().parents[2] / "Resources" / "ModelTemplates" / "brats-grade-densenet.json"
needs_colin27 = pytest.mark.skipif(not Path("/usr/share/mricron/templates/ch2.nii.gz").is_file(),
                                   reason="the robust preset uses Colin27 (Debian mricron-data; .ci/run installs it)")


def _tiny_template(tmp_path: Path) -> Path:
    raw = json.loads(TEMPLATE.read_text())
    raw["id"] = "tiny-grade-test"
    raw["patch"]["size_vox"] = [16, 16, 16]
    raw["patch"]["spacing_mm"] = [4.0, 4.0, 4.0]
    raw["network"]["kwargs"].update(init_features=4, growth_rate=2, block_config=[1, 1], bn_size=1)
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(raw))
    return path


@needs_colin27
def test_train_classification_writes_a_calibrated_model_and_resumes(tmp_path, capsys, monkeypatch):
    """Stopped after its first epoch and resumed, a run reuses the cached patches and ends with the weights of
    one uninterrupted run (each epoch's draws are seeded by the epoch, dropout's stream is in the checkpoint)."""
    import medcnncad.training.classification as clf

    argv = ["train", "classification", "--template", str(_tiny_template(tmp_path)), "--n-train", "6", "--n-val",
            "6", "--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "4", "--workers", "1"]
    assert main(argv + ["--out", str(tmp_path / "long")]) == 0
    out = tmp_path / "clf"
    saved = clf.save_checkpoint

    def stop_after_first_epoch(*args, **kwargs):
        saved(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(clf, "save_checkpoint", stop_after_first_epoch)
    assert main(argv + ["--out", str(out)]) == 130
    monkeypatch.setattr(clf, "save_checkpoint", saved)
    capsys.readouterr()
    assert main(argv + ["--out", str(out), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "patches from" in err and "resumed at epoch 1" in err
    manifest = load_manifest(out)
    assert manifest.task == "classification" and manifest.weights_sha256 == sha256_file(out / "model.pt")
    assert manifest.calibration["method"] == "temperature" and manifest.temperature > 0
    assert 0.0 <= manifest.threshold <= 1.0 and "Youden" in manifest.operating_point["rule"]
    assert "grade is the generator's hidden variable" in manifest.training["data"]
    assert (out / "patches.npz").is_file()
    loaded = load_classifier(out)
    assert loaded.manifest.class_names == ["LGG", "HGG"]
    long = load_manifest(tmp_path / "long")
    assert [h["epoch"] for h in manifest.training["history"]] == [1, 2]
    assert [h["loss"] for h in manifest.training["history"]] == [h["loss"] for h in long.training["history"]]
    assert manifest.weights_sha256 == long.weights_sha256
    argv[argv.index("--epochs") + 1] = "3"  # another schedule is another run
    assert main(argv + ["--out", str(out), "--resume"]) == 2
    assert "other settings (epochs 2 -> 3)" in capsys.readouterr().err
    # held-out evaluation: temperature scaling keeps the ranking (same AUC) and the report is complete
    from medcnncad.training.classification import evaluate_classifier

    report = evaluate_classifier(str(out), n_cases=6, preset="robust", seed_base=950_000, workers=1,
                                 diagram=tmp_path / "rel.png")
    assert report["lesions"] == len(report["per_lesion"]["label"]) > 0
    assert report["calibrated"]["auc"] == report["uncalibrated"]["auc"]
    assert report["calibrated"]["threshold"] == load_manifest(out).threshold
    assert (tmp_path / "rel.png").stat().st_size > 1000


def test_classifier_csv_data_uses_the_shared_case_reader_and_needs_a_class(tmp_path):
    from medcnncad.errors import InputError
    from medcnncad.models.manifest import parse_classifier_manifest
    from medcnncad.training.classification import ClassifierTrainConfig, _cases

    manifest = parse_classifier_manifest(json.loads(TEMPLATE.read_text()), tmp_path)
    rows = ["case,t1ce,FLAIR,label,class"]
    rows += [f"c{n},t1c{n}.nii.gz,flair{n}.nii.gz,seg{n}.nii.gz,{'HGG' if n % 2 else 'LGG'}" for n in range(5)]
    (tmp_path / "cases.csv").write_text("\n".join(rows) + "\n")
    train, val, where = _cases(ClassifierTrainConfig(data=str(tmp_path / "cases.csv")), manifest)
    assert len(train) == 4 and len(val) == 1 and "5 cases" in where
    assert {c["class"] for c in train + val} == {"HGG", "LGG"}
    assert sorted(train[0]["inputs"]) == ["FLAIR", "T1c"]  # aliases resolved as for segmentation data
    (tmp_path / "noclass.csv").write_text("case,t1ce,label\nc0,a.nii.gz,b.nii.gz\n")
    with pytest.raises(InputError, match=r"case\(s\) \['c0'\] have no 'class'"):
        _cases(ClassifierTrainConfig(data=str(tmp_path / "noclass.csv")), manifest)
