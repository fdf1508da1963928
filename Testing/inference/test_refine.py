"""Tumor core refinement in the case's own contrast (medcnncad.inference.refine, manifest core_refinement)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import make_image
from helpers import blob_manifest_dict

from medcnncad.errors import ModelError
from medcnncad.inference.refine import cluster_vote, refine_core, touching
from medcnncad.models.manifest import CoreRefinement, parse_manifest

CORE, SHELL, FIXED = 1, 2, 4
SPEC = CoreRefinement(CORE, SHELL, (FIXED,), ("A",), 0.3, components=2, smoothing_mm=0.0)


def _ball(shape: tuple[int, int, int], radius: float) -> np.ndarray:
    k, j, i = np.indices(shape)
    c = (np.array(shape) - 1) / 2
    return (k - c[0]) ** 2 + (j - c[1]) ** 2 + (i - c[2]) ** 2 <= radius ** 2


def _case(seed: int = 0):
    """A 10-voxel-radius tumor whose true core (radius 5) is 0.3 brighter in input A (noise SD 0.02);
    the network called a radius-6 core with probability 0.7 and the rest of the tumor 0.2."""
    shape = (25, 25, 25)
    tumor, core, called = _ball(shape, 10), _ball(shape, 5), _ball(shape, 6)
    a = np.where(core, 1.3, 1.0) * tumor + np.random.default_rng(seed).normal(0, 0.02, shape)
    labels = np.where(called, CORE, np.where(tumor, SHELL, 0)).astype(np.uint8)
    probability = np.where(called, 0.7, np.where(tumor, 0.2, 0.0)).astype(np.float32)
    return labels, probability, {"A": make_image(a.astype(np.float32))}, tumor, core


def test_cluster_vote_follows_the_mean_network_probability_of_each_cluster():
    x = np.array([[0.0], [0.1], [5.0], [5.1]])
    # cluster 1 mean 0.45 -> votes shell although one voxel is 0.6; cluster 2 mean 0.55 -> core
    np.testing.assert_allclose(cluster_vote(x, np.array([0.3, 0.6, 0.5, 0.6]), 2, 100, 0), [0, 0, 1, 1], atol=1e-6)


def test_refinement_moves_the_core_edge_to_the_contrast_edge():
    labels, probability, images, tumor, core = _case()
    before = labels.copy()
    outcome = refine_core(labels, [probability], images, SPEC, 0.001)
    assert outcome.applied and outcome.fixed_share == 0.0
    # the ring between radius 5 and 6 had probability 0.7 but votes shell: 0.5 * 0.7 + 0.5 * 0 < 0.5
    np.testing.assert_array_equal(labels == CORE, core)
    np.testing.assert_array_equal(labels > 0, before > 0)  # the whole tumor is unchanged
    ring = _ball(labels.shape, 6) & ~core
    assert outcome.to_core_ml == 0 and outcome.to_shell_ml == pytest.approx(0.001 * ring.sum())


def test_refinement_adds_no_core_lesion_of_its_own():
    """A bright 7-voxel island in the shell, away from the network's core, clusters with the core
    (vote 1, 0.5 x 0.2 + 0.5 = 0.6) but shares no voxel with the network's core: it stays shell."""
    labels, probability, images, tumor, core = _case()
    a = sitk.GetArrayFromImage(images["A"])
    island = np.zeros_like(tumor)
    island[12, 12, 20:23] = island[12, 11:14, 21] = island[11:14, 12, 21] = True  # 8.5 voxels from the centre
    a[island] = 1.3
    outcome = refine_core(labels, [probability], {"A": make_image(a)}, SPEC, 0.001)
    np.testing.assert_array_equal(labels == CORE, core)
    assert outcome.to_core_ml == 0 and (labels[island] == SHELL).all()


