"""Decathlon and nnU-Net dataset folders (``dataset.json``) read as real cases: channels, volumes and label values
as their ``dataset.json`` names them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from medcnncad.data.dataset_json import declared_labels, read_dataset, reference_convention
from medcnncad.data.real_cases import describe_case, discover_real_cases, load_reference
from medcnncad.errors import InputError

MSD_TASK01 = {"name": "BRATS", "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
              "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}}
"""Task01_BrainTumour's dataset.json, as the Decathlon ships it (its lists of files left out)."""
NNUNET_BRATS21 = {"channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"},
                  "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
                  "regions_class_order": [1, 2, 3], "numTraining": 1, "file_ending": ".nii.gz"}
"""nnU-Net v2's Dataset137_BraTS2021 (region-based: its conversion stores 1 oedema, 2 NCR, 3 ET)."""


def _volume(values: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((1.0, 1.0, 1.0))
    return image


def _dataset(folder, description, images: dict[str, np.ndarray], labels: dict[str, list[int]]):
    """Write ``dataset.json``, ``imagesTr/<name>`` ((K, J, I) or (volume, K, J, I) arrays) and ``labelsTr``."""
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    (folder / "dataset.json").write_text(json.dumps(description))
    for name, values in images.items():
        image = _volume(values) if values.ndim == 3 else sitk.JoinSeries([_volume(v) for v in values])
        sitk.WriteImage(image, str(folder / "imagesTr" / name))
    for name, placed in labels.items():
        seg = np.zeros((4, 5, 6), np.uint8)
        seg.flat[:len(placed)] = placed
        sitk.WriteImage(_volume(seg), str(folder / "labelsTr" / name))
    return folder


def test_a_decathlon_task01_folder_gives_each_sequence_its_volume_and_msd_labels(tmp_path):
    stacked = np.stack([np.full((4, 5, 6), float(v), np.float32) for v in range(4)])  # volume v holds the value v
    root = _dataset(tmp_path / "Task01_BrainTumour", MSD_TASK01,
                    {"BRATS_001.nii.gz": stacked, "BRATS_002.nii.gz": stacked}, {"BRATS_001.nii.gz": [1, 2, 3]})
    (root / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05")  # a macOS companion, as the tarball has
    for data in (root, tmp_path):  # the dataset folder itself, or a folder holding it
        cases = {c.case_id: c for c in discover_real_cases(data)}
        assert sorted(cases) == ["BRATS_001", "BRATS_002"]
    case = cases["BRATS_001"]
    assert case.source == "Decathlon:Task01_BrainTumour" and case.regions == ("WT", "TC", "ET")
    assert case.volumes == {"FLAIR": 0, "T1": 1, "T1c": 2, "T2": 3}
    assert list(case.inputs) == ["FLAIR", "T1", "T1c", "T2"]
    images = case.input_images(["T2", "T1c"])
    assert {k: float(sitk.GetArrayViewFromImage(v).mean()) for k, v in images.items()} == {"T2": 3.0, "T1c": 2.0}
    np.testing.assert_array_equal(sitk.GetArrayFromImage(load_reference(case)).ravel()[:4], [2, 1, 4, 0])
    assert not cases["BRATS_002"].labelled
    with pytest.raises(InputError, match="a dataset folder .* evaluate-real --data reads its cases"):
        describe_case(root)


def test_nnunet_region_labels_map_each_value_by_the_regions_holding_it(tmp_path):
    """Dataset137's 1 (whole tumor only) is oedema, 2 (core, not enhancing) NCR, 3 (enhancing) ET."""
    channel = np.ones((4, 5, 6), np.float32)
    root = _dataset(tmp_path / "Dataset137_BraTS2021", NNUNET_BRATS21,
                    {f"BraTS2021_00000_{i:04d}.nii.gz": channel * i for i in range(4)},
                    {"BraTS2021_00000.nii.gz": [1, 2, 3]})
    (case,) = discover_real_cases(root)
    assert case.source == "nnU-Net:Dataset137_BraTS2021" and case.case_id == "BraTS2021_00000" and not case.volumes
    assert list(case.inputs) == ["T1", "T1c", "T2", "FLAIR"]
    assert case.inputs["FLAIR"].name == "BraTS2021_00000_0003.nii.gz"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(load_reference(case)).ravel()[:4], [2, 1, 4, 0])


def test_nnunet_v2_named_labels_and_a_whole_tumor_mask(tmp_path):
    plain = {"channel_names": {"0": "FLAIR", "1": "T1Gd"}, "file_ending": ".nii.gz",
             "labels": {"background": 0, "necrosis": 1, "oedema": 2, "enhancing_tumour": 3}}
    assert dict(read_dataset(_dataset(tmp_path / "a", plain, {}, {})).label_map) == {0: 0, 1: 1, 2: 2, 3: 4}
    binary = {**plain, "labels": {"background": 0, "tumor": 1}}
    dataset = read_dataset(_dataset(tmp_path / "b", binary, {}, {}))
    assert dict(dataset.label_map) == {0: 0, 1: 2} and dataset.regions == ("WT",)


@pytest.mark.parametrize(("change", "message"), [
    ({"labels": {"0": "background", "1": "edema", "2": "resection cavity"}},
     r"dataset.json: label names \['resection cavity'\] are not read here"),
    ({"modality": {"0": "CT"}}, r"dataset.json: channels \['CT'\] are none of the MR sequences read here"),
    ({"modality": {"0": "T1", "1": "T1w"}}, "dataset.json: two channels name the same sequence"),
    ({"labels": {"background": 0, "whole tumor": [1, 2], "cavity": [3]}}, "region label 'cavity'"),
])
def test_a_dataset_json_that_cannot_be_read_is_one_error_naming_it(tmp_path, change, message):
    root = _dataset(tmp_path / "Task99", {**MSD_TASK01, **change}, {}, {})
    with pytest.raises(InputError, match=message):
        discover_real_cases(tmp_path)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(InputError, match=r"Task99/dataset.json: cannot be read as JSON"):
        read_dataset(root)


def test_the_layout_comes_from_the_files_not_from_a_four_digit_case_id(tmp_path):
    """Decathlon files named BRATS_0001, BRATS_0002 (4D) are two cases, not one case's channels 1 and 2; with
    several channels, 3D files not named <case>_<XXXX> are refused rather than merged across patients."""
    stacked = np.stack([np.full((4, 5, 6), float(v), np.float32) for v in range(4)])
    root = _dataset(tmp_path / "Task01", MSD_TASK01, {"BRATS_0001.nii.gz": stacked, "BRATS_0002.nii.gz": stacked},
                    {})
    dataset = read_dataset(root)
    assert dataset.layout == "Decathlon" and [c.case_id for c in dataset.cases] == ["BRATS_0001", "BRATS_0002"]
    flat = np.ones((4, 5, 6), np.float32)
    odd = _dataset(tmp_path / "odd", NNUNET_BRATS21, {"a_0000.nii.gz": flat, "b.nii.gz": flat}, {})
    with pytest.raises(InputError, match="b.nii.gz is not named <case>_<XXXX>"):
        read_dataset(odd)
    single = _dataset(tmp_path / "flair_only", {"modality": {"0": "FLAIR"}, "labels": {"0": "background",
                                                                                      "1": "tumour"}},
                      {"BRATS_0001.nii.gz": flat * 2}, {"BRATS_0001.nii.gz": [1]})
    (case,) = discover_real_cases(single)  # one channel, 3D files: a Decathlon case whose volume 0 is the file
    assert case.volumes == {"FLAIR": 0} and case.regions == ("WT",)
    assert float(sitk.GetArrayViewFromImage(case.input_images()["FLAIR"]).mean()) == 2.0


def test_regions_are_those_the_labels_describe_in_full_and_unread_channels_are_noted(tmp_path):
    partial = {"modality": {"0": "FLAIR", "1": "T1-weighted", "2": "t1gd"},
               "labels": {"0": "background", "1": "edema", "2": "enhancing tumour"}}  # no necrosis / core label
    dataset = read_dataset(_dataset(tmp_path / "partial", partial, {}, {}))
    assert dataset.regions == ("ET",) and dataset.unread_channels == ("T1-weighted",)
    v1 = {"modality": {"0": "FLAIR"}, "labels": {"0": "background", "1": "edema", "2": "non-enhancing",
                                                 "3": "enhancing"}}  # nnU-Net v1's own BraTS conversions
    assert dict(read_dataset(_dataset(tmp_path / "v1", v1, {}, {})).label_map) == {0: 0, 1: 2, 2: 1, 3: 4}
    with pytest.raises(InputError, match="describe no BraTS region in full"):
        read_dataset(_dataset(tmp_path / "edema", {**v1, "labels": {"0": "background", "1": "edema"}}, {}, {}))


def test_one_case_id_from_two_places_is_refused_naming_both(tmp_path):
    """nnU-Net's Dataset137 keeps the BraTS 2021 ids: beside the case's own folder, rows and training records would
    mix two copies."""
    channel = np.ones((4, 5, 6), np.float32)
    _dataset(tmp_path / "Dataset137_BraTS2021", NNUNET_BRATS21,
             {f"BraTS2021_00000_{i:04d}.nii.gz": channel * (i + 1) for i in range(4)},
             {"BraTS2021_00000.nii.gz": [1, 2, 3]})
    folder = tmp_path / "BraTS2021_00000"
    folder.mkdir()
    sitk.WriteImage(_volume(channel), str(folder / "BraTS2021_00000_t1ce.nii.gz"))
    with pytest.raises(InputError, match=r"case id BraTS2021_00000 twice \(BraTS2021: .*; nnU-Net:Dataset137"):
        discover_real_cases(tmp_path)


@pytest.mark.parametrize("description, expected", [
    (MSD_TASK01, {0: 0, 1: 2, 2: 1, 3: 4}),
    (NNUNET_BRATS21, {0: 0, 1: 2, 2: 1, 3: 4}),  # regions: 1 only in WT (oedema), 2 in TC (NCR), 3 in ET
    ({"labels": {"0": "background", "1": "necrosis", "2": "edema", "4": "enhancing tumor"}}, {0: 0, 1: 1, 2: 2, 4: 4}),
    ({"labels": {"background": 0, "tumor": 1}}, {0: 0, 1: 2}),  # one whole-tumor label: WT (as oedema)
    ({"labels": {"0": "background", "1": "liver", "2": "cancer"}}, None),  # another task: the file's values
    ({"labels": {"0": "background", "1": "edema", "2": "enhancing tumor"}}, {0: 0, 1: 2, 2: 4}),  # no core: by name
])
def test_a_label_file_of_a_dataset_folder_declares_its_convention(tmp_path, description, expected):
    (tmp_path / "labelsTr").mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps(description))
    label = tmp_path / "labelsTr" / "case_001.nii.gz"
    assert declared_labels(label) == expected
    assert declared_labels(tmp_path / "case_001.nii.gz") is None  # not in labelsTr/
    assert reference_convention(label, None) == expected


