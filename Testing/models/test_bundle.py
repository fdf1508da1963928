"""MONAI bundles: refused while untrusted, and then identical to the manifest path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import demo_model_unsnapped, small_phantom, write_bundle

from medcnncad.errors import ModelError, TrustError
from medcnncad.inference.postprocess import label_map_from_probabilities, label_map_from_probabilities_torch
from medcnncad.inference.segmenter import Segmenter, remove_small_components
from medcnncad.models.bundle import brats_nesting, bundle_code_entries, trust_bundle
from medcnncad.models.registry import describe_model, load_model


def test_untrusted_bundle_with_code_is_refused(tmp_path):
    folder = write_bundle(tmp_path / "bundle")
    entries = bundle_code_entries(folder)
    assert any("$torch.device" in e for e in entries)
    with pytest.raises(TrustError, match="executable code"):
        load_model(folder)


def test_bundle_without_code_needs_no_trust(tmp_path):
    folder = write_bundle(tmp_path / "bundle", code=False)
    assert bundle_code_entries(folder) == []
    assert load_model(folder).source == "bundle"


def test_trusted_list_is_keyed_by_hash(tmp_path):
    folder = write_bundle(tmp_path / "bundle")
    trust_bundle(folder)
    assert load_model(folder).source == "bundle"
    config = folder / "configs" / "inference.json"
    data = json.loads(config.read_text())
    data["inferer"]["overlap"] = 0.5  # any change makes it a different, untrusted bundle
    config.write_text(json.dumps(data))
    with pytest.raises(TrustError):
        load_model(folder)


def test_trusted_bundle_runs_and_matches_the_manifest_model(tmp_path):
    images, _ = small_phantom()
    bundle = load_model(write_bundle(tmp_path / "bundle"), trust=True)
    assert bundle.manifest.input_names == ["T1", "T1c", "T2", "FLAIR"]
    assert bundle.manifest.inference.roi_size == (96, 96, 96)
    a = Segmenter(bundle, "cpu").run(images)
    b = Segmenter(demo_model_unsnapped(), "cpu").run(images)
    for name in ("NCR", "ED", "ET"):
        np.testing.assert_allclose(a.probabilities[name], b.probabilities[name], atol=1e-4)
    # the bundle paints channel indices (0..3); the manifest paints BraTS values (0, 1, 2, 4),
    # and its manifest also drops components under 0.1 mL
    voxel_ml = float(np.prod(b.reference.GetSpacing())) / 1000
    brats = remove_small_components(np.array([0, 1, 2, 4], np.uint8)[a.label_map], 0.1, voxel_ml)
    np.testing.assert_array_equal(brats, b.label_map)


def _with_entry(folder, entry: dict):
    """The code-free bundle with ``entry`` as the options of its first preprocessing step (so that building
    the preprocessing builds it)."""
    config = folder / "configs" / "inference.json"
    data = json.loads(config.read_text())
    data["side"] = entry
    data["preprocessing"]["transforms"][2]["allow_missing_keys"] = "@side"
    config.write_text(json.dumps(data))
    return folder


def _side_effects(tmp_path):
    """What each config below does when run: (entry, file it creates or empties)."""
    victim = tmp_path / "victim.txt"
    return {
        "monai utility": ({"_target_": "monai.utils.misc.run_cmd", "cmd_list": ["touch", str(victim)]}, victim),
        "builtin by bare name": ({"_target_": "open", "file": str(victim), "mode": "w"}, victim),
        "reader by bare name": ({"_target_": "LoadImaged", "keys": "image", "reader": "open", "file": str(victim),
                                 "mode": "w"}, victim),
        "macro from another file": (f"%{tmp_path / 'evil.json'}#step", victim),
    }


@pytest.mark.parametrize("case", ["monai utility", "builtin by bare name", "reader by bare name",
                                  "macro from another file"])
def test_configs_that_run_code_without_a_dollar_need_trust(tmp_path, case):
    entry, victim = _side_effects(tmp_path)[case]
    victim.write_text("precious")
    if case == "macro from another file":  # the imported file holds the code, and is neither checked nor hashed
        victim.unlink()
        (tmp_path / "evil.json").write_text(json.dumps({"step": f"$open({str(victim)!r}, 'w').close()"}))
    folder = _with_entry(write_bundle(tmp_path / "bundle", code=False), entry)
    assert bundle_code_entries(folder)
    with pytest.raises(TrustError, match="executable code"):
        load_model(folder)
    assert victim.exists() == (case != "macro from another file")
    assert not victim.exists() or victim.read_text() == "precious"


BRATS_OUTPUTS = ("Tumor core", "Whole tumor", "Enhancing tumor")


def _brats_sigmoid_bundle(folder, extra: dict | None = None, outputs: tuple[str, ...] = BRATS_OUTPUTS):
    """The code-free bundle with MONAI's BraTS bundle's outputs: sigmoid tumor core, whole tumor, enhancing
    tumor, in that channel order (or ``outputs``), and ``extra`` as the metadata's ``medcnncad`` block."""
    folder = write_bundle(folder, code=False)
    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    meta["network_data_format"]["outputs"]["pred"] = {
        "type": "image", "num_channels": 3, "channel_def": {str(i): name for i, name in enumerate(outputs)}}
    if extra is not None:
        meta["medcnncad"] = extra
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta))
    config = json.loads((folder / "configs" / "inference.json").read_text())
    config["postprocessing"]["transforms"] = [{"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
                                              {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5}]
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    return folder


def test_overlapping_sigmoid_outputs_need_their_nesting(tmp_path):
    folder = _brats_sigmoid_bundle(tmp_path / "bundle", outputs=("lesion", "oedema", "core"))
    for read in (describe_model, load_model):
        with pytest.raises(ModelError, match=r"metadata.json: the bundle's 3 sigmoid outputs .* may overlap"):
            read(folder)


@pytest.mark.parametrize("extra", [{"nested_outputs": ["Whole tumor", "Tumor core", "Enhancing tumor"]}, None],
                         ids=["declared", "BraTS names"])
def test_nested_sigmoid_outputs_paint_the_innermost_region(tmp_path, extra):
    manifest = describe_model(_brats_sigmoid_bundle(tmp_path / "bundle", extra))
    # four voxels: background, oedema (whole tumor only), necrotic core (+ core), enhancing (all three);
    # channels in the bundle's order: tumor core, whole tumor, enhancing tumor
    probabilities = np.array([[0.1, 0.2, 0.9, 0.8], [0.1, 0.9, 0.9, 0.9], [0.1, 0.1, 0.2, 0.7]], np.float32)
    probabilities = probabilities[:, :, None, None]
    labels = label_map_from_probabilities(probabilities, manifest)[:, 0, 0]
    np.testing.assert_array_equal(labels, [0, 2, 1, 3])  # values: channel index + 1
    np.testing.assert_array_equal(label_map_from_probabilities_torch(torch.from_numpy(probabilities), manifest)
                                  .numpy()[:, 0, 0], labels)
    voxels = {name: int(np.isin(labels, values).sum()) for name, values in manifest.structures().items()}
    # a painted value is its output outside the next inner one: the oedema is not called "whole tumor"
    if extra is None:  # named as BraTS names its sub-regions and regions
        assert {x.value: x.name for x in manifest.labels} == {1: "NCR", 2: "ED", 3: "ET"}
        assert voxels == {"NCR": 1, "ED": 1, "ET": 1, "WT": 3, "TC": 2}
    else:
        assert {x.value: x.name for x in manifest.labels} == {1: "Tumor_core_outside_Enhancing_tumor",
                                                              2: "Whole_tumor_outside_Tumor_core",
                                                              3: "Enhancing_tumor"}
        assert voxels == {"Tumor_core_outside_Enhancing_tumor": 1, "Whole_tumor_outside_Tumor_core": 1,
                          "Enhancing_tumor": 1, "Whole_tumor": 3, "Tumor_core": 2}
    # the probability files stay the outputs' own: P(whole tumor), not P(oedema)
    assert [c.name for c in manifest.postprocessing.channels] == ["Tumor_core", "Whole_tumor", "Enhancing_tumor"]


def test_brats_nesting_by_hand():
    assert brats_nesting(["TC", "WT", "ET"]) == ["WT", "TC", "ET"]
    assert brats_nesting(["enhancing_tumor", "Whole tumor", "tumor_core"]) == ["Whole tumor", "tumor_core",
                                                                              "enhancing_tumor"]
    assert brats_nesting(["WT", "whole_tumor", "ET"]) is None  # one region twice
    assert brats_nesting(["WT", "TC", "edema"]) is None


def test_exclusive_sigmoid_outputs_keep_the_channel_order(tmp_path):
    manifest = describe_model(_brats_sigmoid_bundle(tmp_path / "bundle", {"exclusive_outputs": True}))
    assert manifest.postprocessing.painting() == (0, 1, 2) and manifest.regions == ()
