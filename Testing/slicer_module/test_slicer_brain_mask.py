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


def _segmentation_on(scene, volume, name: str, box: tuple[slice, ...]):
    """A segmentation drawn with ``volume`` as its geometry (the Segment Editor's source volume): one "brain"
    segment, the voxels ``box`` of ``volume``'s (K, J, I) grid."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segment = node.GetSegmentation().AddEmptySegment("brain", "brain")
    array = np.zeros(slicer.util.arrayFromVolume(volume).shape, np.uint8)
    array[box] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(array, node, segment, volume)
    return node


def test_a_segmentation_drawn_on_another_grid_is_refused_as_a_label_map_or_file_there_is(scene, module, monkeypatch):
    """A mask drawn on a sequence that is not on the reference's grid (a T2 the engine registers, another study) is
    not the reader's mask once resampled by scanner coordinates: refused before the worker starts, as the same mask
    as a label map volume (and as a file on the command line) is; the scene as it was."""
    import SimpleITK as sitk

    from medcnncad.slicer import worker
    from medcnncad.slicer.adaptor import volume_node_to_image

    volumes, _ = _case(scene)
    t1c = volume_node_to_image(volumes["T1c"])
    coarse = sitk.Resample(t1c, [40, 40, 18], sitk.Transform(), sitk.sitkLinear, t1c.GetOrigin(),
                           tuple(2 * s for s in t1c.GetSpacing()), t1c.GetDirection())
    t2 = volume_from_image(coarse, "phantom T2, 2x coarser")
    mask = _segmentation_on(scene, t2, "drawn on T2", (slice(2, 16), slice(5, 35), slice(5, 35)))
    monkeypatch.setattr(worker, "WorkerClient", lambda *a, **k: pytest.fail("a worker started"))
    before = scene_fingerprint(scene)
    with pytest.raises(InputError, match=r"segment 'brain' of 'drawn on T2': not on the voxels of 'phantom T1c', "
                                         r"the run's reference \(spacing \(2\.4, 2\.4, 3\.81\) mm against "
                                         r"\(1\.2, 1\.2, 1\.91\) mm"):
        module.MedCNNCADLogic().startSegmentation(volumes, model="brats-robust-unet", device="cpu", brainMask=mask)
    assert scene_fingerprint(scene) == before


def test_a_segmentation_moved_by_whole_voxels_is_read_where_it_is_shown(scene, module):
    """A segmentation under a translation of two voxels along I is on the reference's voxels still: taken, moved."""
    import vtk

    from medcnncad.slicer.adaptor import ijk_to_world

    volumes, mask = _case(scene)
    shift = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "two voxels")
    matrix = vtk.vtkMatrix4x4()
    for row, value in enumerate(2 * ijk_to_world(volumes["T1c"])[:3, 0]):
        matrix.SetElement(row, 3, float(value))
    shift.SetMatrixTransformToParent(matrix)
    mask.SetAndObserveTransformNodeID(shift.GetID())
    choice = module.MedCNNCADLogic.brainMaskChoice(mask, None, volumes["T1c"])
    from SimpleITK import GetArrayViewFromImage

    chosen = GetArrayViewFromImage(choice.image)
    assert chosen[:, :, 2:42].all() and not chosen[:, :, :2].any() and not chosen[:, :, 42:].any()


def test_an_earlier_run_s_mask_on_a_reference_under_a_transform_is_on_its_voxels(scene, module):
    """The reference under a (not hardened) transform: the brain mask an earlier run added (drawn through the
    reference's world geometry) is taken, voxel for voxel."""
    import vtk

    from medcnncad.slicer.adaptor import world_geometry

    volumes, _ = _case(scene)
    turn = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "turn")
    rotation = vtk.vtkTransform()
    rotation.RotateZ(12.0)
    rotation.Translate(3.3, -1.7, 0.4)
    turn.SetMatrixTransformToParent(rotation.GetMatrix())
    volumes["T1c"].SetAndObserveTransformNodeID(turn.GetID())
    with world_geometry(volumes["T1c"]) as geometry:
        mask = _segmentation_on(scene, geometry, "MedCNNCAD brain mask", (slice(None), slice(None), slice(0, 40)))
    choice = module.MedCNNCADLogic.brainMaskChoice(mask, None, volumes["T1c"])
    from SimpleITK import GetArrayViewFromImage

    chosen = GetArrayViewFromImage(choice.image)
    assert chosen[:, :, :40].all() and not chosen[:, :, 40:].any()


def test_a_closed_surface_segment_has_no_grid_of_its_own_and_is_put_on_the_reference_s(scene, module):
    volumes, mask = _case(scene)
    mask.CreateClosedSurfaceRepresentation()
    mask.GetSegmentation().SetSourceRepresentationName("Closed surface")
    mask.GetSegmentation().RemoveRepresentation("Binary labelmap")
    choice = module.MedCNNCADLogic.brainMaskChoice(mask, None, volumes["T1c"])
    from SimpleITK import GetArrayViewFromImage

    chosen = GetArrayViewFromImage(choice.image)
    assert chosen[2:-2, 2:-2, 2:38].all() and not chosen[:, :, 42:].any()
