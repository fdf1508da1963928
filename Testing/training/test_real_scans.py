"""Whole real scans as training cases (`train segmentation --real-from`): read with their own label
convention, through the clinical chain (a z-scored constant background becomes 0), drawn ``copies`` times,
training only (validation stays on phantoms), and bad folders refused by name."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medcnncad.errors import InputError
from medcnncad.models.manifest import load_manifest, sha256_file
from medcnncad.training.data import _load_case, _prepare, expand_copies, real_scan_cases
from medcnncad.training.segmentation import TrainConfig, _data

ROBUST_TEMPLATE = Path(__file__).resolve().parents[2] / "Resources" / "ModelTemplates" / "brats-robust-unet.json"


def _image(array: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(image, str(path))


@pytest.fixture()
def brats2013_case(tmp_path) -> Path:
    """A 40 mm cube in the BRATS 2013 layout: z-scored FLAIR and T1c (background -1.5, a constant), labels in
    BRATS 2013 values (3, non-enhancing core, is BraTS 1) - small, so the chain skips brain extraction."""
    folder = tmp_path / "brats_2013_pat9999_1"
    folder.mkdir()
    k, j, i = np.mgrid[:40, :40, :40]
    brain = (k - 20) ** 2 + (j - 20) ** 2 + (i - 20) ** 2 < 15 ** 2
    tumor = (k - 20) ** 2 + (j - 24) ** 2 + (i - 20) ** 2 < 5 ** 2
    rng = np.random.default_rng(0)
    for name in ("Flair", "T1c"):
        values = np.where(brain, rng.uniform(-1.0, 1.0, brain.shape) + 2.0 * tumor, -1.5).astype(np.float32)
        _image(values, folder / f"{name}_subtrMeanDivStd.nii.gz")
    label = np.zeros(brain.shape, np.uint8)
    label[tumor] = 3
    label[tumor & (k == 20)] = 4
    _image(label, folder / "OTMultiClass.nii.gz")
    return folder


def test_real_cases_enter_the_list_copies_times_and_bad_folders_are_refused(brats2013_case, tmp_path):
    cases = real_scan_cases([str(brats2013_case)], 3)
    assert cases == [{"id": "real-brats_2013_pat9999_1", "kind": "real", "folder": str(brats2013_case),
                      "case_id": "brats_2013_pat9999_1", "in_root": False, "copies": 3,
                      "reference_sha256": sha256_file(brats2013_case / "OTMultiClass.nii.gz")}]
    assert real_scan_cases([], 0) == []
    assert expand_copies(cases + [{"id": "p"}], ["a", "b"]) == ["a", "a", "a", "b"]
    with pytest.raises(InputError, match="at least 1"):
        real_scan_cases([str(brats2013_case)], 0)
    with pytest.raises(InputError, match="known layout.*nor does it hold labelled case folders"):
        real_scan_cases([str(tmp_path / "nope")], 1)
    with pytest.raises(InputError, match=r"\['brats_2013_pat9999_1'\]: the same case id from two --real-from folders"):
        real_scan_cases([str(brats2013_case), str(brats2013_case.parent)], 1)
    unlabelled = tmp_path / "BraTS-GLI-99999-000"
    unlabelled.mkdir()
    _image(np.ones((4, 4, 4), np.float32), unlabelled / "BraTS-GLI-99999-000-t1c.nii.gz")
    with pytest.raises(InputError, match="no reference"):
        real_scan_cases([str(unlabelled)], 1)


def test_a_data_root_or_a_decathlon_folder_gives_every_labelled_case(brats2013_case, tmp_path, capsys):
    """``--real-from`` a folder of case folders, or a Decathlon dataset (one 4D file per case, dataset.json naming
    volumes and labels): one training case per labelled case, read with its own convention; unlabelled left out."""
    import json

    manifest = load_manifest(ROBUST_TEMPLATE)
    (root,) = {c["folder"] for c in real_scan_cases([str(brats2013_case.parent)], 2)}
    assert root == str(brats2013_case.parent)
    task = tmp_path / "Task01_BrainTumour"
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    (task / "dataset.json").write_text(json.dumps({
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}}))
    t1c = sitk.ReadImage(str(brats2013_case / "T1c_subtrMeanDivStd.nii.gz"))
    flair = sitk.ReadImage(str(brats2013_case / "Flair_subtrMeanDivStd.nii.gz"))
    for case_id in ("BRATS_001", "BRATS_002"):
        stacked = sitk.JoinSeries([flair, t1c * 0 + 7, t1c, t1c * 0 + 9])
        sitk.WriteImage(stacked, str(task / "imagesTr" / f"{case_id}.nii.gz"))
    k = np.arange(40)[:, None, None] * np.ones((1, 40, 40))
    msd = np.where(k < 2, 1, np.where(k < 4, 2, np.where(k < 6, 3, 0))).astype(np.uint8)  # oedema, core, enhancing
    _image(msd, task / "labelsTr" / "BRATS_001.nii.gz")
    cases = real_scan_cases([str(task)], 1)
    assert "left out" not in capsys.readouterr().err
    assert [(c["case_id"], c["in_root"], c["folder"]) for c in cases] == [("BRATS_001", True, str(task))]
    images, label, info = _load_case(cases[0], manifest)
    assert sorted(images) == ["FLAIR", "T1", "T1c", "T2"] and info["real_case"] == "BRATS_001"
    assert info["source"] == "Decathlon:Task01_BrainTumour"
    brain = sitk.GetArrayFromImage(t1c) != -1.5
    for name, source in (("T1c", t1c), ("FLAIR", flair)):  # each channel its own volume (the brain as given)
        given = sitk.GetArrayFromImage(source)[brain]
        np.testing.assert_array_equal(sitk.GetArrayFromImage(images[name])[brain], given)
    values, counts = np.unique(sitk.GetArrayFromImage(label), return_counts=True)
    assert values.tolist() == [0, 1, 2, 4] and counts[1:].tolist() == [3200, 3200, 3200]  # 2 slices of 40 x 40 each


def test_a_real_scan_is_read_as_the_engine_sees_it(brats2013_case):
    manifest = load_manifest(ROBUST_TEMPLATE)
    case = real_scan_cases([str(brats2013_case)], 1)[0]
    images, label, info = _load_case(case, manifest)
    assert sorted(images) == ["FLAIR", "T1c"] and info["real_case"] == "brats_2013_pat9999_1"
    t1c = sitk.GetArrayFromImage(images["T1c"])
    assert np.count_nonzero(t1c == -1.5) == 0 and np.count_nonzero(t1c == 0) > 0.4 * t1c.size  # background -> 0
    values, counts = np.unique(sitk.GetArrayFromImage(label), return_counts=True)
    assert values.tolist() == [0, 1, 4]  # BRATS 2013's 3 (non-enhancing core) is BraTS 1
    assert counts[1:].tolist() == [416, 69]  # the ball |x| < 5 voxels: 485 lattice points, 69 on its middle slice
    image, lab, _ = _prepare((case, manifest.raw, str(manifest.folder)))
    assert image.shape[0] == 4 and not image[0].any() and not image[2].any()  # T1 and T2 absent: zeros
    assert set(np.unique(lab)) <= {0, 1, 3}  # channel indices: background, NCR, ET (4 is channel 3)


def test_real_scans_train_and_never_validate(brats2013_case):
    manifest = load_manifest(ROBUST_TEMPLATE)
    cfg = TrainConfig(n_train=2, n_val=1, phantom_preset="classic", real_from=(str(brats2013_case),), real_copies=4)
    train, val, where = _data(manifest, cfg)
    assert [c["kind"] for c in train] == ["phantom", "phantom", "real"] and train[-1]["copies"] == 4
    assert [c["kind"] for c in val] == ["phantom"]
    assert "1 whole real patient scan(s), each 4 time(s)" in where and str(brats2013_case) in where


def test_the_command_line_options_reach_the_config():
    from medcnncad.cli.train import add_parsers, train_config

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    base = ["train", "segmentation", "--template", "t.json", "--out", "o"]
    cfg = train_config(parser.parse_args(base + ["--real-from", "a", "b", "--real-copies", "5", "--clinical-chain"]))
    assert cfg.real_from == ("a", "b") and cfg.real_copies == 5 and cfg.clinical_chain
    default = train_config(parser.parse_args(base))
    assert default.real_from == () and default.real_copies == 1 and not default.clinical_chain
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--real-copies", "0"])


def test_clinical_chain_marks_every_phantom_and_prepare_runs_it(monkeypatch):
    """--clinical-chain: every training and validation phantom is marked, and `_prepare` hands a marked phantom to
    the chain before the model's preprocessing (an unmarked one never)."""
    import medcnncad.training.data as data

    manifest = load_manifest(ROBUST_TEMPLATE)
    train, val, where = _data(manifest, TrainConfig(n_train=2, n_val=1, phantom_preset="classic", clinical_chain=True))
    assert all(c["clinical_chain"] for c in train + val) and "clinical chain" in where
    plain, _, _ = _data(manifest, TrainConfig(n_train=2, n_val=1, phantom_preset="classic"))
    assert not any(c.get("clinical_chain") for c in plain)
    seen = []

    def chain(images, m):
        seen.append(sorted(images))
        return {name: image * 0 for name, image in images.items()}  # visible in the output: all zeros

    monkeypatch.setattr(data, "_through_chain", chain)
    case = {"id": "p", "kind": "phantom", "seed": 100000, "preset": "classic"}
    image, _, _ = _prepare(({**case, "clinical_chain": True}, manifest.raw, str(manifest.folder)))
    assert seen == [["FLAIR", "T1", "T1c", "T2"]] and not image.any()
    image, _, _ = _prepare((case, manifest.raw, str(manifest.folder)))
    assert len(seen) == 1 and image.any()


