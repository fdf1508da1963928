"""Auto3DSeg SegResNet model folders (SlicerMONAIAuto3DSeg's ``model.pt`` + ``labels.csv`` layout):
the engine's output equals the extension's own inference pipeline, re-created here from
``Scripts/auto3dseg_segresnet_inference.py`` (lassoan/SlicerMONAIAuto3DSeg, commit be8e4f2) with
MONAI's dictionary transforms: labels identical, probabilities within 1e-4. (The extension writes NRRD
and MONAI reads it with ITK, absent here; the reference reads NIfTI with nibabel: same voxel order
and RAS affine.)
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import write_auto3dseg_model
from monai.data import decollate_batch, list_data_collate
from monai.inferers import SlidingWindowInfererAdapt
from monai.transforms import (
    Compose,
    ConcatItemsd,
    CropForegroundd,
    EnsureTyped,
    Invertd,
    Lambdad,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
)
from monai.utils import convert_to_dst_type

from medcnncad.errors import ModelError, TrustError
from medcnncad.inference.segmenter import Segmenter
from medcnncad.models.auto3dseg import auto3dseg_hash
from medcnncad.models.registry import describe_model, load_model, model_format
from medcnncad.models.trust import add_trusted_hash


def write_case(folder: Path, channels: int, lps_flip: bool = False) -> list[Path]:
    """NIfTI inputs (I, J, K) = (56, 52, 40) at 1 x 1 x 1.2 mm: a body off-centre on zero background
    (so the foreground crop, margin 10, cuts every axis) with a bright ball in it."""
    rng = np.random.default_rng(channels)
    zz, yy, xx = np.indices((40, 52, 56))
    body = ((zz - 17) / 7) ** 2 + ((yy - 22) / 11) ** 2 + ((xx - 30) / 10) ** 2 < 1
    ball = (zz - 16) ** 2 + (yy - 24) ** 2 + (xx - 29) ** 2 < 25
    paths = []
    for index in range(channels):
        array = (body * (100 + 10 * rng.standard_normal(body.shape)) + ball * (60 + 20 * index)).astype(np.float32)
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((1.0, 1.0, 1.2))
        image.SetOrigin((-10.0, 4.0, 7.0))
        if lps_flip:  # a non-RAS/LPS-aligned direction, so that orientation_ras has work to do
            image.SetDirection((-1.0, 0, 0, 0, 1.0, 0, 0, 0, -1.0))
        paths.append(folder / f"input{index}.nii.gz")
        sitk.WriteImage(image, str(paths[-1]))
    return paths


def _normalisation(ts: list, key: str, mode: str, bounds) -> None:
    if mode in ("range", "ct"):
        ts.append(ScaleIntensityRanged(keys=key, a_min=bounds[0], a_max=bounds[1], b_min=-1, b_max=1, clip=False))
        ts.append(Lambdad(keys=key, func=torch.sigmoid))
    elif mode in ("meanstd", "mri"):
        ts.append(NormalizeIntensityd(keys=key, nonzero=True, channel_wise=True))


def reference(model: Path, files: list[Path], brats: bool) -> tuple[np.ndarray, np.ndarray]:
    """The extension script's pipeline: (label map (K, J, I), probabilities (C, K, J, I)) on the first input's grid."""
    checkpoint = torch.load(model / "model.pt", map_location="cpu", weights_only=True)
    config = checkpoint["config"]
    from monai.bundle import ConfigParser

    net = ConfigParser(config["network"]).get_parsed_content()
    net.load_state_dict(checkpoint["state_dict"], strict=True)
    net.eval()
    pixdim = list(config["resample_resolution"])
    spacing = Spacingd(keys=["image"], pixdim=pixdim, mode=["bilinear"], dtype=torch.float,
                       min_pixdim=np.array(pixdim) * 0.75, max_pixdim=np.array(pixdim) * 1.25, allow_missing_keys=True)
    if brats:
        ts = [LoadImaged(keys="image", reader="NibabelReader", ensure_channel_first=True, dtype=None, image_only=False),
              EnsureTyped(keys="image", data_type="tensor", dtype=torch.float)]
        if config.get("orientation_ras"):
            ts.append(Orientationd(keys="image", axcodes="RAS"))
        ts += [CropForegroundd(keys="image", source_key="image", margin=10, allow_smaller=True), spacing]
        _normalisation(ts, "image", config["normalize_mode"], config["intensity_bounds"])
        data = {"image": [str(f) for f in files]}
    else:
        keys = [f"image{i + 1}" for i in range(len(files))]
        data = LoadImaged(keys=keys, reader="NibabelReader", ensure_channel_first=True, dtype=None, image_only=False)(
            {k: str(f) for k, f in zip(keys, files)})
        if len(keys) == 1:
            ts = [ConcatItemsd(keys=keys, name="image", dim=0), EnsureTyped(keys="image", data_type="tensor",
                                                                             dtype=torch.float)]
            _normalisation(ts, "image", config["normalize_mode"], config["intensity_bounds"])
        else:
            ts = []
            modes = [config["normalize_mode"]] + list(OrderedDict(config["extra_modalities"]).values())
            for key, mode in zip(keys, modes):
                _normalisation(ts, key, mode, config["intensity_bounds"])
            ts += [ConcatItemsd(keys=keys, name="image", dim=0),
                   EnsureTyped(keys="image", data_type="tensor", dtype=torch.float)]
        ts += [CropForegroundd(keys="image", source_key="image1", margin=10, allow_smaller=True), spacing]
    transform = Compose(ts)
    batch = list_data_collate([transform(data)])
    inferer = SlidingWindowInfererAdapt(roi_size=config["roi_size"], sw_batch_size=1, overlap=0.625, mode="gaussian")
    with torch.no_grad():
        logits = inferer(inputs=batch["image"].as_subclass(torch.Tensor), network=net)
    pred = torch.sigmoid(logits) if config["sigmoid"] else torch.softmax(logits, dim=1)
    batch["pred"] = convert_to_dst_type(pred, batch["image"], dtype=pred.dtype)[0]
    invert = Compose([Invertd(keys="pred", orig_keys="image", transform=transform, nearest_interp=False)])
    probs = invert(decollate_batch(batch)[0])["pred"]
    if config["sigmoid"]:
        seg = probs >= 0.5
        label = 2 * seg.any(0).to(torch.uint8)
        label[seg[1:].any(0)] = 1
        label[seg[2:].any(0)] = 3
    else:
        label = torch.argmax(probs, dim=0).to(torch.uint8)
    # (C, I, J, K) -> (C, K, J, I), as SimpleITK arrays
    return label.numpy().transpose(2, 1, 0), probs.numpy().transpose(0, 3, 2, 1)


def _run(model: Path, files: list[Path], names: list[str]):
    segmenter = Segmenter(load_model(model), device="cpu", precision="fp32")
    return segmenter.run({n: str(f) for n, f in zip(names, files)}, tta=False)


def test_single_input_softmax_equals_the_extension_pipeline(tmp_path):
    model = write_auto3dseg_model(tmp_path / "m", 1, {1: "tumor", 2: "cyst"})
    assert model_format(model) == "auto3dseg"
    manifest = describe_model(model)
    assert [c.name for c in manifest.inputs] == ["image1"] and manifest.raw["format"] == "auto3dseg"
    files = write_case(tmp_path, 1)
    result = _run(model, files, ["image1"])
    label, probs = reference(model, files, brats=False)
    np.testing.assert_array_equal(result.label_map, label)
    assert len(np.unique(label)) > 1
    np.testing.assert_allclose(result.probabilities["tumor"], probs[1], atol=1e-4)
    np.testing.assert_allclose(result.probabilities["cyst"], probs[2], atol=1e-4)


def test_two_inputs_with_their_own_normalisation(tmp_path):
    model = write_auto3dseg_model(tmp_path / "m", 2, {1: "lesion"}, extra_modalities={"image2": "range"})
    files = write_case(tmp_path, 2)
    result = _run(model, files, ["image1", "image2"])
    label, probs = reference(model, files, brats=False)
    np.testing.assert_array_equal(result.label_map, label)
    np.testing.assert_allclose(result.probabilities["lesion"], probs[1], atol=1e-4)


def test_brats_region_model_stacked_and_reoriented(tmp_path):
    model = write_auto3dseg_model(tmp_path / "m", 4, {1: "tumor core", 2: "edema", 3: "enhancing"}, sigmoid=True,
                        orientation_ras=True)
    (model / "medcnncad.json").write_text('{"inputs": ["T1c", "T1", "FLAIR", "T2"], "name": "brats-test"}')
    manifest = describe_model(model)
    assert [c.name for c in manifest.inputs] == ["T1c", "T1", "FLAIR", "T2"]
    assert [(c.name, c.value) for c in manifest.postprocessing.channels] == [
        ("whole_tumor", 2), ("tumor_core", 1), ("enhancing_tumor", 3)]
    files = write_case(tmp_path, 4, lps_flip=True)
    result = _run(model, files, ["T1c", "T1", "FLAIR", "T2"])
    label, probs = reference(model, files, brats=True)
    np.testing.assert_array_equal(result.label_map, label)
    for index, name in enumerate(("whole_tumor", "tumor_core", "enhancing_tumor")):
        np.testing.assert_allclose(result.probabilities[name], probs[index], atol=1e-4)


def test_network_config_with_code_needs_trust(tmp_path):
    model = write_auto3dseg_model(tmp_path / "m", 1, {1: "tumor"})
    checkpoint = torch.load(model / "model.pt", weights_only=True)
    checkpoint["config"]["network"]["init_filters"] = "$8"
    torch.save(checkpoint, model / "model.pt")
    with pytest.raises(TrustError, match="executes code"):
        load_model(model)
    add_trusted_hash(auto3dseg_hash(model))
    assert load_model(model).source == "auto3dseg"


def test_bad_folders_are_one_line_errors(tmp_path):
    model = write_auto3dseg_model(tmp_path / "m", 1, {1: "tumor"})
    torch.save({"weights": torch.zeros(1)}, model / "model.pt")
    with pytest.raises(ModelError, match="not an Auto3DSeg"):
        describe_model(model)
    model = write_auto3dseg_model(tmp_path / "n", 1, {1: "a", 2: "b"}, sigmoid=True)
    with pytest.raises(ModelError, match="not supported"):
        describe_model(model)


def test_listing_reads_the_checkpoint_config_once_per_file_version(tmp_path, monkeypatch):
    from medcnncad.models import auto3dseg

    model = write_auto3dseg_model(tmp_path / "m", 1, {1: "tumor"})
    calls = []
    real = auto3dseg._checkpoint
    monkeypatch.setattr(auto3dseg, "_checkpoint", lambda folder, mmap=False: calls.append(mmap) or real(folder, mmap))
    first = describe_model(model)
    assert describe_model(model) == first and calls == [True]  # mapped, not read; then cached
    checkpoint = torch.load(model / "model.pt", weights_only=True)
    checkpoint["config"]["roi_size"] = [48, 48, 48]
    torch.save(checkpoint, model / "model.pt")  # a new version of the file is described again
    assert describe_model(model).inference.roi_size == (48, 48, 48) and calls == [True, True]
    torch.save(checkpoint, model / "model.pt", _use_new_zipfile_serialization=False)  # legacy: cannot be mapped
    assert describe_model(model).inference.roi_size == (48, 48, 48) and calls[-2:] == [True, False]
