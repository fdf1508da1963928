"""The vessel filter on hand-built components: tubes go, balls, rings and short or non-enhancing tubes stay."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import make_image
from helpers import blob_manifest_dict

from medcnncad.inference.postprocess import postprocess
from medcnncad.lesions.vessel_filter import apply_vessel_filter, is_vessel_like, tube_shape
from medcnncad.models.manifest import VesselFilter, parse_manifest

RULE = VesselFilter(enhancing_labels=(4,), max_radius_mm=6.0, min_length_mm=60.0, min_enhancing_fraction=0.5,
                    max_fill_ratio=1.2, min_ml=1.0)


def _tube(shape=(100, 40, 40), radius=3.0, start=10, stop=90, centre=(20, 20)) -> np.ndarray:
    """A solid cylinder along K (voxels whose (J, I) centre lies within ``radius`` voxels of ``centre``)."""
    k, j, i = np.ogrid[:shape[0], :shape[1], :shape[2]]
    return ((j - centre[0]) ** 2 + (i - centre[1]) ** 2 <= radius ** 2) & (k >= start) & (k < stop)


def _ball(shape, centre, radius) -> np.ndarray:
    k, j, i = np.ogrid[:shape[0], :shape[1], :shape[2]]
    return (k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2 <= radius ** 2


def test_shape_of_a_cylinder_computed_by_hand():
    tube = _tube()
    shape = tube_shape(tube, np.full(int(tube.sum()), 4), (1.0, 1.0, 1.0), (4,))
    # the axis voxel's nearest outside voxel is (3, 1) away: 3^2 + 1^2 = 10 > 9, while (3, 0) and (2, 2) are inside
    assert shape.radius_mm == pytest.approx(math.sqrt(10))
    assert shape.length_mm == pytest.approx(79.0)  # 80 voxel centres along K, 1 mm apart
    assert shape.enhancing_fraction == 1.0 and shape.fill_ratio == 1.0
    # 2 mm slices: the same voxels are twice as long, and the inscribed radius stays in-plane
    coarse = tube_shape(tube, np.full(int(tube.sum()), 4), (2.0, 1.0, 1.0), (4,))
    assert coarse.length_mm == pytest.approx(158.0) and coarse.radius_mm == pytest.approx(math.sqrt(10))


def test_a_hollow_shell_is_not_solid():
    shape = (80, 80, 80)
    shell = _ball(shape, (40, 40, 40), 34) & ~_ball(shape, (40, 40, 40), 31)  # a ring-enhancing rim, 70 mm across
    found = tube_shape(shell, np.full(int(shell.sum()), 4), (1.0, 1.0, 1.0), (4,))
    assert found.radius_mm <= 3.0 and found.length_mm >= 60.0  # thin and long, like a sinus...
    assert found.fill_ratio > 3.0  # ...but its slices are rings
    assert not is_vessel_like(found, shell.sum() / 1000.0, RULE)


def test_the_filter_removes_the_tube_and_keeps_ball_short_tube_and_non_enhancing_tube():
    labels = np.zeros((100, 120, 40), np.uint8)
    labels[_tube(labels.shape, centre=(20, 20))] = 4  # long, thin, enhancing: 2.2 mL
    labels[_tube(labels.shape, centre=(50, 20), start=10, stop=50)] = 4  # 40 voxels: too short
    labels[_tube(labels.shape, centre=(80, 20))] = 2  # oedema, not enhancing
    labels[_ball(labels.shape, (50, 105, 20), 12)] = 4  # a ball 25 mm across: radius 12 > 6
    before = labels.copy()
    removed: list = []
    apply_vessel_filter(labels, (1.0, 1.0, 1.0), RULE, removed)
    gone = (before > 0) & (labels == 0)
    assert np.array_equal(gone, _tube(labels.shape, centre=(20, 20)) & (before == 4))
    assert [(c.stage, c.voxel_count) for c in removed] == [("vessel filter", int(gone.sum()))]
    assert removed[0].volume_ml == pytest.approx(gone.sum() / 1000.0)
    assert removed[0].centroid_kji == pytest.approx((49.5, 20.0, 20.0))
    assert removed[0].max_probability is None  # no probabilities given


def test_a_removed_vessel_lists_its_largest_probability():
    labels = np.zeros((100, 40, 40), np.uint8)
    labels[_ball(labels.shape, (8, 10, 10), 6)] = 4  # kept (too thick), the lower component id, more probable
    labels[_tube(labels.shape, centre=(28, 28))] = 4
    foreground = np.zeros(labels.shape, np.float32)
    foreground[labels == 4] = 0.6
    foreground[8, 10, 10] = 0.99  # the ball's centre
    foreground[50, 28, 28] = 0.97  # on the tube's axis
    foreground[95, 2, 2] = 0.995  # outside every component
    removed: list = []
    apply_vessel_filter(labels, (1.0, 1.0, 1.0), RULE, removed, lambda mask: foreground[mask])
    assert [c.max_probability for c in removed] == [pytest.approx(0.97)]
    assert removed[0].centroid_kji[1:] == pytest.approx((28.0, 28.0))
    assert labels[8, 10, 10] == 4


def test_the_manifest_declares_the_filter_and_postprocess_applies_it(tmp_path):
    raw = blob_manifest_dict()
    raw["labels"] = [{"name": "oedema", "value": 2, "color": [0, 1, 0]}, {"name": "enhancing", "value": 4,
                                                                         "color": [1, 0, 0]}]
    raw["regions"] = [{"name": "any", "labels": [2, 4]}]
    raw["network"]["kwargs"]["out_channels"] = 3
    raw["postprocessing"]["channels"] = [{"name": "background", "value": 0}, {"name": "oedema", "value": 2},
                                         {"name": "enhancing", "value": 4}]
    raw["postprocessing"]["vessel_filter"] = {"enhancing_labels": [4], "max_radius_mm": 6, "min_length_mm": 60}
    manifest = parse_manifest(raw, tmp_path)
    assert manifest.postprocessing.vessel_filter == VesselFilter((4,), 6.0, 60.0)  # defaults 0.5, 1.2, 1.0 mL
    labels = np.zeros((100, 40, 40), np.uint8)
    labels[_tube()] = 4
    probs = np.zeros((3, *labels.shape), np.float32)
    probs[2][labels == 4] = 0.9
    probs[0] = 1 - probs[2]
    warnings: list[str] = []
    removed, _ = postprocess(manifest, labels, probs, 0.001, {"CT": make_image(labels.astype(np.float32))}, warnings)
    assert not labels.any() and [(c.stage, c.max_probability) for c in removed] == [("vessel filter",
                                                                                      pytest.approx(0.9))]
    # 29 lattice points lie within 3 of a centre (Gauss's circle problem, N(3) = 29): 29 x 80 slices = 2.32 mL
    assert warnings == ["removed 1 thin, long, enhancing component(s) (2.32 mL) as dural sinus or vessel mimics "
                        "(model post-processing, vessel_filter)"]
    raw["postprocessing"]["vessel_filter"]["max_radius"] = 6  # not a field: the schema refuses it
    with pytest.raises(Exception, match="max_radius"):
        parse_manifest(raw, tmp_path)


def test_unknown_enhancing_labels_are_refused_and_reports_state_the_filter(tmp_path):
    from medcnncad.errors import ModelError
    from medcnncad.reporting.case_outputs import _lesion_filter
    from medcnncad.reporting.html import _filter_text

    raw = blob_manifest_dict()  # one label, blob = 3
    raw["postprocessing"]["vessel_filter"] = {"enhancing_labels": [7], "max_radius_mm": 6, "min_length_mm": 60}
    with pytest.raises(ModelError, match=r"vessel_filter enhancing_labels use unknown label values \[7\]"):
        parse_manifest(raw, tmp_path)  # a typo would silently disable the filter (0 % enhancing)
    raw["postprocessing"]["vessel_filter"]["enhancing_labels"] = [3]
    rule = _lesion_filter(parse_manifest(raw, tmp_path))
    assert {k: v for k, v in rule["vessel_filter"].items() if k not in ("rule", "description")} == {
        "enhancing_labels": ["blob"], "max_radius_mm": 6, "min_length_mm": 60, "min_enhancing_fraction": 0.5,
        "max_fill_ratio": 1.2, "min_ml": 1.0}
    assert ("Components of at least 1 mL that are thin (largest inscribed radius at most 6 mm), long (at least 60 mm), "
            "solid and mostly blob are removed as dural sinus or vessel mimics.") in _filter_text(rule)
    del raw["postprocessing"]["vessel_filter"]
    assert "vessel" not in _filter_text(_lesion_filter(parse_manifest(raw, tmp_path)))
