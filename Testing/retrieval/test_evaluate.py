"""precision@k and AP@k on hand-made rankings; leave-one-patient-out on hand-placed points."""

from __future__ import annotations

import numpy as np
import pytest

from medcnncad.retrieval.evaluate import average_precision_at_k, leave_one_out, precision_at_k


def test_precision_and_average_precision_by_hand():
    ranking = [True, False, True, False, False]
    assert precision_at_k(ranking, 1) == 1.0
    assert precision_at_k(ranking, 3) == pytest.approx(2 / 3)
    assert precision_at_k(ranking, 5) == pytest.approx(2 / 5)
    # relevant at ranks 1 and 3: (1/1 + 2/3) / min(5, 2 relevant in the library)
    assert average_precision_at_k(ranking, 5, n_relevant=2) == pytest.approx((1 + 2 / 3) / 2)
    # 4 relevant in the library, k = 3: (1 + 2/3) / 3
    assert average_precision_at_k(ranking, 3, n_relevant=4) == pytest.approx((1 + 2 / 3) / 3)
    assert average_precision_at_k([False, False], 2, n_relevant=0) == 0.0
    with pytest.raises(ValueError):
        precision_at_k(ranking, 6)


def test_leave_one_patient_out_never_retrieves_the_same_patient():
    # two well-separated clusters by label; patient "p1" has two lesions in the A cluster
    vectors = np.array([[0.0], [0.1], [0.2], [10.0], [10.1]])
    labels = ["A", "A", "A", "B", "B"]
    groups = ["p1", "p1", "p2", "p3", "p4"]
    out = leave_one_out([vectors], labels, groups, k=1, standardise_per_fold=False)
    # every query's nearest other-patient lesion is in its own cluster
    assert out == {"precision_at_k": 1.0, "map_at_k": 1.0, "queries": 5, "k": 1}
    out = leave_one_out([vectors], labels, groups, k=2, standardise_per_fold=False)
    # p1's lesions: library {p2 A, p3 B, p4 B} -> [A, B]: P@2 = 1/2, AP@2 = 1/min(2, 1) = 1
    # p2: library {p1 A, p1 A, B, B} -> [A, A]: 1, 1;  p3: {A, A, A, p4 B} -> [B, A]: 1/2, AP = 1/1
    assert out["precision_at_k"] == pytest.approx((0.5 + 0.5 + 1 + 0.5 + 0.5) / 5)
    assert out["map_at_k"] == pytest.approx(1.0)
