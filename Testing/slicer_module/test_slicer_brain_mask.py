"""The reader's brain mask in Slicer (real MRML, slicer-core): a segmentation's "brain" segment (an earlier run's
"MedCNNCAD brain mask", edited) or a channel to extract it from, in the console Logic and through the worker; the
mask node is read, never changed; a node that is no brain mask is refused before anything runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer")
import slicer  # noqa: E402
import slicer.util  # noqa: E402
from helpers import small_phantom  # noqa: E402
from slicer_scene import scene_fingerprint, volume_from_image  # noqa: E402
from test_module import _import_module_file  # noqa: E402

from medcnncad.errors import InputError  # noqa: E402


@pytest.fixture
def module():
    return _import_module_file()


def _case(scene) -> tuple[dict, object]:
    """T1c and FLAIR of the small held-out phantom as volumes, and a segmentation whose only segment "Brain"
    covers the columns I < 40 of their (37, 81, 80) grid."""
    images, _ = small_phantom()
    volumes = {name: volume_from_image(images[name], f"phantom {name}") for name in ("T1c", "FLAIR")}
    mask = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "edited brain")
    mask.CreateDefaultDisplayNodes()
    mask.SetReferenceImageGeometryParameterFromVolumeNode(volumes["T1c"])
    segment = mask.GetSegmentation().AddEmptySegment("Brain", "Brain")
    half = np.zeros(slicer.util.arrayFromVolume(volumes["T1c"]).shape, np.uint8)
    half[:, :, :40] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(half, mask, segment, volumes["T1c"])
    return volumes, mask


def _labels(nodes, volume) -> np.ndarray:
    return sum(slicer.util.arrayFromSegmentBinaryLabelmap(nodes.segmentation, n, volume).astype(int)
               for n in ("NCR", "ED", "ET"))


def test_the_console_logic_bounds_the_result_by_the_reader_s_segment_and_leaves_it_as_it_was(scene, module):
    volumes, mask = _case(scene)
    before = scene_fingerprint(scene)[mask.GetID()]
    before_voxels = slicer.util.arrayFromSegmentBinaryLabelmap(mask, "Brain", volumes["T1c"]).copy()
    logic = module.MedCNNCADLogic()
    nodes = logic.segment(volumes, model="brats-robust-unet", device="cpu", tta=False, precision="manifest",
                          brainMask=mask)
    labels = _labels(nodes, volumes["T1c"])
    assert labels[:, :, :40].any() and not labels[:, :, 40:].any()
    brain = slicer.util.arrayFromSegmentBinaryLabelmap(nodes.brain_mask, "brain", volumes["T1c"])
    np.testing.assert_array_equal(brain, before_voxels)
    step = next(s for s in nodes.result.preprocessing if s["step"] == "brain_mask")
    assert step["mode"] == "given" and step["source"] == "segment 'Brain' of 'edited brain'"
    assert scene_fingerprint(scene)[mask.GetID()] == before
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(mask, "Brain", volumes["T1c"]),
                                  before_voxels)


def test_the_worker_run_gets_the_same_mask(scene, module):
    volumes, mask = _case(scene)
    logic = module.MedCNNCADLogic()
    try:
        job = logic.startSegmentation(volumes, model="brats-robust-unet", device="cpu", tta=False,
                                      precision="manifest", brainMask=mask)
        assert (Path(job["folder"]) / "brain_mask.nrrd").is_file()
        nodes = None
        while nodes is None:
            nodes = logic.pollSegmentation(job)
        local = logic.segment(volumes, model="brats-robust-unet", device="cpu", tta=False, precision="manifest",
                              brainMask=mask)
        np.testing.assert_array_equal(_labels(nodes, volumes["T1c"]), _labels(local, volumes["T1c"]))
        step = next(s for s in nodes.result.preprocessing if s["step"] == "brain_mask")
        assert step["source"] == "segment 'Brain' of 'edited brain'"  # not the worker's temporary file
    finally:
        logic.shutdown()


def test_a_segment_named_brain_is_chosen_among_several(scene, module):
    volumes, mask = _case(scene)
    mask.GetSegmentation().AddEmptySegment("eyes", "eyes")
    choice = module.MedCNNCADLogic.brainMaskChoice(mask, None, volumes["T1c"])
    from SimpleITK import GetArrayViewFromImage

    chosen = GetArrayViewFromImage(choice.image)
    assert chosen[:, :, :40].all() and not chosen[:, :, 40:].any()


@pytest.mark.parametrize("how", ["two segments, none brain", "mask and channel", "channel not given"])
def test_a_choice_the_run_cannot_take_is_refused_before_the_worker_starts(scene, module, how, monkeypatch):
    volumes, mask = _case(scene)
    from medcnncad.slicer import worker

    monkeypatch.setattr(worker, "WorkerClient", lambda *a, **k: pytest.fail("a worker started"))
    if how == "two segments, none brain":
        mask.GetSegmentation().GetSegment("Brain").SetName("left")
        mask.GetSegmentation().AddEmptySegment("right", "right")
        kwargs, message = {"brainMask": mask}, r"segmentation 'edited brain' has segments \['left', 'right'\]"
    elif how == "mask and channel":
        kwargs, message = {"brainMask": mask, "brainMaskFrom": "T1c"}, "brain mask 'edited brain' and brain mask from"
    else:
        kwargs, message = {"brainMaskFrom": "T2"}, r"brain mask from T2: not one of the given sequences \(T1c, FLAIR\)"
    before = scene_fingerprint(scene)
    logic = module.MedCNNCADLogic()
    with pytest.raises(InputError, match=message):
        logic.startSegmentation(volumes, model="brats-robust-unet", device="cpu", **kwargs)
    assert scene_fingerprint(scene) == before
