"""Lesion descriptors: radiomics against numpy by hand, masked pooling by hand, stable vectors (same input ->
same vector), and report.json's retrieval block with a thumbnail per lesion."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import make_image
from helpers import blob_manifest_dict, blob_segmenter
from monai.networks.nets import UNet

from medcnncad.io.images import write_image
from medcnncad.models.loaded import LoadedModel
from medcnncad.models.manifest import parse_manifest
from medcnncad.models.preprocessing import build_preprocessing
from medcnncad.pipeline.case import process_case
from medcnncad.retrieval.descriptors import (
    _pool,
    case_descriptors,
    encoder_layers,
    lesion_masks,
    radiomics_features,
    radiomics_names,
    thumbnail,
)


def _volume() -> np.ndarray:
    """(K, J, I) = (30, 40, 40): a ramp background in (0.05, 0.45), a ball of radius 6 and a 3x3x3 cube above 0.5."""
    k, j, i = np.mgrid[:30, :40, :40]
    image = 0.05 + 0.4 * i / 40.0
    image[(k - 15) ** 2 + (j - 20) ** 2 + (i - 12) ** 2 <= 36] = 0.9
    image[14:17, 19:22, 30:33] = 0.8
    return image.astype(np.float32)


def _unet_model(tmp_path) -> LoadedModel:
    raw = blob_manifest_dict()
    manifest = parse_manifest(raw, tmp_path)
    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
    return LoadedModel(manifest, net.eval(), build_preprocessing(manifest.preprocessing), "manifest", tmp_path)


@pytest.fixture()
def result(tmp_path):
    image = make_image(_volume(), spacing=(1.0, 1.0, 2.0))
    return blob_segmenter(tmp_path).run({"CT": image}), image


def test_radiomics_by_hand(result, tmp_path):
    res, image = result
    described = case_descriptors(res)
    assert [d.lesion_id for d in described] == [1, 2] and all(d.deep is None for d in described)
    ball = np.zeros((30, 40, 40), bool)
    k, j, i = np.mgrid[:30, :40, :40]
    ball[(k - 15) ** 2 + (j - 20) ** 2 + (i - 12) ** 2 <= 36] = True
    first = described[0]
    assert first.structure == "any" and list(first.radiomics) == radiomics_names(res.manifest)
    assert first.volume_ml == pytest.approx(ball.sum() * 2.0 / 1000)  # voxel 1 x 1 x 2 mm
    assert first.radiomics["log_volume_ml"] == pytest.approx(math.log1p(ball.sum() * 2.0 / 1000))
    assert first.radiomics["fraction_blob"] == 1.0
    values = _volume()
    z = (values - values.mean()) / values.std()  # every voxel is non-zero: z-scored over all of them
    assert first.radiomics["CT_mean"] == pytest.approx(float(z[ball].mean()), rel=1e-5)
    assert first.radiomics["CT_std"] == pytest.approx(0.0, abs=1e-5)
    assert described[1].volume_ml == pytest.approx(27 * 2.0 / 1000)
    assert 0.8 < first.radiomics["roundness"] < 1.2  # a ball (ITK estimates the perimeter of a digital shape)


def test_masked_pooling_by_hand():
    feature = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[0.0, -1.0], [5.0, 2.0]]]])  # (C=2, 1, 2, 2)
    weight = torch.tensor([[[0.5, 0.0], [1.0, 0.0]]])  # lesion share of each feature voxel
    pooled = _pool(feature, weight)
    # mean = sum(w f) / sum(w): channel 0 (0.5*1 + 1*3) / 1.5, channel 1 (0 + 5) / 1.5; max over w > 0
    np.testing.assert_allclose(pooled, [3.5 / 1.5, 5 / 1.5, 3.0, 5.0], rtol=1e-6)
    assert _pool(feature, torch.zeros_like(weight)).tolist() == [0.0] * 4


def test_deep_descriptors_are_stable_and_lesion_specific(result, tmp_path):
    res, _ = result
    model = _unet_model(tmp_path)
    assert len(encoder_layers(model.network)) == 3
    first, again = case_descriptors(res, model), case_descriptors(res, model)
    assert first[0].deep.shape == (2 * (8 + 16),) and first[0].deep.dtype == np.float32
    for a, b in zip(first, again):  # same input -> same vector
        assert np.array_equal(a.deep, b.deep) and a.radiomics == b.radiomics
        assert np.array_equal(a.thumbnail, b.thumbnail)
    assert not np.allclose(first[0].deep, first[1].deep)
    assert encoder_layers(torch.nn.Conv3d(1, 1, 1)) == []


def test_thumbnail_outlines_the_lesion():
    image = make_image(_volume())
    mask = np.zeros((30, 40, 40), bool)
    mask[10:20, 15:25, 8:16] = True
    thumb = thumbnail(image, mask, size=48)
    assert thumb.shape == (48, 48) and thumb.dtype == np.uint8
    assert (thumb == 255).any() and thumb.max() == 255 and (thumb < 255).sum() > 48 * 48 // 2


def test_report_json_gets_the_descriptors_and_thumbnails(tmp_path):
    path = write_image(make_image(_volume()), tmp_path / "ct.nii.gz")
    segmenter = blob_segmenter(tmp_path)
    report = process_case(segmenter, {"CT": str(path)}, tmp_path / "out")
    block = report["retrieval"]
    assert block["descriptor_version"] == "1" and block["structure"] == "any"
    assert block["given_inputs"] == ["CT"]  # what the run was given: a library query compares it with its cases'
    assert [les["lesion_id"] for les in block["lesions"]] == [1, 2]
    ids = {les["id"] for les in report["lesions"] if les["structure"] == "any"}
    assert ids == {1, 2}  # the same numbering as the lesion table
    assert {"lesions", "case", "model", "outputs"} <= set(report)  # the existing keys stay
    png = sitk.ReadImage(str(tmp_path / "out" / "lesion_1.png"))
    assert png.GetSize() == (96, 96) and report["outputs"]["lesion_1"] == "lesion_1.png"
    again = process_case(segmenter, {"CT": str(path)}, tmp_path / "out2")
    assert again["retrieval"]["lesions"] == block["lesions"]
    assert json.loads((tmp_path / "out" / "report.json").read_text())["retrieval"] == block
    assert report["timings_s"]["retrieval_descriptors"] > 0 and report["timings_s"]["write"] >= 0


def test_descriptors_computed_by_the_writer_equal_those_handed_to_it(tmp_path):
    """process_case lets the writer compute the descriptors while the volumes compress; the report is the
    same as with descriptors computed first."""
    from medcnncad.reporting.case_outputs import write_case_outputs

    segmenter = blob_segmenter(tmp_path)
    result = segmenter.run({"CT": make_image(_volume())}, keep_network_input=True)
    first = case_descriptors(result, segmenter.model, segmenter.device)
    calls = []

    def later():
        calls.append(1)
        return case_descriptors(result, segmenter.model, segmenter.device)

    given = write_case_outputs(result, tmp_path / "given", descriptors=first)
    computed = write_case_outputs(result, tmp_path / "computed", descriptors=later)
    a, b = (json.loads(o.files["report"].read_text()) for o in (given, computed))
    assert calls == [1] and a["retrieval"] == b["retrieval"] and a["retrieval"]["lesions"]
    assert "retrieval_descriptors" in b["timings_s"] and "retrieval_descriptors" not in a["timings_s"]
    assert sorted(p.name for p in (tmp_path / "computed").iterdir()) == sorted(given.files[k].name for k in given.files)


def test_radiomics_on_the_lesion_box_equal_the_whole_grid(result):
    """The features are computed on the lesion's box plus 2 voxels; the whole grid gives the same values."""
    res, _ = result
    _, masks = lesion_masks(res.label_map, res.manifest)
    for mask in masks:
        boxed = radiomics_features(mask, res.label_map, res.reference, res.images, res.manifest)
        whole = radiomics_features(mask, res.label_map, res.reference, res.images, res.manifest, margin=None)
        for name in boxed:
            assert boxed[name] == pytest.approx(whole[name], rel=1e-5, abs=1e-6), name


