"""Reference label conventions: parsing a user's statement of one, mapping by hand, refusing unknown values."""

from __future__ import annotations

import numpy as np
import pytest

from medcnncad.data.real_cases import BRATS2021_MAP, BRATS2023_MAP
from medcnncad.errors import InputError
from medcnncad.metrics.label_conventions import LABEL_CONVENTIONS, check_reference_values, parse_label_map, relabel


def test_named_conventions_and_pairs():
    assert parse_label_map("BraTS2023") == {0: 0, 1: 1, 2: 2, 3: 4}
    assert parse_label_map("msd") == {0: 0, 1: 2, 2: 1, 3: 4}  # MSD: 1 oedema, 2 non-enhancing, 3 enhancing
    assert parse_label_map(" 3=4, 1=1 ") == {3: 4, 1: 1}
    # the engine's real-case reader uses the same conventions
    assert dict(LABEL_CONVENTIONS["brats2023"]) == dict(BRATS2023_MAP)
    assert dict(LABEL_CONVENTIONS["brats"]) == dict(BRATS2021_MAP)


@pytest.mark.parametrize("text", ["brats2025", "3>4", "3=four", "-1=2", "3=70000", "3=4,3=1", ",", ""])
def test_a_bad_statement_is_one_clear_error(text):
    with pytest.raises(InputError, match="label map"):
        parse_label_map(text)


def test_relabel_maps_all_at_once_and_keeps_the_rest():
    values = np.array([[0, 1, 2], [3, 7, 2]], np.uint8)
    np.testing.assert_array_equal(relabel(values, {1: 2, 2: 1, 3: 4}), [[0, 2, 1], [4, 7, 1]])  # a swap, not a chain
    assert relabel(values, {7: 300}).dtype == np.uint16 and relabel(values, {3: 4}).dtype == np.uint8


def test_a_value_left_out_of_the_map_may_not_merge_with_a_mapped_one():
    """A BraTS 2024 file's resection cavity (4) under brats2023 (3 -> 4) would be scored as enhancing tumor."""
    with pytest.raises(InputError, match=r"seg\.nii\.gz: label values \[4\] are not in the label map .* 4=0"):
        relabel(np.array([0, 1, 2, 3, 4]), parse_label_map("brats2023"), "seg.nii.gz")
    np.testing.assert_array_equal(relabel(np.array([0, 3, 4]), {3: 4, 4: 0}), [0, 4, 0])  # listed: fine
    np.testing.assert_array_equal(relabel(np.array([0, 1, 2]), {}), [0, 1, 2])


def test_values_that_are_none_of_the_models_are_refused_naming_the_file():
    check_reference_values(np.array([0, 1, 2, 4]), (1, 2, 4), "ref.nii.gz")  # fine
    check_reference_values(np.array([0, 0]), (1, 2, 4), "ref.nii.gz")  # an empty reference is fine too
    with pytest.raises(InputError, match=r"ref\.nii\.gz: label values \[3, 5\] are not the model's \(\[1, 2, 4\]\); "
                                         r"say which convention.*brats2023"):
        check_reference_values(np.array([0, 1, 3, 5]), (1, 2, 4), "ref.nii.gz")
    with pytest.raises(InputError, match=r"label values \[3, 5, 6, 7, 8, 9, 10, 11, 12, 13\] and 87 more"):
        check_reference_values(np.arange(101), (1, 2, 4), "t1.nii.gz")  # an image given as the reference
