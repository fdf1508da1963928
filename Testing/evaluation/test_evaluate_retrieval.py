"""The retrieval evaluation's bookkeeping on hand-made records: chance, per-feature scores, self-retrieval ranks
(the segmentation runs are covered by ``medcnncad evaluate-retrieval`` in docs/retrieval.md)."""

from __future__ import annotations

import numpy as np
import pytest

from medcnncad.evaluation.retrieval import format_retrieval_table, retrieval_scores, self_retrieval


def _record(group, grade, radiomics, deep, variant="all"):
    return {"group": group, "grade": grade, "type": "glioma", "variant": variant,
            "radiomics": np.asarray(radiomics, float), "deep": np.asarray(deep, float)}


def test_scores_chance_and_self_retrieval_by_hand():
    records = [_record("a", "HGG", [0.0, 1.0], [5.0]), _record("b", "HGG", [0.1, 1.0], [0.0]),
               _record("c", "LGG", [5.0, 1.0], [0.1]), _record("d", None, [9.0, 9.0], [9.0]),
               _record("a", "HGG", [0.0, 1.1], [4.0], variant="T1c")]
    scores = retrieval_scores(records, "grade", ks=(1,))
    assert scores["queries"] == 3 and scores["counts"] == {"HGG": 2, "LGG": 1}
    # a: others b (HGG), c (LGG) -> 1/2; b: 1/2; c: 0/2 -> chance = 1/3
    assert scores["chance"] == pytest.approx(1 / 3)
    # radiomics: a <-> b nearest (same grade), c's nearest is b (HGG): P@1 = 2/3
    assert scores["radiomics"]["1"]["precision_at_k"] == pytest.approx(2 / 3)
    # deep: a (5) nearest c (0.1); b (0) nearest c; c nearest b -> 0/3
    assert scores["deep"]["1"]["precision_at_k"] == 0.0
    selfr = self_retrieval(records)
    assert selfr["queries"] == 1 and selfr["library"] == 4
    assert selfr["deep"]["ranks"] == {"a/T1c": 1} and selfr["deep"]["top1"] == 1.0
    table = format_retrieval_table({"model": "m", "version": "1", "trained_on": "x",
                                    "real": {"grade": scores, "self_retrieval": selfr}})
    assert "| radiomics | 0.667 | 0.667 |" in table and "| chance | 0.333 |" in table


def test_one_label_value_is_nothing_to_measure():
    records = [_record("a", "HGG", [0.0], [0.0]), _record("b", "HGG", [1.0], [1.0])]
    assert "nothing to measure" in retrieval_scores(records, "grade")["note"]
