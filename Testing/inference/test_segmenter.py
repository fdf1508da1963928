"""The inference pipeline with a stand-in network whose output is known voxel by voxel."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import make_image
from helpers import ThresholdNet, blob_manifest_dict, blob_segmenter, blob_volume

from medcnncad.errors import InputError, ModelError
from medcnncad.inference.postprocess import label_map_from_probabilities, label_map_from_probabilities_torch
from medcnncad.inference.segmenter import Segmenter
from medcnncad.models.loaded import LoadedModel
from medcnncad.models.manifest import parse_manifest
from medcnncad.models.preprocessing import build_preprocessing


def _segmenter(tmp_path, **pre) -> Segmenter:
    manifest = parse_manifest(blob_manifest_dict(**pre), tmp_path)
    model = LoadedModel(manifest, ThresholdNet(), build_preprocessing(manifest.preprocessing), "manifest", tmp_path)
    return Segmenter(model, device="cpu")


def _volume(shape=(20, 26, 30)) -> np.ndarray:
    rng = np.random.default_rng(0)
    vol = np.zeros(shape, np.float32)
    vol[5:15, 6:20, 8:25] = 1.0
    vol[8:11, 10:12, 3:6] = 0.8
    return vol + rng.uniform(-0.2, 0.2, shape).astype(np.float32) * (vol > 0)


# A direction with permuted, flipped axes: the pipeline must undo it exactly.
OBLIQUE = (0, -1, 0, 0, 0, 1, -1, 0, 0)


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1), OBLIQUE])
def test_reorientation_is_exactly_undone(tmp_path, direction):
    vol = _volume()
    image = make_image(vol, spacing=(0.9, 1.3, 2.0), origin=(10, -20, 5), direction=direction)
    seg = _segmenter(tmp_path, orientation="RAS")
    result = seg.run({"CT": image})
    np.testing.assert_array_equal(result.label_map, np.where(vol > 0.5, 3, 0))
    expected = 1 / (1 + np.exp(-40 * (vol.astype(np.float64) - 0.5)))
    np.testing.assert_allclose(result.probabilities["blob"], expected, atol=1e-5)
    assert result.label_map.shape == vol.shape
    assert result.reference.GetDirection() == pytest.approx(direction)


def test_crop_outside_is_background(tmp_path):
    vol = _volume()
    image = make_image(vol)
    result = _segmenter(tmp_path, crop_foreground={"enabled": True, "margin_vox": 1}).run({"CT": image})
    np.testing.assert_array_equal(result.label_map, np.where(vol > 0.5, 3, 0))
    assert float(result.probabilities["blob"][0, 0, 0]) == 0.0


def test_resampling_round_trip_keeps_shape(tmp_path):
    vol = np.zeros((24, 40, 40), np.float32)
    vol[6:18, 10:30, 10:30] = 1.0
    image = make_image(vol, spacing=(1.0, 1.0, 2.0))
    result = _segmenter(tmp_path, spacing_mm=[1.5, 1.5, 1.5]).run({"CT": image})
    truth = vol > 0.5
    pred = result.label_map == 3
    dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    assert dice > 0.95


def test_progress_reports_stages(tmp_path):
    seen = []
    _segmenter(tmp_path).run({"CT": make_image(_volume())}, progress=lambda s, f: seen.append((s, f)))
    stages = [s for s, _ in seen]
    assert stages[0] == "read" and stages[-1] == "done"
    inference = [f for s, f in seen if s == "inference"]
    assert inference[-1] == 1.0 and inference == sorted(inference)


def test_input_validation(tmp_path):
    seg = _segmenter(tmp_path)
    image = make_image(_volume())
    with pytest.raises(InputError, match=r"\['MR'\] not in model blob"):
        seg.run({"MR": image})
    with pytest.raises(InputError, match=r"needs input channel\(s\) \['CT'\]"):
        seg.run({})
    with pytest.raises(InputError, match="not found"):
        seg.run({"CT": str(tmp_path / "missing.nii.gz")})


def _two_channel(tmp_path) -> Segmenter:
    raw = blob_manifest_dict()
    raw["inputs"].append({"name": "PET", "modality": "PT", "required": False})
    raw["network"]["kwargs"]["in_channels"] = 2
    manifest = parse_manifest(raw, tmp_path)

    class FirstChannel(ThresholdNet):
        def forward(self, x):
            return super().forward(x[:, :1])

    return Segmenter(LoadedModel(manifest, FirstChannel(), build_preprocessing(manifest.preprocessing),
                                 "manifest", tmp_path), device="cpu")


def test_channels_on_other_grids(tmp_path, caplog):
    seg = _two_channel(tmp_path)
    vol = _volume()
    ct = make_image(vol)
    finer = sitk.Resample(ct, [n * 2 for n in ct.GetSize()], sitk.Transform(), sitk.sitkLinear, ct.GetOrigin(),
                          [s / 2 for s in ct.GetSpacing()], ct.GetDirection())
    with caplog.at_level(logging.WARNING):
        result = seg.run({"CT": ct, "PET": finer})
    assert any("resampled onto the grid of CT" in w for w in result.warnings)
    assert "resampled" in caplog.text
    far = make_image(vol, origin=(500, 500, 500))
    with pytest.raises(InputError, match="not in the same physical space"):
        seg.run({"CT": ct, "PET": far})


def test_optional_channel_missing_is_recorded(tmp_path):
    result = _two_channel(tmp_path).run({"CT": make_image(_volume())})
    assert result.missing_channels == ["PET"]
    assert result.label_map.max() == 3


def test_small_components_are_removed_from_the_label_map():
    from medcnncad.inference.segmenter import remove_small_components

    labels = np.zeros((10, 10, 10), np.uint8)
    labels[1:5, 1:5, 1:5] = 2   # 64 voxels
    labels[2:4, 2:4, 2:4] = 4   # inside the same component
    labels[8, 8, 8] = 1          # 1 voxel
    labels[7:9, 1:3, 1:3] = 1    # 8 voxels
    out = remove_small_components(labels.copy(), min_ml=0.008, voxel_ml=0.001)  # keep >= 8 voxels
    assert out[8, 8, 8] == 0 and (out[7:9, 1:3, 1:3] == 1).all() and (out[2:4, 2:4, 2:4] == 4).all()
    np.testing.assert_array_equal(remove_small_components(labels.copy(), 0.0, 0.001), labels)


def test_components_below_the_probability_floor_are_removed():
    from medcnncad.inference.segmenter import remove_small_components

    labels = np.zeros((10, 10, 10), np.uint8)
    fg = np.full(labels.shape, 0.1, np.float32)
    labels[1:4, 1:4, 1:4] = 2
    fg[1:4, 1:4, 1:4] = 0.3
    fg[2, 2, 2] = 0.62           # one confident voxel keeps the whole component (largest, not mean)
    labels[6:9, 6:9, 6:9] = 1
    fg[6:9, 6:9, 6:9] = 0.58     # never reaches 0.6: removed
    out = remove_small_components(labels.copy(), 0.0, 0.001, lambda mask: fg[mask], min_probability=0.6)
    assert (out[1:4, 1:4, 1:4] == 2).all() and not out[6:9, 6:9, 6:9].any()
    np.testing.assert_array_equal(remove_small_components(labels.copy(), 0.0, 0.001, lambda m: fg[m], 0.0), labels)


@pytest.mark.parametrize("floor, kept", [(0.0, (True, True, True)), (0.8, (True, True, False)),
                                         (0.95, (True, False, False))])
def test_manifest_probability_floor_removes_unsure_lesions(tmp_path, floor, kept):
    seg = blob_segmenter(tmp_path, min_lesion_probability=floor)
    vol = np.zeros((20, 20, 20), np.float32)
    boxes = [(slice(2, 6),) * 3, (slice(10, 14),) * 3, (slice(2, 6), slice(12, 16), slice(2, 6))]
    # blob probability sigmoid(40 (x - 0.5)): 1.0 -> ~1, 0.55 -> 0.881, 0.52 -> 0.690
    for box, value in zip(boxes, (1.0, 0.55, 0.52)):
        vol[box] = value
    result = seg.run({"CT": make_image(vol)})
    assert [bool((result.label_map[box] == 3).all()) for box in boxes] == list(kept)
    assert result.label_map.sum() == 3 * 64 * sum(kept)
    assert len([les for les in result.lesions if les.structure == "blob"]) == sum(kept)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_restrict_to_mask_sets_background_outside_only(tmp_path, activation):
    from medcnncad.inference.postprocess import restrict_to_mask

    raw = blob_manifest_dict()
    raw["postprocessing"]["activation"] = activation
    if activation == "sigmoid":
        raw["postprocessing"]["channels"] = [{"name": "blob", "value": 3}]
        raw["network"]["kwargs"]["out_channels"] = 1
    manifest = parse_manifest(raw, tmp_path)
    channels = len(raw["postprocessing"]["channels"])
    probs = np.full((channels, 2, 2, 3), 0.5, np.float32)
    uncertainty = np.full((2, 2, 3), 0.25, np.float32)
    label_map = np.full((2, 2, 3), 3, np.uint8)
    mask = np.zeros((2, 2, 3), np.uint8)
    mask[:, :, 0] = 1  # (K, J, I): the first column of I is inside
    restrict_to_mask(probs, label_map, mask, manifest, uncertainty)
    assert (probs[..., 0] == 0.5).all() and (uncertainty[..., 0] == 0.25).all()  # inside: untouched
    assert (label_map[..., 0] == 3).all() and (label_map[..., 1:] == 0).all()
    assert (probs[-1, ..., 1:] == 0).all() and (uncertainty[..., 1:] == 0).all()  # the blob channel, outside
    if activation == "softmax":
        assert (probs[0, ..., 1:] == 1).all()  # softmax background takes the rest


def test_results_inside_mask_no_lesion_outside_the_brain_mask(tmp_path, monkeypatch):
    """A brain mask from the clinical chain cuts the blob in two. The input is left unmasked (as if the
    network's receptive field saw past the mask), so without results_inside_mask the blob is found on both
    sides; with it nothing is found or has a probability outside, and the inside is the same."""
    vol = _volume()
    image = make_image(vol)
    mask = np.zeros(vol.shape, np.uint8)
    mask[:, :, :16] = 1  # (K, J, I): the blob spans i 8-24
    mask_image = sitk.GetImageFromArray(mask)
    mask_image.CopyInformation(image)
    monkeypatch.setattr("medcnncad.preprocessing.chain.extract_brain", lambda *a, **k: mask_image)
    monkeypatch.setattr("medcnncad.preprocessing.chain.apply_mask", lambda image, mask: image)
    results = {}
    for inside in (False, True):
        raw = blob_manifest_dict()
        raw["clinical_preprocessing"] = {"background": "keep", "registration": "none", "brain_mask": "always",
                                         "results_inside_mask": inside}
        manifest = parse_manifest(raw, tmp_path)
        model = LoadedModel(manifest, ThresholdNet(), build_preprocessing(manifest.preprocessing), "manifest",
                            tmp_path)
        results[inside] = Segmenter(model, device="cpu").run({"CT": image})
    assert (results[False].label_map[:, :, 16:] == 3).sum() == 10 * 14 * 9  # vol[5:15, 6:20, 16:25]
    assert (results[True].label_map[:, :, 16:] == 0).all()
    assert (results[True].probabilities["blob"][:, :, 16:] == 0).all()
    np.testing.assert_array_equal(results[True].label_map[:, :, :16], results[False].label_map[:, :, :16])
    assert (results[True].label_map == 3).sum() > 0


class _CountedNet(ThresholdNet):
    """:class:`ThresholdNet`'s two channels cut or padded to ``channels``; counts its calls."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels, self.calls = channels, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = super().forward(x)
        return torch.cat([out, out[:, 1:]], dim=1)[:, :self.channels]


@pytest.mark.parametrize("resident", [False, True])
@pytest.mark.parametrize("channels, gives", [(1, "1 output channel"), (3, "3 output channels")])
def test_a_network_giving_another_output_count_than_its_manifest_stops_at_the_first_window(tmp_path, resident,
                                                                                          channels, gives):
    """One channel where the manifest declares two was broadcast into both (softmax 1 everywhere: an empty label
    map without a word); three failed in the stitching. Both are a ModelError naming the model and the counts,
    raised on the first window (the blob volume takes 8 windows), in the host and the resident path."""
    manifest = parse_manifest(blob_manifest_dict(), tmp_path)
    network = _CountedNet(channels)
    segmenter = Segmenter(LoadedModel(manifest, network, build_preprocessing(manifest.preprocessing), "manifest",
                                      tmp_path), device="cpu", resident=resident)
    with pytest.raises(ModelError) as refused:
        segmenter.run({"CT": make_image(blob_volume())})
    assert str(refused.value) == (f"model 'blob' ({tmp_path}): its network gives {gives}, but its manifest "
                                  f"declares 2 (background, blob)")
    assert network.calls == 1


def test_a_format_predictor_giving_another_output_count_is_refused_by_name(tmp_path):
    """The nnU-Net path (the format's own predictor returns probabilities): one channel for two declared."""
    manifest = parse_manifest(blob_manifest_dict(), tmp_path)

    def predict(images: np.ndarray, spacing: tuple, mirror: bool, device: torch.device) -> np.ndarray:
        return np.ones((1, *images.shape[1:]), np.float32)

    model = LoadedModel(manifest, ThresholdNet(), build_preprocessing(manifest.preprocessing), "nnunet", tmp_path,
                        predict=predict)
    with pytest.raises(ModelError, match=r"^model 'blob' \(.*\): its network gives 1 output channel, but its "
                                         r"manifest declares 2 \(background, blob\)$"):
        Segmenter(model, device="cpu").run({"CT": make_image(blob_volume())})


def _nested_sigmoid_manifest(tmp_path, outputs: list[tuple[str, int]]):
    """The blob manifest as a BraTS-style sigmoid model: labels NCR 1, ED 2, ET 4, one output per ``outputs``."""
    raw = blob_manifest_dict()
    raw["labels"] = [{"name": n, "value": v, "color": [1, 0, 0]} for n, v in (("NCR", 1), ("ED", 2), ("ET", 4))]
    raw["regions"] = [{"name": "WT", "labels": [1, 2, 4]}, {"name": "TC", "labels": [1, 4]}]
    raw["network"]["kwargs"]["out_channels"] = len(outputs)
    raw["postprocessing"] = {"activation": "sigmoid", "channels": [{"name": n, "value": v} for n, v in outputs]}
    return parse_manifest(raw, tmp_path)


# four voxels (K, J, I) = (1, 1, 4): outside the tumor, whole tumor only, core (not enhancing), enhancing
_NESTED = {"WT": [0.1, 0.9, 0.9, 0.9], "TC": [0.1, 0.1, 0.9, 0.9], "ET": [0.1, 0.1, 0.1, 0.9]}


@pytest.mark.parametrize("order, labels", [
    (["WT", "TC", "ET"], [0, 2, 1, 4]),  # outermost first: each voxel gets its innermost output's value
    (["TC", "WT", "ET"], [0, 2, 2, 4]),  # the core listed before the whole tumor holding it is painted over
])
def test_an_own_manifest_paints_overlapping_sigmoid_outputs_in_list_order(tmp_path, order, labels):
    """An own manifest declares no paint order (the schema has no ``paint_order``): its channels are the network's
    outputs in order and are painted in that order, later ones winning, so nested outputs are listed outermost
    first (docs/manifest.md). Only a bundle's engine-made manifest carries a painting order of its own."""
    values = {"WT": 2, "TC": 1, "ET": 4}
    manifest = _nested_sigmoid_manifest(tmp_path, [(name, values[name]) for name in order])
    assert manifest.postprocessing.painting() == (0, 1, 2)
    probs = np.array([_NESTED[name] for name in order], np.float32).reshape(3, 1, 1, 4)
    assert label_map_from_probabilities(probs, manifest).ravel().tolist() == labels
    assert label_map_from_probabilities_torch(torch.from_numpy(probs), manifest).ravel().tolist() == labels


def test_an_own_manifest_cannot_declare_a_paint_order(tmp_path):
    raw = blob_manifest_dict()
    raw["postprocessing"]["paint_order"] = [1, 0]
    with pytest.raises(ModelError, match=r"postprocessing: Additional properties are not allowed \('paint_order'"):
        parse_manifest(raw, tmp_path)