def test_from_a_folder_of_cases_only_expert_references_of_every_sub_region_train(brats2013_case, capsys):
    """A pseudo-labelled case (a model's reference) and a whole-tumor-only one are left out, named on stderr; a
    whole-tumor-only case folder named alone is refused (it would teach that the whole tumor is oedema)."""
    import json
    import shutil

    from medcnncad.data.real_cases import PSEUDO_LABEL_MARKER

    root = brats2013_case.parent
    pseudo = root / "brats_2013_pat9998_1"
    shutil.copytree(brats2013_case, pseudo)
    (pseudo / PSEUDO_LABEL_MARKER).write_text("{}")
    task = root / "Task99_Tumour"
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    (task / "dataset.json").write_text(json.dumps({"modality": {"0": "FLAIR"},
                                                   "labels": {"0": "background", "1": "tumour"}}))
    shutil.copy(brats2013_case / "Flair_subtrMeanDivStd.nii.gz", task / "imagesTr" / "x.nii.gz")
    shutil.copy(brats2013_case / "OTMultiClass.nii.gz", task / "labelsTr" / "x.nii.gz")
    assert [c["case_id"] for c in real_scan_cases([str(root)], 1)] == ["brats_2013_pat9999_1"]
    err = capsys.readouterr().err
    assert "left out 2 case(s): brats_2013_pat9998_1 (no expert), x (regions WT)" in err
