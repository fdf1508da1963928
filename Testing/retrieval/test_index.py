"""Exact search against brute force (and against faiss's exact index when installed); ties; bad k."""

from __future__ import annotations

import numpy as np
import pytest

from medcnncad.errors import InputError
from medcnncad.retrieval.index import ExactIndex, standardise, standardise_blocks


def test_exact_search_equals_brute_force():
    rng = np.random.default_rng(0)
    library, queries = rng.normal(size=(500, 24)), rng.normal(size=(7, 24))
    distances, rows = ExactIndex(library).search(queries, k=10)
    brute = np.linalg.norm(queries[:, None, :] - library[None], axis=2)
    assert np.array_equal(rows, np.argsort(brute, axis=1, kind="stable")[:, :10])
    np.testing.assert_allclose(distances, np.sort(brute, axis=1)[:, :10], rtol=1e-4, atol=1e-4)


def test_itself_at_distance_zero_and_near_neighbours_exact_where_norms_are_large():
    """The fast expansion |a|^2 - 2 a.b + |b|^2 loses small distances to float32 rounding when the vectors are long
    (measured: a lesion against its own library entry at 4.9e-4); the ranked distances are exact."""
    rng = np.random.default_rng(1)
    library = rng.normal(size=(50, 300)).astype(np.float32) * 3.0
    near = library[7] + np.float32(1e-3) * np.eye(300, dtype=np.float32)[0]  # 1e-3 from row 7 along one axis
    library = np.vstack([library, near])
    distances, rows = ExactIndex(library).search(library[7], k=3)
    assert rows[0, :2].tolist() == [7, 50]
    assert distances[0, 0] == 0.0
    assert distances[0, 1] == pytest.approx(1e-3, rel=1e-3)
    _, all_rows = ExactIndex(library).search(library[7], k=len(library))  # k = N: the same exact ranking
    assert all_rows[0, :2].tolist() == [7, 50]


def test_ties_come_in_row_order_and_k_equal_to_n_ranks_everything():
    library = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, 0.0]])
    distances, rows = ExactIndex(library).search(np.zeros((1, 2)), k=3)
    assert rows.tolist() == [[3, 0, 1]] and distances.tolist() == [[0.0, 1.0, 1.0]]
    _, rows = ExactIndex(library).search(np.zeros((1, 2)), k=4)
    assert rows.tolist() == [[3, 0, 1, 2]]


@pytest.mark.parametrize("k", [0, 5])
def test_k_outside_the_library_is_one_clear_error(k):
    with pytest.raises(InputError, match="holds 4 lesion"):
        ExactIndex(np.zeros((4, 2))).search(np.zeros((1, 2)), k=k)


def test_standardise_by_hand():
    vectors = np.array([[1.0, 5.0], [3.0, 5.0]])
    out, mean, scale = standardise(vectors)
    assert mean.tolist() == [2.0, 5.0]
    # std (1, constant -> 1) times sqrt(D = 2)
    np.testing.assert_allclose(scale, [np.sqrt(2), np.sqrt(2)])
    np.testing.assert_allclose(out, [[-1 / np.sqrt(2), 0.0], [1 / np.sqrt(2), 0.0]], rtol=1e-6)


def test_agrees_with_faiss_exact_and_hnsw_recall():
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    library, queries = rng.normal(size=(2000, 32)).astype(np.float32), rng.normal(size=(20, 32)).astype(np.float32)
    _, rows = ExactIndex(library).search(queries, k=5)
    flat = faiss.IndexFlatL2(32)
    flat.add(library)
    _, faiss_rows = flat.search(queries, 5)
    assert np.array_equal(rows, faiss_rows)
    hnsw = faiss.IndexHNSWFlat(32, 32)
    hnsw.hnsw.efSearch = 64
    hnsw.add(library)
    _, ann = hnsw.search(queries, 5)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(rows, ann)])
    assert recall >= 0.9  # approximate: not every true neighbour is found


def test_chunked_statistics_equal_numpy(monkeypatch):
    from medcnncad.retrieval import index

    monkeypatch.setattr(index, "_CHUNK", 7)  # several chunks and a short last one
    vectors = np.random.default_rng(2).normal(3.0, 2.0, size=(50, 4)).astype(np.float32)
    out, mean, scale = standardise(vectors)
    np.testing.assert_allclose(mean, vectors.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(scale, vectors.astype(np.float64).std(0) * 2.0, rtol=1e-10)
    np.testing.assert_allclose(out, (vectors - vectors.mean(0)) / (vectors.std(0) * 2.0), rtol=1e-4, atol=1e-5)


def test_a_query_equal_to_a_library_row_is_standardised_onto_it():
    """Library rows were standardised in float32, queries in float64 then rounded: a case queried against its own
    library entry came out at 5.96e-8, not 0."""
    radiomics = np.array([[1.0, 0.5], [9.0, 0.5], [2.0, 0.6], [8.0, 0.4]], np.float32)
    deep = np.array([[0.0, 0.0], [5.0, 5.0], [0.1, 0.0], [4.0, 5.0]], np.float32)
    lib, query = standardise_blocks([radiomics, deep], [radiomics[2:3], deep[2:3]])
    assert np.array_equal(query[0], lib[2])
    distances, rows = ExactIndex(lib).search(query, k=2)
    assert rows.tolist() == [[2, 0]] and distances[0, 0] == 0.0
    # hand-computed: radiomics mean (5, 0.5), std (3.5355, 0.0707), deep mean (2.275, 2.5), std (2.2532, 2.5)
    mean_r, std_r = np.array([5.0, 0.5]), np.sqrt([12.5, 0.005])
    mean_d, std_d = np.array([2.275, 2.5]), np.sqrt([5.076875, 6.25])
    q = np.concatenate([(radiomics[2] - mean_r) / std_r, (deep[2] - mean_d) / std_d]) / np.sqrt(2)
    r0 = np.concatenate([(radiomics[0] - mean_r) / std_r, (deep[0] - mean_d) / std_d]) / np.sqrt(2)
    assert distances[0, 1] == pytest.approx(np.linalg.norm(q - r0), rel=1e-6)
