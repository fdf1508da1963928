"""Headless screenshot through Slicer's slice pipeline: right colours, scene left as it was."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest

pytest.importorskip("slicer")
import slicer  # noqa: E402
from helpers import small_phantom  # noqa: E402
from slicer_scene import new_scene, scene_fingerprint, volume_from_image  # noqa: E402

from medcnncad.slicer import adaptor as sa  # noqa: E402
from medcnncad.slicer.render import render_slice_views  # noqa: E402


def test_render_shows_segment_colours_and_leaves_scene(tmp_path):
    import SimpleITK as sitk
    from helpers import DEMO_MODEL

    from medcnncad.models.manifest import load_manifest

    scene = new_scene()
    images, label = small_phantom()
    t1c = volume_from_image(images["T1c"], "T1c")
    labels = sitk.GetArrayFromImage(label)
    seg = sa.add_segmentation_node(labels, load_manifest(DEMO_MODEL), t1c, "reference")
    k, j, i = np.argwhere(labels == 4).mean(0)
    lps = images["T1c"].TransformContinuousIndexToPhysicalPoint((float(i), float(j), float(k)))
    before = scene_fingerprint(scene)
    out = render_slice_views(t1c, seg, tmp_path / "shot.png", (-lps[0], -lps[1], lps[2]), size=200,
                             app_logic=slicer._medcnncad_keepalive[0])
    assert scene_fingerprint(scene) == before
    rgb = (matplotlib.image.imread(out)[..., :3] * 255).astype(int)
    axial = rgb[:, :200]
    r, g, b = axial[..., 0], axial[..., 1], axial[..., 2]
    yellow = (r > 170) & (g > 150) & (b < 110)      # ET (1.0, 0.9, 0.1) blended on grey
    green = (g > r + 40) & (g > b + 40)              # ED (0.2, 0.8, 0.2)
    assert yellow.sum() > 20 and green.sum() > 100
    assert rgb.shape[1] >= 3 * 200
