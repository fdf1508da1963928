"""A reader's choice of the brain mask (``BrainMaskChoice``): their own mask used as it is, or the sequence deepbet
reads; refused, before any step runs, where the case cannot take it."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from medcnncad.errors import InputError
from medcnncad.models.manifest import ClinicalPreprocessing
from medcnncad.preprocessing import chain
from medcnncad.preprocessing.brain_mask import BrainMaskChoice, given_mask
from medcnncad.preprocessing.chain import prepare_case

SPEC = ClinicalPreprocessing(registration="none", brain_mask="always")


def _image(value: float, size: tuple[int, int, int] = (20, 16, 12), spacing: float = 2.0) -> sitk.Image:
    """A (K, J, I) = (12, 16, 20) volume, 2 mm voxels: a 'head' of ``value`` on a zero background, a brighter block
    in it."""
    array = np.zeros(size[::-1], np.float32)
    array[1:11, 2:14, 2:18] = value
    array[3:9, 4:12, 5:15] = 3 * value
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((spacing,) * 3)
    image.SetOrigin((-10.0, 4.0, 7.5))
    return image


def _mask_like(image: sitk.Image, pixel=np.uint8, value: float = 1) -> sitk.Image:
    """A mask of the block (K 2:10, J 3:13, I 4:16) on ``image``'s grid: 8 x 10 x 12 = 960 voxels of 8 mm^3."""
    array = np.zeros(sitk.GetArrayViewFromImage(image).shape, pixel)
    array[2:10, 3:13, 4:16] = value
    mask = sitk.GetImageFromArray(array)
    mask.CopyInformation(image)
    return mask


def _no_deepbet(monkeypatch) -> None:
    monkeypatch.setattr(chain, "extract_brain", lambda *a, **k: pytest.fail("deepbet ran"))


def test_a_given_mask_is_used_as_it_is_without_deepbet(monkeypatch):
    _no_deepbet(monkeypatch)
    images = {"T1c": _image(10.0), "T2": _image(20.0)}
    mask = _mask_like(images["T1c"], np.float32, 0.5)  # any non-zero value is brain
    prepared = prepare_case(images, SPEC, choice=BrainMaskChoice(image=mask, name="brain mask corrected.nrrd"))
    inside = sitk.GetArrayViewFromImage(mask) != 0
    for name, image in images.items():
        out = sitk.GetArrayViewFromImage(prepared.images[name])
        np.testing.assert_array_equal(out[inside], sitk.GetArrayViewFromImage(image)[inside])
        assert not out[~inside].any()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(prepared.brain_mask), inside.astype(np.uint8))
    step = prepared.steps[-1]
    assert step.applied and step.detail == {"mode": "given", "source": "brain mask corrected.nrrd",
                                            "method": "given by the reader", "brain_ml": 7.7}  # 960 x 8 mm^3
    assert prepared.warnings == [
        "clinical preprocessing: the brain mask was given (brain mask corrected.nrrd, 8 mL); everything outside it was "
        "set to 0 (brain_mask.nii.gz / the 'brain' segment shows it)",
        "clinical preprocessing: the given brain mask holds 8 mL, where an adult brain holds 0.6 to 2.2 L: is it the "
        "brain mask of this case (not a tumor segmentation, nor a partial one)? Nothing outside it was segmented"]


def test_a_given_mask_is_used_even_where_the_model_would_see_a_skull_stripped_head(monkeypatch):
    _no_deepbet(monkeypatch)
    images = {"T1c": _image(10.0)}
    prepared = prepare_case(images, ClinicalPreprocessing(registration="none"),  # auto: this small head needs none
                            choice=BrainMaskChoice(image=_mask_like(images["T1c"])))
    assert prepared.brain_mask is not None and prepared.steps[-1].detail["mode"] == "given"
    default = prepare_case(images, ClinicalPreprocessing(registration="none"))
    assert default.brain_mask is None and not default.steps[-1].applied


