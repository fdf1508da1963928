"""Streaming sliding-window inference equals MONAI's sliding_window_inference, row by row."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import small_phantom
from monai.inferers import sliding_window_inference

from medcnncad.inference.policy import PROB_TOL
from medcnncad.inference.segmenter import Segmenter, label_map_from_probabilities
from medcnncad.inference.stitch import stream_sliding_window
from medcnncad.models.registry import load_model


def _net(c_in: int = 2, c_out: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(c_in, 4, 3, padding=1), torch.nn.Tanh(),
                               torch.nn.Conv3d(4, c_out, 3, padding=1)).eval()


@pytest.mark.parametrize("shape, roi, overlap, mode, batch", [
    ((2, 40, 33, 27), (16, 16, 16), 0.25, "gaussian", 1),
    ((2, 10, 50, 20), (16, 16, 16), 0.5, "constant", 3),   # smaller than a window on two axes: padding
    ((2, 64, 48, 40), (32, 24, 24), 0.5, "gaussian", 4),
    ((2, 16, 16, 16), (16, 16, 16), 0.25, "gaussian", 1),  # one window
])
def test_stream_equals_monai_sliding_window_inference(shape, roi, overlap, mode, batch):
    net = _net()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    rows: list[tuple[int, int]] = []
    got = torch.full((3, *shape[1:]), float("nan"))

    def sink(i0: int, i1: int, value: torch.Tensor) -> None:
        rows.append((i0, i1))
        got[:, i0:i1] = value

    with torch.no_grad():
        reference = sliding_window_inference(x[None], roi, batch, net, overlap=overlap, mode=mode)[0]
        stream_sliding_window(x, net, roi, overlap, mode, sink, sw_batch_size=batch)
    assert torch.allclose(got, reference, atol=2e-6, rtol=0)
    # every row exactly once, in order, never more than a window's depth at a time
    assert rows[0][0] == 0 and rows[-1][1] == shape[1]
    assert all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
    assert all(0 < i1 - i0 <= 16 for i0, i1 in rows)  # sink_rows


def test_chunked_label_map_equals_a_full_argmax():
    from pathlib import Path

    from helpers import blob_manifest_dict

    from medcnncad.models.manifest import parse_manifest

    manifest = parse_manifest(blob_manifest_dict(), Path("."))
    n = len(manifest.postprocessing.channels)
    probs = np.random.default_rng(0).random((n, 37, 11, 9)).astype(np.float32)
    values = np.array([c.value for c in manifest.postprocessing.channels], np.uint8)
    assert np.array_equal(label_map_from_probabilities(probs, manifest, rows=5), values[np.argmax(probs, axis=0)])


def test_float16_probabilities_pass_the_accuracy_gate_on_the_demo_model():
    images, _ = small_phantom()
    model = load_model("brats-demo-unet")
    full = Segmenter(model, "cpu").run(images)
    half = Segmenter(model, "cpu", probability_dtype="float16").run(images)
    for name, p in half.probabilities.items():
        assert p.dtype == np.float16 and full.probabilities[name].dtype == np.float32
        assert np.abs(p.astype(np.float32) - full.probabilities[name]).max() < 0.002  # half precision: 2^-11
    for value in (1, 2, 4):
        a, b = full.label_map == value, half.label_map == value
        if a.any():
            assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.999
    assert 0.002 < PROB_TOL


def test_identical_grid_hands_on_the_stitched_array_and_equals_resampling(monkeypatch):
    """Model grid == input grid: no resampling, no copy; the values equal SimpleITK's resampling path."""
    import medcnncad.inference.resample as resample

    images, _ = small_phantom()
    segmenter = Segmenter(load_model("brats-demo-unet"), "cpu", probability_dtype="float16")
    pre = segmenter.model.preprocess(__import__("medcnncad.models.preprocessing", fromlist=["x"]).to_metatensor(
        [images[c.name] for c in segmenter.manifest.inputs]))
    probs = segmenter._infer(pre.as_tensor(), lambda s, f: None, [])
    grid = __import__("SimpleITK").Image([int(v) for v in probs.shape[1:]], 0)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(pre.affine, np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    grid.SetSpacing(tuple(spacing)), grid.SetOrigin(tuple(lps[:3, 3]))
    grid.SetDirection(tuple((lps[:3, :3] / spacing).ravel()))
    direct = segmenter._to_input_grid(probs, pre.affine, grid)
    assert np.shares_memory(direct, probs.numpy())  # the very array the stitcher filled
    monkeypatch.setattr(resample, "same_space", lambda a, b: False)
    resampled = segmenter._to_input_grid(probs, pre.affine, grid)
    assert not np.shares_memory(resampled, probs.numpy())
    assert np.abs(direct.astype(np.float32) - resampled.astype(np.float32)).max() < 2e-3  # float16 steps
    assert np.allclose(direct.astype(np.float32).sum(0), 1.0, atol=3e-3)  # background = 1 - foreground
