"""Real-tumor transplant: donors read with their own label convention, the tumor lands in white matter with its
volume kept within the drawn scaling, its signals relative to white matter, deterministic for a seed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medcnncad.data.phantom import PhantomConfig, make_phantom, preset
from medcnncad.data.transplant import TransplantConfig, load_donor, transplant_phantom, transplant_source
from medcnncad.errors import InputError

REALDATA = Path(__file__).resolve().parents[3] / "shared" / "realdata"
# 1 mm, untilted, skull-stripped, cropped around the tumor: a transplant in a few seconds
FAST = dataclasses.replace(preset("realistic"), tilt_deg=0.0, skull_fraction=0.0, anatomies=("mni152",),
                           random_slice_axis=False, crop_margin_mm=6.0, output_spacing_mm=((1.0, 1.0), (1.0, 1.0)))
ONE_MM = PhantomConfig(output_spacing_mm=((1.0, 1.0), (1.0, 1.0)), slice_thickness_mm=(1.0, 1.0), crop_margin_mm=25.0)


def _write(array: np.ndarray, like: sitk.Image, path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(like)
    sitk.WriteImage(image, str(path))


@pytest.fixture(scope="module")
def donor_dirs(tmp_path_factory) -> dict[str, Path]:
    """Two fake donors made from a 1 mm phantom: a BraTS 2021 folder (labels 1/2/4, four raw sequences) and a
    BraTS 2017 folder (T1c only, z-scored, labels 0-3 with 3 = enhancing)."""
    case = make_phantom(900_003, ONE_MM)
    images, label = case.images, case.label
    lab = sitk.GetArrayFromImage(label)
    root = tmp_path_factory.mktemp("donors")
    b21 = root / "BraTS2021_99999"
    b21.mkdir()
    for name, suffix in (("T1", "t1"), ("T1c", "t1ce"), ("T2", "t2"), ("FLAIR", "flair")):
        _write(sitk.GetArrayFromImage(images[name]), label, b21 / f"BraTS2021_99999_{suffix}.nii.gz")
    _write(lab, label, b21 / "BraTS2021_99999_seg.nii.gz")
    b17 = root / "Brats17_TEST_1"
    b17.mkdir()
    t1c = sitk.GetArrayFromImage(images["T1c"])
    brain = t1c > 0
    z = np.where(brain, (t1c - t1c[brain].mean()) / t1c[brain].std(), 0).astype(np.float32)
    _write(z, label, b17 / "t1ce_zscored.nii.gz")
    _write(np.select([lab == 4, lab == 1, lab == 2], [3, 1, 2], 0).astype(np.uint8), label, b17 / "seg.nii.gz")
    return {"brats2021": b21, "brats2017": b17}


def test_donor_labels_follow_their_source_convention_and_signals_are_relative_to_white_matter(donor_dirs):
    d21, d17 = load_donor(str(donor_dirs["brats2021"])), load_donor(str(donor_dirs["brats2017"]))
    assert set(np.unique(d21.label)) == {0, 1, 2, 4}
    assert set(np.unique(d17.label)) == {0, 1, 2, 4}  # BraTS 2017's 3 (enhancing) is 4 here
    assert d17.tumor_ml == pytest.approx(d21.tumor_ml)
    assert sorted(d21.signal) == ["FLAIR", "T1", "T1c", "T2"] and sorted(d17.signal) == ["T1c"]
    for donor in (d21, d17):  # enhancing tumor ~1.55 x white matter on T1c in the phantom; z-scored too
        assert 1.2 < float(np.median(donor.signal["T1c"][donor.label == 4])) < 2.5
    assert float(np.median(d21.signal["FLAIR"][d21.label == 2])) > 1.5


def test_transplant_keeps_the_tumor_volume_within_the_drawn_scaling_and_is_deterministic(donor_dirs):
    donors = [str(donor_dirs["brats2021"])]
    case = transplant_phantom(5, donors, FAST)
    again = transplant_phantom(5, donors, FAST)
    label = sitk.GetArrayFromImage(case.label)
    np.testing.assert_array_equal(label, sitk.GetArrayFromImage(again.label))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(case.images["FLAIR"]),
                                  sitk.GetArrayFromImage(again.images["FLAIR"]))
    assert set(np.unique(label)) == {0, 1, 2, 4}
    expected = load_donor(donors[0]).tumor_ml * float(np.prod(case.info["scales"]))
    assert (label > 0).sum() / 1000.0 == pytest.approx(expected, rel=0.08)
    assert case.info["donor"] == "BraTS2021_99999" and case.info["grade"] == "HGG"


def test_transplanted_tumor_keeps_its_own_contrast(donor_dirs):
    case = transplant_phantom(6, [str(donor_dirs["brats2017"])], FAST,
                              TransplantConfig(gamma=(1.0, 1.0), intensity_scale=0.0))
    label = sitk.GetArrayFromImage(case.label)
    t1c = sitk.GetArrayFromImage(case.images["T1c"])
    normal = np.median(t1c[(label == 0) & (t1c > 0)])
    assert np.median(t1c[label == 4]) > 1.2 * normal > np.median(t1c[label == 1])
    flair = sitk.GetArrayFromImage(case.images["FLAIR"])  # not in the donor: rendered from the label
    assert np.median(flair[label == 2]) > 1.2 * np.median(flair[(label == 0) & (flair > 0)])


def test_bad_donors_are_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="no donor"):
        transplant_source([])
    (tmp_path / "some_case").mkdir()
    with pytest.raises(InputError, match="known layout"):
        load_donor(str(tmp_path / "some_case"))
    with pytest.raises(InputError, match="scale"):
        TransplantConfig(scale=(1.2, 0.8))


@pytest.mark.slow
@pytest.mark.skipif(not (REALDATA / "BraTS2021_00006").is_dir(), reason="needs ../shared/realdata")
def test_real_donor_from_the_shared_folder():
    donor = load_donor(str(REALDATA / "BraTS2021_00006"))
    assert set(np.unique(donor.label)) == {0, 1, 2, 4} and donor.tumor_ml > 50 and donor.grade == "HGG"
    assert np.median(donor.signal["T1c"][donor.label == 4]) > 1.3  # enhancement, relative to NAWM
    assert np.median(donor.signal["FLAIR"][donor.label == 2]) > 1.3
    with pytest.raises(InputError, match="sub-regions"):
        load_donor(str(REALDATA / "ReMIND-022"))
    if (REALDATA / "TCGA-DU-7294").is_dir():  # the source says lower grade (and the fusion has no enhancing label)
        assert load_donor(str(REALDATA / "TCGA-DU-7294")).grade == "LGG"


def test_training_switch_deals_transplants_evenly_and_is_off_by_default(donor_dirs):
    from medcnncad.cli import main
    from medcnncad.cli.train import train_config
    from medcnncad.training.data import phantom_cases, with_transplants
    from medcnncad.training.segmentation import TrainConfig

    assert TrainConfig().transplant_share == 0.0 and TrainConfig().transplant_from == ()
    cases = phantom_cases(list(range(10)), "realistic,robust")
    assert with_transplants(cases, (), 0.0) is cases
    mixed = with_transplants(cases, [str(donor_dirs["brats2021"])], 0.3)
    assert [c["kind"] for c in mixed].count("transplant") == 3
    assert [c["preset"] for c in mixed] == [c["preset"] for c in cases]  # the preset mix is kept
    with pytest.raises(InputError, match="--transplant-from"):
        with_transplants(cases, (), 0.5)
    with pytest.raises(InputError, match="known layout"):
        with_transplants(cases, [str(donor_dirs["brats2021"].parent)], 0.5)
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    from medcnncad.cli.train import add_parsers

    add_parsers(sub)
    args = parser.parse_args(["train", "segmentation", "--template", "t.json", "--out", "o",
                              "--transplant-from", "a", "b", "--transplant-share", "0.25"])
    cfg = train_config(args)
    assert cfg.transplant_from == ("a", "b") and cfg.transplant_share == 0.25
    assert main(["phantom", "--out", "x", "--transplant-from", str(donor_dirs["brats2021"].parent / "nope")]) == 2


@pytest.mark.slow  # a whole-head realistic case: ~20 s
def test_training_loads_a_transplant_case(donor_dirs):
    from helpers import TEMPLATE

    from medcnncad.models.manifest import load_manifest
    from medcnncad.training.data import _load_case

    manifest = load_manifest(TEMPLATE)
    case = {"id": "t", "kind": "transplant", "seed": 3, "preset": "realistic", "donors": [str(donor_dirs["brats2021"])]}
    images, label, info = _load_case(case, manifest)
    assert info["donor"] == "BraTS2021_99999" and sorted(images) == sorted(c.name for c in manifest.inputs)
    assert 4 in set(np.unique(sitk.GetArrayFromImage(label)))


@pytest.mark.slow  # three whole-head realistic cases and one segmentation: 30-60 s
def test_lesion_filter_collection_draws_phantoms_carrying_the_donors_tumors(donor_dirs, tmp_path):
    """scripts/fit_lesion_filter.py collect --transplant-from: each case's saved reference is the
    transplant phantom's label for that seed and donors (not a plain phantom's), and a present case is
    skipped (resumable)."""
    import importlib.util

    script = Path(__file__).resolve().parents[2] / "scripts" / "fit_lesion_filter.py"
    spec = importlib.util.spec_from_file_location("fit_lesion_filter", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    donors = (str(donor_dirs["brats2021"]),)
    module.collect("brats-demo-unet", tmp_path, ["t:realistic:all:1000:1"], tta=False, donors=donors)
    saved = tmp_path / "t" / "1000.npz"
    expected = sitk.GetArrayFromImage(transplant_phantom(1000, donors, preset("realistic")).label)
    with np.load(saved) as npz:
        np.testing.assert_array_equal(npz["ref"], expected)
        assert npz["label"].shape == expected.shape
    plain = sitk.GetArrayFromImage(make_phantom(1000, preset("realistic")).label)
    assert plain.shape != expected.shape or not np.array_equal(plain, expected)
    before = saved.stat().st_mtime_ns
    module.collect("brats-demo-unet", tmp_path, ["t:realistic:all:1000:1"], tta=False, donors=donors)
    assert saved.stat().st_mtime_ns == before
