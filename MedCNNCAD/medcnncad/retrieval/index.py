"""Nearest-neighbour search over library vectors: exact, in numpy (float32).

Chosen by the benchmark in ``scripts/bench.py retrieval`` (docs/performance.md): at the sizes a lesion
library reaches (10^3-10^5 lesions) an exact search answers a query in milliseconds without any index to
build, and at 10^6 synthetic entries it stays well under a second; an approximate index (faiss HNSW) is
faster per query at 10^6 but costs minutes to build, memory for its graph, a dependency, and returns
approximate neighbours. Exact search also makes the results reproducible bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medcnncad.errors import InputError

__all__ = ["ExactIndex", "standardise", "standardise_blocks"]


_CHUNK = 65_536  # rows per chunk of the statistics: no full float64 copy of a large library


def _mean_std(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and (population) standard deviation in float64, in chunks of rows (two passes)."""
    n = max(len(vectors), 1)
    total = np.zeros(vectors.shape[1], np.float64)
    for start in range(0, len(vectors), _CHUNK):
        total += vectors[start:start + _CHUNK].sum(0, dtype=np.float64)
    mean = total / n
    squares = np.zeros(vectors.shape[1], np.float64)
    for start in range(0, len(vectors), _CHUNK):
        squares += ((vectors[start:start + _CHUNK].astype(np.float64) - mean) ** 2).sum(0)
    return mean, np.sqrt(squares / n)


def standardise(vectors: np.ndarray, reference: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-dimension z-scores of ``vectors`` (N, D) with the mean and standard deviation of ``reference``
    (default: ``vectors`` themselves; a constant dimension gets scale 1), divided by sqrt(D) so that blocks
    of different lengths weigh alike when concatenated.

    Returns:
        (standardised float32 (N, D), mean (D,) float64, scale (D,) float64).
    """
    mean, scale = _mean_std(vectors if reference is None else reference)
    scale[scale < 1e-9] = 1.0
    scale = scale * np.sqrt(max(vectors.shape[1], 1))
    return _scaled(vectors, mean, scale), mean, scale


def _scaled(vectors: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(vectors - mean) / scale in float32: the one computation for library and query rows, so that a query
    equal to a library row lands on it exactly (distance 0)."""
    out = np.asarray(vectors, dtype=np.float32) - mean.astype(np.float32)
    out /= scale.astype(np.float32)
    return out


def standardise_blocks(library: Sequence[np.ndarray], queries: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Library (N, D_b) and query (Q, D_b) blocks of descriptors, each block standardised with the library's
    statistics (:func:`standardise`: z-score, then 1/sqrt(D_b), so each block weighs alike) and concatenated.

    Returns:
        (library (N, sum D_b), queries (Q, sum D_b)), float32.
    """
    parts_lib, parts_q = [], []
    for lib_block, q_block in zip(library, queries):
        lib, mean, scale = standardise(np.asarray(lib_block))
        parts_lib.append(lib)
        parts_q.append(_scaled(np.atleast_2d(q_block), mean, scale))
    return np.concatenate(parts_lib, 1), np.concatenate(parts_q, 1)


class ExactIndex:
    """Exact k nearest neighbours by Euclidean distance.

    Args:
        vectors: (N, D) library vectors (converted to float32).

    Example::

        >>> index = ExactIndex(np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]]))
        >>> distances, rows = index.search(np.array([[0.0, 0.0]]), k=2)
        >>> rows.tolist(), distances.round(3).tolist()
        ([[0, 2]], [[0.0, 1.0]])
    """

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.vectors.ndim != 2:
            raise InputError(f"library vectors must be (N, D), got shape {self.vectors.shape}")
        self.squared_norms = np.einsum("nd,nd->n", self.vectors, self.vectors)

    def __len__(self) -> int:
        return len(self.vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest library rows of each query.

        Args:
            queries: (Q, D) query vectors.
            k: neighbours per query (1 <= k <= N).

        Returns:
            (distances (Q, k) float32, rows (Q, k) int64), nearest first; equal distances in row order.

        Raises:
            InputError: ``k`` outside 1..N or a dimension mismatch.
        """
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        n = len(self.vectors)
        if not 1 <= k <= n:
            raise InputError(f"k = {k}: the library holds {n} lesion(s); choose k between 1 and {n}")
        if queries.shape[1] != self.vectors.shape[1]:
            raise InputError(f"query vectors have {queries.shape[1]} values, the library's {self.vectors.shape[1]}")
        if k < n:
            # |a|^2 - 2 a.b + |b|^2 is fast but off by float32 rounding of the norms (a lesion against itself
            # comes out at ~5e-4, not 0): it only shortlists the rows within that error of the k-th, including
            # every row tied with it, and the shortlist is ranked by exact distances
            q_norms = np.einsum("qd,qd->q", queries, queries)
            squared = self.squared_norms[None, :] - 2.0 * (queries @ self.vectors.T) + q_norms[:, None]
            slack = 8 * np.finfo(np.float32).eps * (self.squared_norms.max() + q_norms)
            kth = np.partition(squared, k - 1, axis=1)[:, k - 1]
            pools = [np.flatnonzero(squared[q] <= kth[q] + slack[q]) for q in range(len(queries))]
        else:
            pools = [np.arange(n)] * len(queries)
        rows, distances = [], []
        for query, pool in zip(queries, pools):
            exact = np.sqrt(np.square(self.vectors[pool].astype(np.float64) - query).sum(1))
            order = np.lexsort((pool, exact))[:k]
            rows.append(pool[order])
            distances.append(exact[order])
        return np.stack(distances).astype(np.float32), np.stack(rows).astype(np.int64)
