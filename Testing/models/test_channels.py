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


def test_a_typed_channel_name_means_the_channel_of_that_name_or_alias_in_any_spelling():
    """The one reading behind the volume order of 4D files and training CSV headers."""
    from dataclasses import replace

    manifest = load_manifest(DEMO_MODEL)
    assert manifest.channels_named("t1c") == ["T1c"] and manifest.channels_named(" T-1_C ") == ["T1c"]
    assert manifest.channels_named("Flair") == ["FLAIR"] and manifest.channels_named("t1ce") == ["T1c"]  # alias
    assert manifest.channels_named("PD") == []
    t1 = next(c for c in manifest.inputs if c.name == "T1")
    t2 = next(c for c in manifest.inputs if c.name == "T2")
    clash = replace(manifest, inputs=(replace(t1, aliases=("scan",)), replace(t2, aliases=("SCAN",))))
    assert clash.channels_named("scan") == ["T1", "T2"]  # an unchecked manifest: callers refuse it
    named = replace(manifest, inputs=(replace(t1, aliases=("t2",)), t2))
    assert named.channels_named("t2") == ["T2"]  # a channel's name before another's alias