def _spy(monkeypatch) -> list[str]:
    read: list[str] = []

    def fake(image, source, dilate, use_gpu):
        read.append(source)
        return _mask_like(image)

    monkeypatch.setattr(chain, "extract_brain", fake)
    return read


def test_deepbet_reads_the_sequence_the_reader_chose(monkeypatch):
    read = _spy(monkeypatch)
    images = {"T1c": _image(10.0), "T2": _image(20.0)}
    default = prepare_case(images, SPEC)
    chosen = prepare_case(images, SPEC, choice=BrainMaskChoice(source="T1c"))
    assert read == ["input T2", "input T1c"]  # the model's rule takes T2 before T1c
    assert default.steps[-1].detail["source_chosen_by"] == "the model's rule"
    assert chosen.steps[-1].detail["source"] == "T1c"
    assert chosen.steps[-1].detail["source_chosen_by"] == "the reader"
    assert chosen.warnings[-1].startswith("clinical preprocessing: brain extracted from T1c (8 mL, deepbet)")


def _never_registered(monkeypatch) -> None:
    monkeypatch.setattr(chain, "_registration", lambda *a, **k: pytest.fail("registration ran"))
    monkeypatch.setattr(chain, "_background", lambda *a, **k: pytest.fail("the chain started"))


@pytest.mark.parametrize(("choice", "message"), [
    (lambda im: BrainMaskChoice(source="FLAIR"), r"brain mask from FLAIR: not one of the given sequences \(T1c, T2\)"),
    (lambda im: BrainMaskChoice(image=_mask_like(_image(10.0, spacing=1.0)), name="brain mask m.nii.gz"),
     r"brain mask m.nii.gz: not on the grid of input T1c, the case's reference \(size \(20, 16, 12\), spacing \(1, 1"),
    (lambda im: BrainMaskChoice(image=_mask_like(im, value=0), name="brain mask m.nii.gz"),
     r"brain mask m.nii.gz: the mask is empty or nearly so \(0\.000% of the volume\)"),
    (lambda im: BrainMaskChoice(image=sitk.Cast(im * 0 + 1, sitk.sitkUInt8), name="brain mask m.nii.gz"),
     r"brain mask m.nii.gz: the mask covers 100\.0% of the volume"),
    (lambda im: BrainMaskChoice(image=_mask_like(im, np.float32, np.nan), name="brain mask m.nii.gz"),
     r"brain mask m.nii.gz: contains NaN or infinite voxel values"),
    (lambda im: BrainMaskChoice(image=sitk.Image([20, 16], sitk.sitkUInt8), name="brain mask m.png"),
     r"brain mask m.png: a brain mask must be one 3D scalar volume \(got 2D with 1 component"),
])
def test_a_choice_the_case_cannot_take_is_refused_before_the_chain_starts(monkeypatch, choice, message):
    _never_registered(monkeypatch)
    images = {"T1c": _image(10.0), "T2": _image(20.0)}
    with pytest.raises(InputError, match=message):
        prepare_case(images, ClinicalPreprocessing(), choice=choice(images["T1c"]))


def test_a_mask_and_a_sequence_together_are_refused():
    with pytest.raises(InputError, match="brain mask x.nrrd: give a brain mask or a sequence to extract it from, not "
                                         r"both \(sequence T1c\)"):
        BrainMaskChoice(source="T1c", image=_mask_like(_image(1.0)), name="brain mask x.nrrd")


@pytest.mark.parametrize(("spec", "said"), [(None, "absent"), (ClinicalPreprocessing(brain_mask="never"), "never")])
def test_a_model_that_extracts_no_brain_refuses_a_choice(spec, said):
    with pytest.raises(InputError, match=f"model m extracts no brain \\(its manifest's clinical_preprocessing."
                                         f"brain_mask is {said}\\)"):
        chain.check_choice({"T1c": _image(1.0)}, spec, BrainMaskChoice(source="T1c"), "model m")
    chain.check_choice({"T1c": _image(1.0)}, spec, None, "model m")  # no choice: nothing to refuse