def test_a_convention_given_against_the_dataset_json_is_refused(tmp_path):
    (tmp_path / "labelsTs").mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps(MSD_TASK01))
    label = tmp_path / "labelsTs" / "BRATS_900.nii.gz"
    msd = {0: 0, 1: 2, 2: 1, 3: 4}
    assert reference_convention(label, msd) == msd
    with pytest.raises(InputError, match=r"BRATS_900.nii.gz: its dataset.json maps label 3 to 4, not 3 \(its "
                                         r"convention: 0=0, 1=2, 2=1, 3=4\)"):
        reference_convention(label, {0: 0, 1: 2, 2: 1})  # 3 left as itself
    with pytest.raises(InputError, match="maps label 1 to 2, not 1"):
        reference_convention(label, {0: 0, 1: 1, 2: 2, 3: 4})  # BraTS 2023's
    (tmp_path / "dataset.json").write_text("{not json")
    assert reference_convention(label, {3: 4}) == {3: 4}  # an unreadable description declares nothing


def test_a_dataset_convention_reaches_the_models_values_by_their_names(tmp_path):
    """Onto a BraTS model (NCR 1, ED 2, ET 4) the Decathlon's 1 oedema becomes 2; onto a model trained on the
    Decathlon's own values (an nnU-Net model of Task01) nothing moves; a model of another task's labels gets no map."""
    from dataclasses import replace

    from medcnncad.models.manifest import LabelDef
    from medcnncad.models.registry import describe_model

    def model(**labels: int):  # the demo model with other labels (name -> value)
        return replace(describe_model("demo"), labels=tuple(LabelDef(n, v, (1.0, 0.0, 0.0)) for n, v in labels.items()))

    (tmp_path / "labelsTr").mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps(MSD_TASK01))
    label = tmp_path / "labelsTr" / "BRATS_900.nii.gz"
    assert reference_convention(label, None, describe_model("demo")) == {0: 0, 1: 2, 2: 1, 3: 4}  # NCR 1, ED 2, ET 4
    task01_model = model(**{"edema": 1, "non-enhancing tumor": 2, "enhancing tumour": 3})
    assert reference_convention(label, None, task01_model) == {0: 0, 1: 1, 2: 2, 3: 3}
    assert reference_convention(label, {3: 3}, task01_model) == {3: 3}  # agrees: accepted
    assert reference_convention(label, None, model(liver=1, tumor=2)) is None
    assert reference_convention(label, None, model(ED=2, ET=4)) is None  # no label for the dataset's core


def test_generic_channel_names_contradict_nothing():
    from medcnncad.data.dataset_json import declared_contradicts

    assert declared_contradicts("FLAIR", "T2") and declared_contradicts("ADC", "T2")
    assert not declared_contradicts("FLAIR", "FLAIR")
    assert not declared_contradicts("MRI", "FLAIR") and not declared_contradicts("zscore", "T2")  # generic dataset
    assert not declared_contradicts("FLAIR", None)  # a bundle's "image": generic model channel
