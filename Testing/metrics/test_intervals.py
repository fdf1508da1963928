"""Bootstrap intervals over patients (medcnncad.metrics.intervals), by hand and against SciPy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from medcnncad.metrics.intervals import RESAMPLES, patient_bootstrap_interval, seeded


def test_three_patients_by_hand():
    """Values 0, 0, 1: a resample's mean is 1 only when all three draws are the third patient, P = 1/27 = 3.7 %,
    more than the 2.5 % in the upper tail, and 0 when none is, P = 8/27 = 30 %: the 95 % interval is [0, 1]."""
    assert patient_bootstrap_interval(["a", "b", "c"], [0.0, 0.0, 1.0]) == (0.0, 1.0)


def test_one_row_per_patient_is_scipy_s_percentile_bootstrap_of_the_mean():
    values = [0.91, 0.88, 0.93, 0.2, 0.75, 0.6]
    ours = patient_bootstrap_interval(list("abcdef"), values)
    ref = stats.bootstrap((np.array(values),), np.mean, n_resamples=RESAMPLES, method="percentile",
                          **seeded()).confidence_interval
    assert ours == pytest.approx((ref.low, ref.high), abs=0.02)  # another draw of the same resampling
    assert ours[0] < np.mean(values) < ours[1]


def test_a_patient_s_rows_are_resampled_together():
    """Giving every patient three identical rows (three sets of sequences) does not narrow the interval;
    resampling rows as if they were independent would (about 1/sqrt(3) as wide)."""
    values = [0.91, 0.88, 0.93, 0.2, 0.75, 0.6]
    once = patient_bootstrap_interval(list("abcdef"), values)
    thrice = patient_bootstrap_interval(list("abcdef") * 3, values * 3)
    assert thrice == pytest.approx(once, abs=1e-12)
    rows = stats.bootstrap((np.array(values * 3),), np.mean, n_resamples=RESAMPLES, method="percentile",
                           **seeded()).confidence_interval
    assert rows.high - rows.low < 0.7 * (once[1] - once[0])


def test_patients_with_more_rows_weigh_more_in_the_mean_as_in_the_headline():
    """The statistic is the mean over the resampled rows (the report's "every row" mean), so the interval holds
    that mean: 0.9 twice for one patient and 0.3 once each for two others."""
    low, high = patient_bootstrap_interval(["a", "a", "b", "c"], [0.9, 0.9, 0.3, 0.3])
    assert (low, high) == (pytest.approx(0.3), pytest.approx(0.9))  # all b and c / all a occur (P 8/27, 1/27)


def test_too_few_patients_equal_values_and_mismatched_lengths():
    assert patient_bootstrap_interval(["a", "a", "b"], [0.1, 0.2, 0.3]) is None
    assert patient_bootstrap_interval(["a", "b", "c"], [0.5, 0.5, 0.5]) == (0.5, 0.5)
    with pytest.raises(ValueError, match="2 patients for 3 values"):
        patient_bootstrap_interval(["a", "b"], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="not finite"):
        patient_bootstrap_interval(["a", "b", "c"], [0.1, float("nan"), 0.3])
