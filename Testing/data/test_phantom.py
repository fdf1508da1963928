"""The phantom generator: deterministic, BraTS labels, characteristic contrast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import small_phantom

from medcnncad.data.phantom import SEQUENCES, make_phantom


def test_same_seed_same_case_and_labels_are_brats():
    images, label = small_phantom()
    from medcnncad.data.phantom import make_phantom as again

    case = again(900_001)
    lab = sitk.GetArrayFromImage(case.label)
    assert set(np.unique(lab)) <= {0, 1, 2, 4} and {2, 4} <= set(np.unique(lab))
    assert sorted(case.images) == sorted(SEQUENCES)
    for img in case.images.values():
        assert img.GetSize() == case.label.GetSize()
        assert img.GetSpacing() == case.label.GetSpacing()
    other = make_phantom(900_001)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(other.images["T1c"]),
                                  sitk.GetArrayFromImage(case.images["T1c"]))
    assert not np.array_equal(sitk.GetArrayFromImage(make_phantom(900_002).label), lab)


def test_sequence_contrast_is_characteristic():
    images, label = small_phantom()
    lab = sitk.GetArrayFromImage(label)
    arr = {n: sitk.GetArrayFromImage(img) for n, img in images.items()}
    brain = (arr["T1"] > 0) & (lab == 0)

    def ratio(seq, value):
        return arr[seq][lab == value].mean() / np.median(arr[seq][brain])

    assert ratio("T1c", 4) > 1.3 * ratio("T1", 4)     # enhancement only after contrast
    assert ratio("FLAIR", 2) > 1.3                    # oedema bright on FLAIR
    assert ratio("T2", 2) > 1.2                       # and on T2
    assert (arr["T1"][lab == 0] >= 0).all()
    spacing = label.GetSpacing()
    assert spacing[2] >= spacing[0]                  # anisotropic grid


CLASSIC_HASH_900000 = "0e3a11fc2822c2ebf8d1d6e6aef0dd9350aa460cf608c1a0ae365f22386c8cc4"


def test_classic_phantoms_are_unchanged_by_the_new_features():
    """Every new generator feature is off in the classic preset, which draws the same numbers as before
    (the first demo model was trained and evaluated on exactly these voxels)."""
    import hashlib

    case = make_phantom(900_000)
    digest = hashlib.sha256()
    for name in sorted(case.images):
        digest.update(sitk.GetArrayFromImage(case.images[name]).tobytes())
    digest.update(sitk.GetArrayFromImage(case.label).tobytes())
    assert digest.hexdigest() == CLASSIC_HASH_900000


def _volumes(case):
    lab = sitk.GetArrayFromImage(case.label)
    voxel_ml = np.prod(case.label.GetSpacing()) / 1000
    return {v: float((lab == v).sum() * voxel_ml) for v in (1, 2, 4)}, lab


def test_grade_shapes_appearance_but_not_size_alone():
    import dataclasses

    from medcnncad.data.phantom import preset

    graded = dataclasses.replace(preset("graded"), crop_margin_mm=5.0)  # the tumor's box only: fast
    cases = [make_phantom(s, graded) for s in range(300_000, 300_012)]
    grades = [c.grade for c in cases]
    assert {"HGG", "LGG"} <= set(grades)
    for case in cases:
        vols, lab = _volumes(case)
        if case.grade == "HGG":
            assert vols[4] > 0  # high grade always enhances
        else:
            assert case.info["necrosis"] == 0.0 and vols[1] > 0  # low grade: a non-enhancing mass (label 1)
            if vols[4] > 0:
                assert case.info["patchy_enhancement"] == 1.0
    # the core sizes of the two grades overlap (config ranges), so size alone cannot separate them
    hgg, lgg = preset("graded").grade_core_radius_mm["HGG"], preset("graded").grade_core_radius_mm["LGG"]
    assert max(hgg[0], lgg[0]) < min(hgg[1], lgg[1])


def test_low_grade_core_is_bright_on_t2_and_not_enhancing():
    import dataclasses

    from medcnncad.data.phantom import preset

    graded = dataclasses.replace(preset("graded"), crop_margin_mm=15.0)
    case = next(c for c in (make_phantom(s, graded) for s in range(300_000, 300_020))
                if c.grade == "LGG" and not c.info.get("patchy_enhancement"))
    lab = sitk.GetArrayFromImage(case.label)
    arr = {n: sitk.GetArrayFromImage(img) for n, img in case.images.items()}
    white = (lab == 0) & (arr["T1"] > np.percentile(arr["T1"][arr["T1"] > 0], 80))
    core = lab == 1
    ratio = {n: arr[n][core].mean() / arr[n][white].mean() for n in arr}
    assert ratio["T2"] > 1.5 and ratio["T1c"] < 0.8  # enhancing tissue would be > 1.3 (classic test above)


needs_colin27 = pytest.mark.skipif(not Path("/usr/share/mricron/templates/ch2.nii.gz").is_file(),
                                   reason="Colin27 needs the Debian package mricron-data (.ci/run installs it)")


@needs_colin27
def test_tumor_free_cases_and_clinical_like_geometry():
    import dataclasses

    from medcnncad.data.phantom import PhantomConfig, preset

    free = make_phantom(5, dataclasses.replace(preset("graded"), tumor_free_fraction=1.0))
    assert free.grade == "none" and not sitk.GetArrayFromImage(free.label).any()
    config = dataclasses.replace(preset("clinical-like"), tumor_free_fraction=0.0, tilt_deg=0.0)
    clinical = make_phantom(6, config)
    spacing = clinical.label.GetSpacing()
    assert 5.0 <= spacing[2] <= 7.0 and spacing[0] <= 1.0 and clinical.info["skull"]
    stripped = make_phantom(6, dataclasses.replace(config, skull_fraction=1e-9))  # same draws, no skull
    assert stripped.info["skull"] is False and stripped.label.GetSize() == clinical.label.GetSize()
    head = (sitk.GetArrayFromImage(clinical.images["T1"]) > 0).sum()
    brain = (sitk.GetArrayFromImage(stripped.images["T1"]) > 0).sum()
    assert head > 1.5 * brain  # scalp and skull around the brain
    with pytest.raises(ValueError, match="skull_fraction > 0 needs the 'colin27' anatomy"):
        PhantomConfig(skull_fraction=0.5)
    with pytest.raises(ValueError, match="choose from"):
        preset("nonsense")


def test_training_presets_are_dealt_in_turn_and_unknown_names_fail_first():
    import dataclasses

    from medcnncad.data.phantom import preset
    from medcnncad.training.data import phantom_cases

    cases = phantom_cases([10, 11, 12, 13, 14], "robust, robust-head")
    assert [c["preset"] for c in cases] == ["robust", "robust-head", "robust", "robust-head", "robust"]
    assert [c["seed"] for c in cases] == [10, 11, 12, 13, 14] and cases[1]["id"] == "robust-head-11"
    head = preset("robust-head")
    assert head.anatomies == ("colin27",) and head.skull_fraction > 0.5  # the only anatomy with a skull
    assert head != preset("clinical-like")  # the clinical-like test set's settings stay held out
    lgg = preset("robust-lgg")  # only the grade mix differs from "robust"
    assert lgg.hgg_fraction == 0.15 and dataclasses.replace(lgg, hgg_fraction=0.5) == preset("robust")
    jitter = preset("robust-jitter")  # only the contrast jitter differs from "robust"
    assert jitter.contrast_jitter == 0.25 and dataclasses.replace(jitter, contrast_jitter=0.15) == preset("robust")
    with pytest.raises(ValueError, match="'nonsense'"):
        phantom_cases([1], "robust,nonsense")


def test_a_phantom_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """An interrupt after two of the five files (a helper's SIGINT) left T1 and T1c of the new seed beside an older
    case's label: the files now appear together, and an earlier case stays as it was."""
    import medcnncad.data.phantom as phantom

    case = phantom.make_phantom(7)
    phantom.write_phantom(case, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    written = []
    real_write = phantom.write_image

    def interrupted(image, path, *args, **kwargs):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(path)
        return real_write(image, path, *args, **kwargs)

    monkeypatch.setattr(phantom, "write_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        phantom.write_phantom(phantom.make_phantom(8), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no staging folder left either
    assert sorted(before) == ["FLAIR.nii.gz", "T1.nii.gz", "T1c.nii.gz", "T2.nii.gz", "label.nii.gz"]