def test_touching_keeps_the_components_that_meet_the_seed():
    mask = np.zeros((5, 5, 5), bool)
    mask[0, 0, 0:2] = mask[2, 2, 2] = mask[3, 3, 3] = mask[4, 0, 4] = True  # [2,2,2] and [3,3,3] touch diagonally
    seed = np.zeros_like(mask)
    seed[3, 3, 3] = True
    expected = np.zeros_like(mask)
    expected[2, 2, 2] = expected[3, 3, 3] = True
    np.testing.assert_array_equal(touching(mask, seed), expected)


def test_a_core_that_would_change_too_much_keeps_the_network_labels():
    """The refined core is 515 / 925 = 0.56 x the network's: allowed within 2 x, not within 1.5 x."""
    labels, probability, images, _, _ = _case()
    before = labels.copy()
    spec = CoreRefinement(CORE, SHELL, (FIXED,), ("A",), 0.3, components=2, smoothing_mm=0.0, max_volume_change=1.5)
    outcome = refine_core(labels, [probability], images, spec, 0.001)
    assert outcome.reason == "the refined core would be 0.56 x the network's (limit 1.5 x either way): network's " \
                             "labels kept" and not outcome.applied
    np.testing.assert_array_equal(labels, before)
    assert refine_core(np.where(before == CORE, SHELL, before), [probability], images, SPEC, 0.001).reason == \
        "the network found no core"


def test_network_weight_one_keeps_the_network_labels():
    labels, probability, images, _, _ = _case()
    before = labels.copy()
    spec = CoreRefinement(CORE, SHELL, (FIXED,), ("A",), 0.3, components=2, network_weight=1.0, smoothing_mm=0.0)
    assert refine_core(labels, [probability], images, spec, 0.001).applied
    np.testing.assert_array_equal(labels, before)


def test_fixed_labels_never_change_and_gate_the_refinement():
    labels, probability, images, _, core = _case()
    enhancing = _ball(labels.shape, 2)
    labels[enhancing] = FIXED  # 33 of 925 core voxels: share 0.036
    outcome = refine_core(labels, [probability], images, SPEC, 0.001)
    assert outcome.applied and outcome.fixed_share == pytest.approx(enhancing.sum() / _ball(labels.shape, 6).sum())
    assert (labels[enhancing] == FIXED).all()
    np.testing.assert_array_equal(labels == CORE, core & ~enhancing)
    labels, probability, images, _, _ = _case()
    labels[_ball(labels.shape, 5)] = FIXED  # 515 of 925: above the 0.3 share
    before = labels.copy()
    outcome = refine_core(labels, [probability], images, SPEC, 0.001)
    assert not outcome.applied and "fixed labels are 0.56 of the core (>= 0.3)" == outcome.reason
    np.testing.assert_array_equal(labels, before)


def test_refinement_needs_every_required_input_and_enough_tumor():
    labels, probability, images, _, _ = _case()
    before = labels.copy()
    spec = CoreRefinement(CORE, SHELL, (), ("A", "B"), 1.0)
    assert refine_core(labels, [probability], images, spec, 0.001).reason == "needs input(s) ['B']"
    tiny = np.zeros_like(labels)
    tiny[12, 12, 10:15] = CORE
    assert refine_core(tiny, [probability], images, SPEC, 0.001).reason == "tumor too small to cluster (5 voxels)"
    np.testing.assert_array_equal(labels, before)


def _two_input_manifest(**refinement) -> dict:
    raw = blob_manifest_dict()
    raw["inputs"] = [{"name": "A", "modality": "MR"}, {"name": "H", "modality": "MR", "required": False}]
    raw["labels"] = [{"name": "core", "value": CORE, "color": [1, 0, 0]},
                     {"name": "shell", "value": SHELL, "color": [0, 1, 0]}]
    raw["regions"] = [{"name": "tumor", "labels": [CORE, SHELL]}]
    raw["network"]["kwargs"].update(in_channels=2, out_channels=3)
    raw["postprocessing"]["channels"] = [{"name": "background", "value": 0}, {"name": "core", "value": CORE},
                                         {"name": "shell", "value": SHELL}]
    raw["postprocessing"]["core_refinement"] = {"core_label": CORE, "shell_label": SHELL, "required_inputs": ["A"],
                                                "components": 2, "smoothing_mm": 0.0, **refinement}
    return raw


