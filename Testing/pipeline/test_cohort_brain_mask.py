"""A cohort CSV's optional ``brain_mask`` / ``brain_mask_from`` columns: a case's own brain mask or the sequence its
brain is extracted from, passed to the case run; both in one row is refused naming the line."""

from __future__ import annotations

import pytest

from medcnncad.errors import InputError
from medcnncad.pipeline import cohort
from medcnncad.pipeline.cohort import CohortCase, process_cohort_case, read_cases


def test_the_columns_are_read_per_row(tmp_path):
    (tmp_path / "cases.csv").write_text("case_id,T1c,T2,brain_mask,brain_mask_from\n"
                                        "a,a_t1c.nii.gz,a_t2.nii.gz,masks/a.nrrd,\n"
                                        "b,b_t1c.nii.gz,b_t2.nii.gz,,T1c\n"
                                        "c,c_t1c.nii.gz,,,\n")
    a, b, c = read_cases(tmp_path / "cases.csv", ["T1c", "T2"])
    assert (a.brain_mask, a.brain_mask_from) == (str((tmp_path / "masks" / "a.nrrd").resolve()), None)
    assert (b.brain_mask, b.brain_mask_from) == (None, "T1c")
    assert (c.brain_mask, c.brain_mask_from) == (None, None)


def test_both_in_one_row_is_refused_naming_the_line(tmp_path):
    (tmp_path / "cases.csv").write_text("case_id,T1c,brain_mask,brain_mask_from\na,a.nii.gz,,\nb,b.nii.gz,m.nrrd,T1c\n")
    with pytest.raises(InputError, match=r"cases.csv: line 3: brain_mask and brain_mask_from both given; give one"):
        read_cases(tmp_path / "cases.csv", ["T1c"])


def test_a_case_run_gets_its_row_s_choice(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(cohort, "cached_segmenter", lambda *a, **k: object())
    monkeypatch.setattr(cohort, "process_case", lambda *a, **k: seen.update(k))
    case = CohortCase("a", {"T1c": "a.nii.gz"}, brain_mask="/data/a_mask.nrrd")
    process_cohort_case(case, "brats-robust-unet", "cpu", str(tmp_path))
    assert (seen["brain_mask"], seen["brain_mask_from"]) == ("/data/a_mask.nrrd", None)
