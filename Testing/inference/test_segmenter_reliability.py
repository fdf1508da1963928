"""The bad-input corpus through the engine API and the Slicer Logic (slicer-core): only the
engine's own errors, and the scene unchanged by every failure."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from bad_inputs import CORRUPTIONS, FORMATS, _brain, _corrupt_file, _image

from medcnncad.errors import InputError, MedCNNCADError
from medcnncad.inference.segmenter import Segmenter
from medcnncad.io.images import read_volume
from medcnncad.models.registry import load_model


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_reader_api(tmp_path, fmt, kind):
    path = _corrupt_file(fmt, kind, tmp_path, labels=False)
    if CORRUPTIONS[kind] == "error":
        with pytest.raises(InputError, match="bad"):
            read_volume(path)
    else:
        try:
            assert read_volume(path).GetDimension() == 3
        except InputError:
            pass


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter(load_model("demo"), "cpu")


def _inputs(**override):
    images = {n: _image(_brain(seed=i)) for i, n in enumerate(("T1", "T1c", "T2", "FLAIR"))}
    images.update(override)
    return images


@pytest.mark.parametrize("name, image, message", [
    ("nan", _image(np.full((20, 24, 24), np.nan, np.float32)), "NaN"),
    ("2d", sitk.GetImageFromArray(np.ones((24, 24), np.float32)), "3D scalar"),
    ("vector", sitk.Compose([_image(_brain())] * 2), "3D scalar"),
    ("disjoint", _image(_brain(), origin=(900.0, 0.0, 0.0)), "same physical space"),
])
def test_segmenter_api_errors(segmenter, name, image, message):
    with pytest.raises(InputError, match=message):
        segmenter.run(_inputs(T1c=image))


def test_all_zero_input_gives_an_empty_result(segmenter):
    zeros = _image(np.zeros((20, 24, 24), np.float32))
    result = segmenter.run({n: zeros for n in ("T1", "T1c", "T2", "FLAIR")})
    assert result.label_map.max() == 0 and not result.lesions
    assert any("no non-zero voxels" in w for w in result.warnings)


@pytest.mark.parametrize("failures", [1, 2])
def test_injected_cuda_out_of_memory_falls_back_with_the_same_result(monkeypatch, failures):
    """One failure: one window at a time, stitched on the CPU. Two reach the last resort (the whole run on
    the CPU): the result says where it ran, the segmenter (cached per process) keeps its device and its
    network stays where it was."""
    images = _inputs()
    reference = Segmenter(load_model("demo"), "cpu").run(images)
    faulty = Segmenter(load_model("demo"), "cpu")
    forward = faulty.network.forward
    calls = {"n": 0}

    def failing(x):
        calls["n"] += 1
        if calls["n"] <= failures:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return forward(x)

    monkeypatch.setattr(faulty.network, "forward", failing)
    device, home = faulty.device, next(faulty.network.parameters()).device
    result = faulty.run(images)
    assert [w for w in result.warnings if "out of memory" in w] == [
        "out of memory on cpu; retrying with one window at a time and stitching on the CPU",
        "out of memory on cpu again; running on the CPU"][:failures]
    assert result.device == "cpu" and faulty.device == device
    assert next(faulty.network.parameters()).device == home
    np.testing.assert_array_equal(result.label_map, reference.label_map)
    np.testing.assert_allclose(result.probabilities["ET"], reference.probabilities["ET"], atol=1e-6)


def test_memory_estimate_refuses_before_work(monkeypatch, segmenter):
    import medcnncad.inference.inputs

    monkeypatch.setattr(medcnncad.inference.inputs, "available_memory_bytes", lambda: 1024)
    with pytest.raises(InputError, match="GiB of memory"):
        segmenter.run(_inputs())


slicer = pytest.importorskip("slicer")


def test_slicer_logic_failures_leave_the_scene_unchanged():
    import slicer.util
    from slicer_scene import new_scene, scene_fingerprint, volume_from_image

    from medcnncad.slicer.logic import SecondReaderLogic

    scene = new_scene()
    volumes = {n: volume_from_image(_image(_brain(seed=i)), n) for i, n in enumerate(("T1", "T1c", "T2", "FLAIR"))}
    logic = SecondReaderLogic()
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no image data")
    nan = slicer.util.addVolumeFromArray(np.full((20, 24, 24), np.nan, np.float32), name="nan")
    far = volume_from_image(_image(_brain(), origin=(900.0, 0.0, 0.0)), "far")
    for bad, message in ((empty, "no image data"), (nan, "NaN"), (far, "same physical space")):
        before = scene_fingerprint(scene)
        with pytest.raises(MedCNNCADError, match=message):
            logic.segment(dict(volumes, T1c=bad), model="demo", device="cpu")
        assert scene_fingerprint(scene) == before
    with pytest.raises(MedCNNCADError, match="needs input channel"):
        logic.segment({"T1": volumes["T1"]}, model="demo", device="cpu")
    run = logic.segment(volumes, model="demo", device="cpu")  # and a good run still works
    assert run.segmentation.GetSegmentation().GetNumberOfSegments() == 3


def test_files_read_two_at_a_time_give_the_same_result_and_name_the_first_bad_file(segmenter, tmp_path):
    images = _inputs()
    paths = {}
    for name, image in images.items():
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        sitk.WriteImage(image, paths[name])
    from_files = segmenter.run(paths)
    in_memory = segmenter.run(images)
    np.testing.assert_array_equal(from_files.label_map, in_memory.label_map)
    for channel, probs in in_memory.probabilities.items():
        np.testing.assert_array_equal(from_files.probabilities[channel], probs)
    for name in ("T2", "T1c"):  # two broken files: the error names the first in the model's order (T1c)
        (tmp_path / f"{name}.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="T1c.nii.gz"):
        segmenter.run(paths)
