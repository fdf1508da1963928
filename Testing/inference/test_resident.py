"""The GPU-resident case's stages (run here on the CPU): the same numbers as the SimpleITK/numpy path."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import small_phantom

from medcnncad.inference.resample import to_input_grid, to_input_grid_torch
from medcnncad.inference.segmenter import Segmenter
from medcnncad.metrics.segmentation import dice_per_label
from medcnncad.models.preprocessing import ras_affine, to_metatensor
from medcnncad.models.registry import load_model


def _tilted(image: sitk.Image, degrees: float = 12.0) -> sitk.Image:
    """``image`` on a grid rotated about its centre and with another spacing (a user's oblique scan)."""
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(np.radians(degrees), np.radians(degrees / 2), 0.0)
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
    rotation.SetCenter(centre)
    direction = np.asarray(rotation.GetMatrix()).reshape(3, 3) @ np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = (1.3, 0.9, 2.2)
    size = [int(n * s / t) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing(spacing)
    grid.SetDirection(tuple(direction.ravel()))
    grid.SetOrigin(tuple(np.asarray(centre) - direction @ (np.asarray(spacing) * (np.asarray(size) - 1) / 2)))
    return sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, 0.0)


@pytest.fixture(scope="module")
def network_output():
    images, _ = small_phantom()
    images = {name: _tilted(image) for name, image in images.items()}
    segmenter = Segmenter(load_model("brats-demo-unet"), "cpu")
    ordered = [images[c.name] for c in segmenter.manifest.inputs]
    pre = segmenter.model.preprocess(to_metatensor(ordered))
    probs = segmenter._infer(pre.as_tensor(), lambda s, f: None, [])
    return segmenter, probs, torch.as_tensor(pre.affine, dtype=torch.float64), ordered[0]


def test_torch_resampling_back_equals_simpleitk(network_output):
    segmenter, probs, affine, reference = network_output
    expected = to_input_grid(segmenter.manifest, probs, affine, reference)
    got = to_input_grid_torch(segmenter.manifest, probs, affine, reference)
    assert got.shape == expected.shape and got.dtype == probs.dtype  # (C, K, J, I)
    difference = np.abs(got.numpy() - expected)
    # equal to float32 rounding except within half a voxel of the network grid's lower faces (see the docstring)
    assert np.quantile(difference, 0.999) < 1e-4
    assert difference.max() < 0.02
    assert np.allclose(got.numpy().sum(0), 1.0, atol=1e-5)  # background = 1 - foreground
    labels = [c.value for c in segmenter.manifest.postprocessing.channels]
    dice = dice_per_label(got.numpy().argmax(0), expected.argmax(0), list(range(1, len(labels))))
    assert min(dice.values()) > 0.999


def test_torch_resampling_of_raw_channels_and_of_the_same_grid(network_output):
    segmenter, probs, affine, reference = network_output
    spread = probs[1:2].clone()
    got = to_input_grid_torch(segmenter.manifest, spread, affine, reference, raw=True)
    expected = to_input_grid(segmenter.manifest, spread, affine, reference, raw=True)
    assert np.quantile(np.abs(got.numpy() - expected), 0.999) < 1e-4
    same = sitk.Image([int(v) for v in probs.shape[1:]], sitk.sitkUInt8)  # the network grid itself
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine.numpy()
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    same.SetSpacing(tuple(spacing)), same.SetOrigin(tuple(lps[:3, 3])), same.SetDirection(
        tuple((lps[:3, :3] / spacing).ravel()))
    got = to_input_grid_torch(segmenter.manifest, probs, affine, same).numpy()
    np.testing.assert_array_equal(got[1:], probs[1:].permute(0, 3, 2, 1).numpy())  # foreground: the array itself
    np.testing.assert_allclose(got, to_input_grid(segmenter.manifest, probs, affine, same), atol=1e-6)


def _grid(size, spacing, origin) -> sitk.Image:
    image = sitk.Image([int(v) for v in size], sitk.sitkUInt8)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


@pytest.mark.parametrize("spacing, origin", [
    ((0.5, 0.5, 0.5), (0.0, 0.0, 0.0)),  # 0.5 mm voxels: the last one exactly on the buffer's upper edge
    ((0.7, 1.3, 0.9), (-6.0, -4.5, -3.0)),       # reaching past every face of the network grid
])
def test_torch_resampling_keeps_simpleitks_buffer_rule_at_every_face(spacing, origin):
    """Random probabilities (no smooth zero border to hide the field-of-view edges)."""
    manifest = load_model("brats-demo-unet").manifest
    generator = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn((4, 32, 24, 20), generator=generator) * 3, 0)  # (C, I', J', K'), 1 mm
    affine = torch.as_tensor(np.diag([-1.0, -1.0, 1.0, 1.0]), dtype=torch.float64)  # LPS grid at the origin, RAS
    size = [int(round(n / s)) + (4 if s != 0.5 else 0) for n, s in zip((32, 24, 20), spacing)]
    reference = _grid(size, spacing, origin)
    expected = to_input_grid(manifest, probs, affine, reference)
    got = to_input_grid_torch(manifest, probs, affine, reference).numpy()
    outside = expected[0] == 1.0  # background only: beyond the network grid
    assert outside.any() and (~outside).any()
    assert np.abs(got - expected).max() < 1e-5


