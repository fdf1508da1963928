"""Automatic channel assignment from volume names and series descriptions."""

from __future__ import annotations

from helpers import DEMO_MODEL

from medcnncad.models.channels import assign_channels
from medcnncad.models.manifest import load_manifest


def test_brats_file_names_are_assigned():
    manifest = load_manifest(DEMO_MODEL)
    volumes = {"v1": ["BraTS2021_00012_t1"], "v2": ["BraTS2021_00012_t1ce"], "v3": ["BraTS2021_00012_t2"],
               "v4": ["BraTS2021_00012_flair"]}
    assert assign_channels(manifest, volumes) == {"T1": "v1", "T1c": "v2", "T2": "v3", "FLAIR": "v4"}


def test_series_descriptions_and_unmatched():
    manifest = load_manifest(DEMO_MODEL)
    volumes = {"a": ["3: Series", "AX T1 POST GD"], "b": ["4", "Ax T2 FLAIR"], "c": ["scout", "Localizer"],
               "d": ["T1 pre", ""]}
    got = assign_channels(manifest, volumes)
    # 't1_post' (alias of T1c) is a longer match than 't1'; 't2_flair' beats 't2'
    assert got == {"T1c": "a", "FLAIR": "b", "T1": "d"}
    assert "T2" not in got


def test_each_volume_serves_one_channel():
    manifest = load_manifest(DEMO_MODEL)
    assert assign_channels(manifest, {"x": ["t1"]}) == {"T1": "x"}
    assert assign_channels(manifest, {}) == {}