def test_only_the_largest_lesions_are_described(result):
    """A scattered label map (30 one-voxel specks and one big lesion) costs MAX_DESCRIBED_LESIONS masks and
    windows at most; the ids still point at the lesion table's rows."""
    import numpy as np

    from medcnncad.retrieval.descriptors import MAX_DESCRIBED_LESIONS, described_lesions

    res, _ = result
    labels = np.zeros((20, 40, 40), np.uint8)
    labels[2:8, 2:8, 2:8] = res.manifest.labels[0].value  # id 1: the big one (components are numbered in scan order)
    for n in range(30):
        labels[12 + (n % 2) * 4, 2 + (n // 15) * 20, 5 + (n % 15) * 2] = res.manifest.labels[0].value
    _, chosen = described_lesions(labels, res.manifest)
    ids = [i for i, _ in chosen]
    assert len(ids) == MAX_DESCRIBED_LESIONS and ids == sorted(ids) and ids[0] == 1
    assert int(chosen[0][1].sum()) == 216 and all(int(m.sum()) == 1 for _, m in chosen[1:])


def test_described_lesions_labelled_in_their_box_are_the_whole_grid_s_largest(result):
    """The lesions are labelled inside the structure's box only (speed): the chosen ids and masks are those of
    labelling the whole grid (``lesion_masks``), ties between equal sizes included, on a map whose lesions sit
    away from the grid's corner and include a non-retrieval label that must not join them."""
    import numpy as np

    from medcnncad.retrieval.descriptors import (
        MAX_DESCRIBED_LESIONS,
        described_lesions,
        lesion_masks,
        retrieval_structure,
    )

    res, _ = result
    value = res.manifest.labels[0].value
    rng = np.random.default_rng(7)
    labels = np.zeros((30, 50, 60), np.uint8)
    for _ in range(40):  # blobs of 1 to 27 voxels, several of equal size, some touching
        k, j, i = rng.integers(5, 25), rng.integers(10, 45), rng.integers(12, 55)
        n = int(rng.integers(1, 4))
        labels[k:k + n, j:j + n, i:i + n] = value
    retrieved = res.manifest.structures()[retrieval_structure(res.manifest)]
    other = [x.value for x in res.manifest.labels if x.value not in retrieved]
    if other:
        labels[0:2, 0:2, 0:2] = other[0]
    _, whole = lesion_masks(labels, res.manifest)
    sizes = np.array([int(m.sum()) for m in whole])
    expected = sorted(int(i) + 1 for i in np.argsort(-sizes, kind="stable")[:MAX_DESCRIBED_LESIONS])
    _, chosen = described_lesions(labels, res.manifest)
    assert len(whole) > MAX_DESCRIBED_LESIONS and len(set(sizes.tolist())) < len(sizes)
    assert [i for i, _ in chosen] == expected
    for index, mask in chosen:
        assert mask.shape == labels.shape and np.array_equal(mask, whole[index - 1])


def test_the_segmentation_s_network_input_gives_the_same_deep_descriptors(tmp_path):
    """Reusing the network input the Segmenter kept (no second preprocessing) changes no value; the
    engine's crop (another grid) keeps nothing."""
    from dataclasses import replace

    from medcnncad.inference.segmenter import Segmenter

    def not_again(_images):
        raise AssertionError("preprocessed a second time")

    model = _unet_model(tmp_path)
    image = make_image(_volume(), spacing=(1.0, 1.0, 2.0))
    segmenter = Segmenter(model, "cpu")
    kept = segmenter.run({"CT": image}, keep_network_input=True)
    plain = segmenter.run({"CT": image})
    assert plain.network_input is None and kept.network_input[0].shape[0] == 1
    assert kept.network_input[1].shape == (4, 4)
    described = case_descriptors(kept, replace(model, preprocess=not_again))
    for a, b in zip(case_descriptors(plain, model), described, strict=True):
        assert np.array_equal(a.deep, b.deep) and a.radiomics == b.radiomics
    cropped = Segmenter(model, "cpu", crop_foreground=True).run({"CT": image}, keep_network_input=True)
    assert cropped.network_input is None


def test_a_lesion_box_z_scored_with_the_whole_image_s_statistics_is_that_box_of_the_z_scored_image():
    from medcnncad.retrieval.descriptors import _zscore_stats, _zscored

    volume = _volume()
    volume[:, :, :5] = 0.0  # background that the statistics leave out
    image = make_image(volume)
    box = (slice(3, 17), slice(10, 31), slice(4, 22))  # (I, J, K) of the SimpleITK image
    whole = sitk.GetArrayFromImage(_zscored(image))[box[2], box[1], box[0]]
    boxed = sitk.GetArrayFromImage(_zscored(image[box], _zscore_stats(image)))
    assert np.array_equal(boxed, whole) and (boxed == 0).any() and not np.array_equal(
        boxed, sitk.GetArrayFromImage(_zscored(image[box])))  # the box's own statistics differ
    inside = volume[volume != 0]
    assert _zscore_stats(image) == pytest.approx((inside.mean(), inside.std()), rel=1e-6)
    assert _zscore_stats(make_image(np.zeros((3, 3, 3), np.float32))) == (0.0, 1.0)


def test_the_deep_descriptors_stop_after_the_encoder_with_the_values_of_a_full_pass(result, tmp_path, monkeypatch):
    """The forward pass stops once the bottom block has run: the decoder never runs, and every vector equals
    the one pooled from a full pass of the network."""
    import medcnncad.retrieval.descriptors as descriptors

    res, _ = result
    model = _unet_model(tmp_path)
    decoder_calls = []
    model.network.model[2].register_forward_hook(lambda *_: decoder_calls.append(1))  # the last up-sampling block
    early = case_descriptors(res, model)
    assert len(early) == 2 and decoder_calls == []
    monkeypatch.setattr(descriptors, "_encoder_pass", lambda network, window: network(window))
    with pytest.raises(descriptors._EncoderDone):  # the stop is the hook's doing: a plain pass hits it too
        case_descriptors(res, model)
    monkeypatch.setattr(descriptors, "_stop_forward", lambda *_: None)
    full = case_descriptors(res, model)
    assert decoder_calls  # this time the whole network ran
    for a, b in zip(early, full, strict=True):
        assert np.array_equal(a.deep, b.deep)