@pytest.fixture(scope="module")
def tilted_case():
    images, _ = small_phantom()
    return {name: _tilted(image) for name, image in images.items()}


def test_a_resident_run_equals_the_host_run(tilted_case):
    """The resident case's path (torch resampling back, probabilities kept where they were stitched), run here
    on the CPU, gives the host path's labels, probabilities and uncertainty."""
    model = load_model("brats-demo-unet")
    host = Segmenter(model, "cpu").run(tilted_case, tta=True)
    resident = Segmenter(model, "cpu", resident=True)
    assert not Segmenter(model, "cpu").resident  # the default off a GPU
    result = resident.run(tilted_case, tta=True)
    assert result.execution_policy["resident"] is True and host.execution_policy["resident"] is False
    np.testing.assert_array_equal(result.label_map, host.label_map)
    for name, probability in host.probabilities.items():
        assert np.abs(result.probabilities[name].astype(np.float32) - probability.astype(np.float32)).max() < 1e-4
    assert np.abs(result.uncertainty - host.uncertainty).max() < 1e-4
    assert not any("out of memory" in w for w in result.warnings)


def test_out_of_memory_moves_a_stage_to_the_cpu_and_says_so(tilted_case, monkeypatch):
    import medcnncad.inference.resident as resident

    def full(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    model = load_model("brats-demo-unet")
    host = Segmenter(model, "cpu").run(tilted_case)
    monkeypatch.setattr(resident, "to_input_grid_torch", full)
    result = Segmenter(model, "cpu", resident=True).run(tilted_case)
    assert [w for w in result.warnings if "out of memory" in w] == [
        "out of memory on cpu in resampling back to the input grid; that stage ran on the CPU"]
    np.testing.assert_array_equal(result.label_map, host.label_map)

    calls = []

    def preprocess(image):  # runs out of memory on the (meta) device, works on the CPU
        calls.append(image.device.type)
        if image.device.type != "cpu":
            raise torch.OutOfMemoryError("simulated")
        return image * 2

    warnings: list[str] = []
    image = to_metatensor([sitk.Image([4, 3, 2], sitk.sitkFloat32) + 1.0])
    out = resident.preprocess_on(preprocess, image, torch.device("meta"), warnings)
    assert calls == ["meta", "cpu"] and out.device.type == "cpu" and float(out.max()) == 2.0
    assert warnings == ["out of memory on meta in preprocessing; that stage ran on the CPU"]


def test_out_of_memory_in_the_passes_runs_them_again_on_the_host():
    import medcnncad.inference.resident as resident

    image = torch.rand((1, 6, 5, 4), generator=torch.Generator().manual_seed(0))
    calls = []

    def infer(x, report, on_device):  # out of memory while on the device; fine held on the host
        calls.append(on_device)
        if on_device:
            raise torch.OutOfMemoryError("simulated")
        return torch.stack([1 - x[0], x[0]])

    warnings: list[str] = []
    mean, spread = resident.averaged_on_device(infer, image, [(), (1,)], 0, lambda s, f: None, torch.float32, True,
                                               warnings)
    assert calls == [True, False, False]  # the device pass, then both passes on the host
    torch.testing.assert_close(mean[1], image[0])  # flipping is undone: both passes agree
    assert warnings == ["out of memory on cpu in test-time augmentation; that stage ran on the CPU"]


def test_a_failure_inside_monais_compose_on_the_device_falls_back():
    """MONAI's Compose wraps what a transform raises in a RuntimeError; the out-of-memory cause is still seen."""
    from monai.transforms import Compose, Lambda

    import medcnncad.inference.resident as resident

    def on_device_only_fails(x):
        if x.device.type != "cpu":
            raise torch.OutOfMemoryError("simulated")
        return x + 1

    warnings: list[str] = []
    image = to_metatensor([sitk.Image([4, 3, 2], sitk.sitkFloat32)])
    out = resident.preprocess_on(Compose([Lambda(on_device_only_fails)]), image, torch.device("meta"), warnings)
    assert float(out.max()) == 1.0
    assert warnings == ["out of memory on meta in preprocessing; that stage ran on the CPU"]

    def needs_host_arrays(x):
        return np.asarray(x) + 1  # as a bundle's ToNumpyd would: fails for device tensors

    warnings.clear()
    out = resident.preprocess_on(Compose([Lambda(needs_host_arrays)]), image, torch.device("meta"), warnings)
    assert float(np.max(out)) == 1.0 and len(warnings) == 1 and "in preprocessing" in warnings[0]


@pytest.mark.parametrize("pixel", [sitk.sitkFloat32, sitk.sitkFloat64, sitk.sitkInt16, sitk.sitkUInt16, sitk.sitkUInt8,
                                   sitk.sitkInt32])
def test_the_network_input_made_on_a_device_equals_the_hosts(pixel):
    """The resident case casts and transposes each image on the device; here the device is the CPU, through the
    same code: the float32 values, their (C, I, J, K) order and the affine are the host path's, bit for bit."""
    rng = np.random.default_rng(int(pixel))
    images = []
    for _ in range(3):
        kji = rng.normal(300.0, 400.0, (5, 7, 9)) if pixel in (sitk.sitkFloat32, sitk.sitkFloat64) else \
            rng.integers(0, 250, (5, 7, 9))
        kji[0, 0, 0] = 16777217 if pixel in (sitk.sitkFloat64, sitk.sitkInt32) else kji[0, 0, 0]  # 2^24+1: rounds
        image = sitk.Cast(sitk.GetImageFromArray(kji), pixel)
        image.SetSpacing((0.9, 1.1, 3.0))
        image.SetOrigin((10.0, -20.0, 5.0))
        images.append(image)
    by_numpy = np.stack([sitk.GetArrayViewFromImage(image).astype(np.float32).transpose(2, 1, 0)
                         for image in images])  # numpy's cast and transpose: the reference
    host = to_metatensor(images)
    made = to_metatensor(images, torch.device("cpu"))
    for tensor in (host, made):
        assert tensor.dtype == torch.float32 and tensor.shape == (3, 9, 7, 5) and tensor.is_contiguous()
        np.testing.assert_array_equal(tensor.as_tensor().numpy(), by_numpy)
    assert torch.equal(made.affine, host.affine)
    np.testing.assert_array_equal(host.affine.numpy(), ras_affine(images[0]))
    assert float(made[0, 0, 0, 0]) == float(np.float32(sitk.GetArrayViewFromImage(images[0])[0, 0, 0]))


def test_reading_onto_the_device_falls_back_to_the_host_when_out_of_memory(monkeypatch):
    import medcnncad.inference.resident as resident

    real = resident.to_metatensor
    calls = []

    def full_on_device(images, device=None):
        calls.append(device)
        if device is not None:
            raise torch.OutOfMemoryError("simulated")
        return real(images)

    monkeypatch.setattr(resident, "to_metatensor", full_on_device)
    warnings: list[str] = []
    image = sitk.Image([4, 3, 2], sitk.sitkFloat32) + 2.0
    out = resident.network_input_on([image], torch.device("meta"), warnings)
    assert calls == [torch.device("meta"), None] and out.device.type == "cpu" and float(out.max()) == 2.0
    assert warnings == ["out of memory on meta in reading the inputs onto the device; that stage ran on the CPU"]


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_labels_made_with_torch_equal_the_numpy_rule_ties_included(activation, dtype):
    from pathlib import Path

    from helpers import blob_manifest_dict

    from medcnncad.inference.postprocess import label_map_from_probabilities, label_map_from_probabilities_torch
    from medcnncad.models.manifest import parse_manifest

    raw = blob_manifest_dict()
    raw["postprocessing"] = {"activation": activation, "threshold": 0.5, "channels": [
        {"name": "background", "value": 0}, {"name": "blob", "value": 3}, {"name": "core", "value": 5}]}
    raw["labels"].append({"name": "core", "value": 5, "color": [0, 1, 0]})
    if activation == "sigmoid":
        raw["postprocessing"]["channels"] = raw["postprocessing"]["channels"][1:]
    raw["network"]["kwargs"]["out_channels"] = len(raw["postprocessing"]["channels"])
    manifest = parse_manifest(raw, Path("."))
    n = len(manifest.postprocessing.channels)
    # quarter steps: many voxels where two or three channels tie, and values exactly at the threshold
    probs = (np.random.default_rng(1).integers(0, 5, (n, 13, 11, 9)) / 4).astype(dtype)
    expected = label_map_from_probabilities(probs, manifest, rows=4)
    got = label_map_from_probabilities_torch(torch.from_numpy(probs), manifest)
    assert got.dtype == torch.uint8
    np.testing.assert_array_equal(got.numpy(), expected)
    if activation == "softmax":
        tied = (probs == probs.max(0)).sum(0) > 1
        assert tied.mean() > 0.2 and set(np.unique(expected[tied])) <= {0, 3}  # ties go to the first channel