@pytest.mark.parametrize("change, message", [
    ({"core_label": 7}, r"core_refinement uses label values \[7\] that no output channel paints"),
    ({"fixed_labels": [CORE]}, r"core_label, shell_label and fixed_labels must differ: \[1, 2, 1\]"),
    ({"required_inputs": ["T1c"]}, r"core_refinement required_inputs \['T1c'\] are not inputs of the model"),
])
def test_manifest_names_a_bad_core_refinement(tmp_path, change, message):
    with pytest.raises(ModelError, match=message):
        parse_manifest(_two_input_manifest(**change), tmp_path)


class HintNet(torch.nn.Module):
    """Stand-in network: background where input A < 0.5; inside, core probability 0.7 where the hint
    input H > 0.5 and 0.2 elsewhere (shell the rest)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, h = x[:, :1], x[:, 1:2]
        core = torch.where(h > 0.5, torch.tensor(0.7), torch.tensor(0.2))
        return torch.cat([40 * (0.5 - a), torch.log(core), torch.log(1 - core)], dim=1)


def test_segmenter_refines_last_and_says_so(tmp_path):
    from medcnncad.inference.segmenter import Segmenter
    from medcnncad.models.loaded import LoadedModel
    from medcnncad.models.preprocessing import build_preprocessing

    manifest = parse_manifest(_two_input_manifest(), tmp_path)
    seg = Segmenter(LoadedModel(manifest, HintNet(), build_preprocessing(manifest.preprocessing), "manifest",
                                tmp_path), device="cpu")
    labels, _, images, tumor, core = _case()
    hint = make_image(_ball(labels.shape, 6).astype(np.float32))
    result = seg.run({**images, "H": hint})
    np.testing.assert_array_equal(result.label_map == CORE, core)
    np.testing.assert_array_equal(result.label_map > 0, tumor)
    assert result.probabilities["core"][_ball(labels.shape, 6)].min() == pytest.approx(0.7, abs=1e-3)  # maps kept
    ring_ml = (_ball(labels.shape, 6) & ~core).sum() * 0.001
    assert result.warnings == ["tumor core re-read in this case's own contrast (model post-processing, "
                               f"core_refinement): 0.00 mL shell -> core, {ring_ml:.2f} mL core -> shell"]
    from medcnncad.reporting.case_outputs import build_report, summary_table

    assert f"note: {result.warnings[0]}" in summary_table(build_report(result)).splitlines()  # the CLI prints it
    result = seg.run(images)  # without the hint the network calls no core: nothing to refine
    assert (result.label_map == CORE).sum() == 0
    assert result.warnings == ["optional channel(s) ['H'] absent: filled with zeros"]


def test_reports_state_the_core_refinement(tmp_path):
    from medcnncad.reporting.case_outputs import _lesion_filter
    from medcnncad.reporting.html import _filter_text

    raw = _two_input_manifest()
    raw["postprocessing"]["core_refinement"].update(fixed_labels=[], max_fixed_share=0.3)
    rule = _lesion_filter(parse_manifest(raw, tmp_path))["core_refinement"]
    assert (rule["core_label"], rule["shell_label"], rule["required_inputs"]) == ("core", "shell", ["A"])
    assert _filter_text(_lesion_filter(parse_manifest(raw, tmp_path))).endswith(
        " With A present, the core / shell boundary is re-read in the case's own contrast (clusters of the "
        "smoothed inputs voting with the network; the probability maps are the network's).")
    assert "core_refinement" not in _lesion_filter(parse_manifest(blob_manifest_dict(), tmp_path))
