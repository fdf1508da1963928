"""check_channels: a set of input channel names is refused, naming the problem, before anything is read."""

from __future__ import annotations

import pytest

from medcnncad.errors import InputError
from medcnncad.inference.inputs import check_channels
from medcnncad.models.registry import describe_model


def test_the_demo_model_needs_all_four_and_nothing_else():
    demo = describe_model("brats-demo-unet")
    check_channels(demo, ["T1", "T1c", "T2", "FLAIR"])
    with pytest.raises(InputError, match=r"needs input channel\(s\) \['T2', 'FLAIR'\]"):
        check_channels(demo, ["T1", "T1c"])
    with pytest.raises(InputError, match=r"input channel\(s\) \['PD'\] not in model brats-demo-unet"):
        check_channels(demo, ["T1", "T1c", "T2", "FLAIR", "PD"])


def test_an_all_optional_model_takes_any_subset_but_not_none():
    robust = describe_model("brats-robust-unet")
    check_channels(robust, ["FLAIR"])
    check_channels(robust, {"T1c": object()})  # a mapping's keys are the names
    with pytest.raises(InputError, match="no input volume given"):
        check_channels(robust, [])