def test_a_mask_a_hair_off_the_grid_is_taken_and_put_on_the_reference_s_geometry():
    """same_space's tolerance (origin within 1e-3 mm): the mask gets the reference's exact geometry."""
    reference = _image(10.0)
    mask = _mask_like(reference)
    mask.SetOrigin(tuple(np.add(reference.GetOrigin(), (5e-4, 0.0, 0.0))))
    out = given_mask(BrainMaskChoice(image=mask), reference, "T1c")
    assert out.GetOrigin() == reference.GetOrigin() and out.GetPixelID() == sitk.sitkUInt8


def _stored_otherwise(mask: sitk.Image, flip: tuple[bool, bool, bool] = (False, False, False),
                      order: tuple[int, int, int] = (0, 1, 2)) -> sitk.Image:
    """``mask``'s voxels, each where it was in space, stored with its axes in another direction (``flip``) and order
    (``order``, I J K): what a tool that writes RAS (or another axis order) makes of an LPS mask."""
    return sitk.PermuteAxes(sitk.Flip(mask, list(flip)), list(order))


@pytest.mark.parametrize(("flip", "order"), [((True, False, False), (0, 1, 2)), ((True, True, False), (0, 1, 2)),
                                             ((False, False, True), (1, 0, 2)), ((False, True, False), (2, 0, 1))])
def test_a_mask_of_the_same_voxels_stored_in_another_axis_direction_or_order_is_taken_voxel_for_voxel(flip, order):
    reference = _image(10.0)
    mask = _mask_like(reference)
    mask[4, 5, 6] = 0  # no symmetry to hide a wrong flip
    stored = _stored_otherwise(mask, flip, order)
    assert stored.GetDirection() != reference.GetDirection()
    out = given_mask(BrainMaskChoice(image=stored), reference, "T1c")
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(out), sitk.GetArrayViewFromImage(mask))
    assert out.GetOrigin() == reference.GetOrigin() and out.GetDirection() == reference.GetDirection()


@pytest.mark.parametrize("how", ["half a voxel off", "one slice short", "spacing halved"])
def test_a_mask_in_another_direction_whose_voxels_are_not_the_reference_s_is_still_refused(how):
    reference = _image(10.0)
    stored = _stored_otherwise(_mask_like(reference), (True, False, False))
    if how == "half a voxel off":
        stored.SetOrigin(tuple(np.add(stored.GetOrigin(), (1.0, 0.0, 0.0))))  # 2 mm voxels
    elif how == "one slice short":
        stored = stored[:, :, 1:]
    else:
        stored.SetSpacing((1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="not on the grid of input T1c"):
        given_mask(BrainMaskChoice(image=stored), reference, "T1c")


def test_a_sequence_chosen_for_a_head_the_model_sees_skull_stripped_is_not_passed_over_without_a_word(monkeypatch):
    """The model's auto rule extracts no brain from a skull-stripped head: the reader who named the sequence deepbet
    should read is told why their choice changed nothing, and how to bound the run all the same."""
    read = _spy(monkeypatch)
    images = {"T1c": _image(10.0), "T2": _image(20.0)}
    prepared = prepare_case(images, ClinicalPreprocessing(registration="none"), choice=BrainMaskChoice(source="T1c"))
    step = prepared.steps[-1]
    assert read == [] and not step.applied and step.detail["source_chosen_by"] == "the reader"
    assert prepared.warnings == [
        "clinical preprocessing: no brain extracted from T1c (your choice): the head is already skull-stripped (7 mL "
        "of foreground, the model extracts the brain above 2200 mL); to bound the run, give a brain mask of your own "
        "(--brain-mask FILE; Slicer: the Brain mask selector)"]
    default = prepare_case(images, ClinicalPreprocessing(registration="none"))
    assert default.warnings == []  # the model's own rule, passed over as before: nothing to tell
