"""Small builders shared by the tests (manifests, stand-in networks, phantoms)."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "Resources" / "Models" / "brats-demo-unet"
TEMPLATE = ROOT / "Resources" / "ModelTemplates" / "brats-demo-unet.json"


def blob_manifest_dict(**pre) -> dict:
    """A one-channel, one-label manifest (weights block is a placeholder)."""
    return {
        "schema_version": 1, "id": "blob", "version": "0.0.1", "task": "segmentation",
        "inputs": [{"name": "CT", "modality": "CT"}],
        "labels": [{"name": "blob", "value": 3, "color": [1, 0, 0]}],
        "regions": [{"name": "any", "labels": [3]}],
        "preprocessing": {"normalization": {"method": "none"}, **pre},
        "network": {"class": "monai.networks.nets.UNet",
                    "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8],
                               "strides": [2]}},
        "inference": {"roi_size": [16, 16, 16], "overlap": 0.25, "blend_mode": "constant"},
        "postprocessing": {"activation": "softmax",
                           "channels": [{"name": "background", "value": 0}, {"name": "blob", "value": 3}]},
        "weights": {"file": "model.pt", "sha256": "0" * 64},
    }


class ThresholdNet(torch.nn.Module):
    """Stand-in network: logits that make softmax(blob) = sigmoid(40 (x - 0.5)) exactly per voxel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-20 * (x - 0.5), 20 * (x - 0.5)], dim=1)


def blob_segmenter(folder: Path, inference: dict | None = None, **postprocessing):
    """A CPU Segmenter of the blob manifest with :class:`ThresholdNet` (P(blob) = sigmoid(40 (x - 0.5))
    per voxel), ``inference`` and ``postprocessing`` entries added to its manifest."""
    from medcnncad.inference.segmenter import Segmenter
    from medcnncad.models.loaded import LoadedModel
    from medcnncad.models.manifest import parse_manifest
    from medcnncad.models.preprocessing import build_preprocessing

    raw = blob_manifest_dict()
    raw["inference"].update(inference or {})
    raw["postprocessing"].update(postprocessing)
    manifest = parse_manifest(raw, folder)
    return Segmenter(LoadedModel(manifest, ThresholdNet(), build_preprocessing(manifest.preprocessing), "manifest",
                                 folder), device="cpu")


@functools.lru_cache(maxsize=4)
def small_phantom(seed: int = 900_001):
    """A held-out phantom cropped to a 96 x 96 x 72 mm box around its tumor (fast to segment)."""
    from medcnncad.data.phantom import cropped_phantom

    return cropped_phantom(seed)


def write_bundle(folder: Path, code: bool = True) -> Path:
    """A model-zoo style bundle wrapping the demo model's weights, with the same preprocessing."""
    manifest = json.loads((DEMO_MODEL / "manifest.json").read_text())
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "models" / "model.pt").write_bytes((DEMO_MODEL / "model.pt").read_bytes())
    kwargs = copy.deepcopy(manifest["network"]["kwargs"])
    metadata = {
        "name": "Demo bundle", "version": "0.1.0", "description": "demo UNet as a bundle (synthetic phantoms)",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": 4,
                                 "channel_def": {"0": "T1", "1": "T1c", "2": "T2", "3": "FLAIR"}}},
            "outputs": {"pred": {"type": "image", "num_channels": 4,
                                 "channel_def": {"0": "background", "1": "NCR", "2": "ED", "3": "ET"}}}},
    }
    inference = {
        "bundle_root": ".",
        "device": "$torch.device('cpu')" if code else "cpu",
        "network_def": {"_target_": "UNet", **kwargs},
        "network": "$@network_def.to(@device)" if code else "@network_def",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 1.5], "mode": "bilinear"},
            {"_target_": "CropForegroundd", "keys": "image", "source_key": "image", "margin": 4,
             "allow_smaller": True},
            {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True}]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [96, 96, 96], "sw_batch_size": 1,
                    "overlap": 0.25, "mode": "gaussian"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]},
    }
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=1))
    (folder / "configs" / "inference.json").write_text(json.dumps(inference, indent=1))
    return folder
