"""nnU-Net v2 ``dataset.json`` labels read as nnU-Net's own ``LabelManager`` reads them (no model trained:
the description needs only the two JSON files and a checkpoint's presence)."""

from __future__ import annotations

import json

import pytest

from medcnncad.errors import ModelError
from medcnncad.models.nnunet import describe_nnunet

label_handling = pytest.importorskip("nnunetv2.utilities.label_handling.label_handling")


def _folder(tmp_path, labels: dict, order: list[int] | None = None):
    folder = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    dataset = {"channel_names": {"0": "T1"}, "labels": labels, "file_ending": ".nii.gz"}
    if order is not None:
        dataset["regions_class_order"] = order
    (folder / "dataset.json").write_text(json.dumps(dataset))
    (folder / "plans.json").write_text(json.dumps({"configurations": {"3d_fullres": {"patch_size": [8, 8, 8]}}}))
    return folder


def test_one_value_lists_are_labels_not_regions(tmp_path):
    labels = {"background": 0, "edema": [1], "tumor": [2]}
    reference = label_handling.LabelManager(labels, None)
    manifest = describe_nnunet(_folder(tmp_path, labels))
    assert not reference.has_regions and reference.num_segmentation_heads == 3
    assert manifest.postprocessing.activation == "softmax"
    assert [(c.name, c.value) for c in manifest.postprocessing.channels] == [("background", 0), ("edema", 1),
                                                                              ("tumor", 2)]
    assert manifest.regions == ()


def test_an_integer_among_regions_is_a_one_value_region(tmp_path):
    labels = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": 3}
    reference = label_handling.LabelManager(labels, [1, 2, 3])
    manifest = describe_nnunet(_folder(tmp_path, labels, [1, 2, 3]))
    assert reference.foreground_regions == [(1, 2, 3), (2, 3), 3] and reference.num_segmentation_heads == 3
    assert manifest.postprocessing.activation == "sigmoid"
    assert [(c.name, c.value) for c in manifest.postprocessing.channels] == [
        ("whole_tumor", 1), ("tumor_core", 2), ("enhancing_tumor", 3)]
    assert {r.name: r.labels for r in manifest.regions} == {"whole_tumor": (1, 2, 3), "tumor_core": (2, 3),
                                                            "enhancing_tumor": (3,)}


def test_a_label_that_is_not_a_value_is_named(tmp_path):
    with pytest.raises(ModelError, match=r"dataset.json: label 'tumor' is 'two'"):
        describe_nnunet(_folder(tmp_path, {"background": 0, "tumor": "two"}))


def test_channel_names_must_be_numbered(tmp_path):
    folder = _folder(tmp_path, {"background": 0, "tumor": 1})
    dataset = json.loads((folder / "dataset.json").read_text())
    dataset["channel_names"] = {"T1": "0"}
    (folder / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(ModelError, match=r"dataset.json: 'channel_names' keys \['T1'\] must be channel numbers"):
        describe_nnunet(folder)
