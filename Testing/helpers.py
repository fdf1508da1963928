"""Small builders shared by the tests (manifests, stand-in networks, phantoms)."""

from __future__ import annotations

import copy
import csv
import functools
import json
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser

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


def demo_model_unsnapped():
    """The demo model's weights with 1.0.0's preprocessing: MONAI's transforms only, without 1.0.1's
    interpolation-residue snap (``residue_fraction``, not a MONAI transform). It is what :func:`write_bundle`'s
    bundle runs, and the case where bf16 measurably moves its probabilities past the gate's 0.02."""
    import dataclasses

    from medcnncad.models.preprocessing import build_preprocessing
    from medcnncad.models.registry import load_model

    model = load_model("brats-demo-unet")
    assert model.manifest.preprocessing.residue_fraction  # else this helper is not needed
    pre = dataclasses.replace(model.manifest.preprocessing, residue_fraction=None)
    return dataclasses.replace(model, manifest=dataclasses.replace(model.manifest, preprocessing=pre),
                               preprocess=build_preprocessing(pre))


def write_bundle(folder: Path, code: bool = True) -> Path:
    """A model-zoo style bundle wrapping the demo model's weights, with its preprocessing as MONAI transforms (1.0.0's:
    without 1.0.1's residue snap, which is not a MONAI transform; compare with :func:`demo_model_unsnapped`)."""
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


def classify_segmenter(tmp_path, network):
    """A CPU Segmenter of the blob manifest with the given network (grade-classifier tests)."""
    from medcnncad.inference.segmenter import Segmenter
    from medcnncad.models.loaded import LoadedModel
    from medcnncad.models.manifest import parse_manifest
    from medcnncad.models.preprocessing import build_preprocessing

    manifest = parse_manifest(blob_manifest_dict(), tmp_path)
    return Segmenter(LoadedModel(manifest, network, build_preprocessing(manifest.preprocessing), "manifest",
                                 tmp_path), device="cpu")


def blob_volume() -> np.ndarray:
    """A 10 x 12 x 14 block of ones in a (20, 24, 28) float32 volume."""
    vol = np.zeros((20, 24, 28), np.float32)
    vol[5:15, 6:18, 8:22] = 1.0
    return vol


def classifier_dict(mask_channel: bool = True) -> dict:
    """A tiny DenseNet grade classifier manifest for the blob structure (random weights)."""
    return {
        "schema_version": 1, "id": "tiny-grade", "version": "0.0.1", "task": "classification",
        "trained_on": "nothing (random weights, for tests)",
        "inputs": [{"name": "CT", "modality": "CT"}],
        "classes": [{"name": "low"}, {"name": "high"}], "positive_class": "high",
        "lesion_structure": "blob", "lesion_label_values": [3],
        "patch": {"size_vox": [8, 8, 8], "spacing_mm": [2.0, 2.0, 2.0], "mask_channel": mask_channel},
        "network": {"class": "monai.networks.nets.DenseNet",
                    "kwargs": {"spatial_dims": 3, "in_channels": 1 + int(mask_channel), "out_channels": 2,
                               "init_features": 4, "growth_rate": 2, "block_config": [1, 1], "bn_size": 1}},
        "calibration": {"method": "temperature", "temperature": 2.0},
        "operating_point": {"threshold": 0.5},
        "weights": {"file": "model.pt", "sha256": "0" * 64},
    }


def write_classifier(folder, data: dict | None = None):
    """Write the classifier's manifest and seeded random weights into ``folder``."""
    from medcnncad.models.manifest import sha256_file
    from medcnncad.models.weights import build_network

    data = data or classifier_dict()
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = build_network(data["network"]["class"], data["network"]["kwargs"])
    torch.save(net.state_dict(), folder / "model.pt")
    data["weights"]["sha256"] = sha256_file(folder / "model.pt")
    (folder / "manifest.json").write_text(json.dumps(data))
    return folder


AUTO3DSEG_LABEL_COLUMNS = ["LabelValue", "Name", "SegmentedPropertyCategoryCodeSequence.CodingSchemeDesignator",
                 "SegmentedPropertyCategoryCodeSequence.CodeValue", "SegmentedPropertyCategoryCodeSequence.CodeMeaning",
                 "SegmentedPropertyTypeCodeSequence.CodingSchemeDesignator",
                 "SegmentedPropertyTypeCodeSequence.CodeValue", "SegmentedPropertyTypeCodeSequence.CodeMeaning"]


def write_auto3dseg_model(folder: Path, in_channels: int, labels: dict[int, str], sigmoid: bool = False,
                          network_extra: dict | None = None, **config) -> Path:
    """A random-weight SegResNetDS checkpoint in the extension's exact layout."""
    folder.mkdir(parents=True)
    out = len(labels) if sigmoid else len(labels) + 1
    network = {"_target_": "SegResNetDS", "init_filters": 8, "blocks_down": [1, 1, 1], "norm": "INSTANCE",
               "in_channels": in_channels, "out_channels": out, "dsdepth": 1}
    torch.manual_seed(in_channels * 10 + out)
    net = ConfigParser(network).get_parsed_content()
    network.update(network_extra or {})  # e.g. a "$" expression: the same network, but code in the config
    full = {"network": network, "normalize_mode": "meanstd", "intensity_bounds": [0.0, 300.0], "roi_size": [32, 32, 32],
            "resample_resolution": [1.0, 1.0, 1.2], "crop_foreground": True, "orientation_ras": False,
            "sigmoid": sigmoid, "extra_modalities": {}, "bundle_root": str(folder), **config}
    torch.save({"state_dict": net.state_dict(), "config": full, "epoch": 3, "best_metric": 0.5}, folder / "model.pt")
    with open(folder / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(AUTO3DSEG_LABEL_COLUMNS)
        for value, name in labels.items():
            writer.writerow([value, name, "SCT", "49755003", "Morphologically Altered Structure", "SCT", "108369006",
                             "Neoplasm"])
    return folder
