"""Retrieval quality: precision@k and mean average precision@k against a relevance label (same grade,
same tumor type), and leave-one-out evaluation of a set of labelled lesion vectors.

Definitions (as in information retrieval, e.g. Manning et al., *Introduction to Information Retrieval*,
ch. 8): for one query with ranked results r_1..r_k, rel_i = 1 when r_i shares the query's label;
precision@k = (1/k) sum rel_i; AP@k = (1 / min(k, R)) sum_i rel_i * precision@i, where R is the number of
relevant items in the library (AP@k = 0 when R = 0); mAP@k is the mean of AP@k over queries.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medcnncad.retrieval.index import ExactIndex, standardise_blocks

__all__ = ["precision_at_k", "average_precision_at_k", "leave_one_out"]


def precision_at_k(relevant: Sequence[bool], k: int) -> float:
    """Share of the first ``k`` results that are relevant (``relevant`` in rank order, at least k long)."""
    if k < 1 or len(relevant) < k:
        raise ValueError(f"k = {k}: needs 1 <= k <= {len(relevant)} ranked results")
    return float(np.mean(np.asarray(relevant[:k], dtype=float)))


def average_precision_at_k(relevant: Sequence[bool], k: int, n_relevant: int) -> float:
    """AP@k of one ranking: sum over relevant ranks i <= k of precision@i, divided by min(k, n_relevant)."""
    if k < 1 or len(relevant) < k:
        raise ValueError(f"k = {k}: needs 1 <= k <= {len(relevant)} ranked results")
    if n_relevant <= 0:
        return 0.0
    hits = np.asarray(relevant[:k], dtype=float)
    precisions = np.cumsum(hits) / np.arange(1, k + 1)
    return float((precisions * hits).sum() / min(k, n_relevant))


def leave_one_out(blocks: Sequence[np.ndarray], labels: Sequence[str], groups: Sequence[str], k: int,
                  standardise_per_fold: bool = True) -> dict[str, float]:
    """Each lesion queries all lesions of the *other* groups (patients); precision@k and mAP@k of "same label".

    Args:
        blocks: descriptor blocks, each (N, D_b) raw values (e.g. [radiomics, deep]); each is standardised with the
            statistics of each fold's library and weighted 1/sqrt(D_b), as a library query does.
        labels: relevance label per lesion (e.g. "HGG"/"LGG").
        groups: patient (case) per lesion; a query never retrieves lesions of its own patient.
        k: results per query (capped at the fold's library size).
        standardise_per_fold: z-score with each fold's library statistics (as a deployed library would).

    Returns:
        ``{"precision_at_k": ..., "map_at_k": ..., "queries": n, "k": k}`` (NaN with fewer than 2 groups).
    """
    labels_arr, groups_arr = np.asarray(labels), np.asarray(groups)
    blocks = [np.asarray(b, dtype=np.float64) for b in blocks]
    precisions, aps = [], []
    for q in range(len(labels_arr)):
        library = np.flatnonzero(groups_arr != groups_arr[q])
        if library.size == 0:
            continue
        kk = min(k, library.size)
        if standardise_per_fold:
            lib, query = standardise_blocks([b[library] for b in blocks], [b[q:q + 1] for b in blocks])
        else:
            lib = np.concatenate([b[library] for b in blocks], 1)
            query = np.concatenate([b[q:q + 1] for b in blocks], 1)
        _, rows = ExactIndex(lib).search(query, kk)
        relevant = labels_arr[library[rows[0]]] == labels_arr[q]
        n_relevant = int(np.count_nonzero(labels_arr[library] == labels_arr[q]))
        precisions.append(precision_at_k(relevant, kk))
        aps.append(average_precision_at_k(relevant, kk, n_relevant))
    if not precisions:
        return {"precision_at_k": float("nan"), "map_at_k": float("nan"), "queries": 0, "k": k}
    return {"precision_at_k": float(np.mean(precisions)), "map_at_k": float(np.mean(aps)),
            "queries": len(precisions), "k": k}
