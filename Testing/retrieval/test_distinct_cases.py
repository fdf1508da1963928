"""Similar *cases*, not lesions: a library case with several lesions near the query fills one row (its nearest
lesion), k counts cases, and the search stays exact (equal to a brute-force ranking of every lesion)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from retrieval_cases import MODEL, NAMES, fake_case

from medcnncad.retrieval.library import Library, LibraryError


def _two_lesion_library(tmp_path) -> Library:
    """Case a: two lesions next to the query (1.15); b and c: one lesion each, farther away."""
    library = Library.create(tmp_path / "lib", MODEL, NAMES)
    library.add_case(fake_case(tmp_path / "a", [(1.0, 0.5, [0.0, 0.0]), (1.2, 0.5, [0.1, 0.0])]), "a")
    library.add_case(fake_case(tmp_path / "b", [(5.0, 0.5, [2.0, 2.0])]), "b")
    library.add_case(fake_case(tmp_path / "c", [(9.0, 0.5, [5.0, 5.0])]), "c")
    return library


def _query(tmp_path, lesions) -> dict:
    return json.loads((fake_case(tmp_path / "query", lesions) / "report.json").read_text())


def test_one_row_per_library_case_its_nearest_lesion(tmp_path):
    """Before: k=2 gave case a twice (lesions 2 and 1), and k=4 on three cases gave four rows."""
    library = _two_lesion_library(tmp_path)
    query = _query(tmp_path, [(1.15, 0.5, [0.08, 0.0])])
    found = library.query(query, k=2)
    assert [(n.rank, n.lesion.case_id, n.lesion.lesion_id) for n in found] == [(1, "a", 2), (2, "b", 1)]
    lesions = library.query(query, k=2, distinct_cases=False)  # the lesion-level list stays available
    assert [(n.lesion.case_id, n.lesion.lesion_id) for n in lesions] == [("a", 2), ("a", 1)]
    assert [n.lesion.case_id for n in library.query(query, k=9, at_most=True)] == ["a", "b", "c"]
    assert len(library.query(query, k=9, at_most=True, distinct_cases=False)) == 4
    with pytest.raises(LibraryError, match=r"k = 4: the library holds 3 case\(s\) \(4 lesion\(s\)\); choose k "
                                           r"between 1 and 3"):
        library.query(query, k=4)
    with pytest.raises(LibraryError, match=r"k = 3: the library holds 2 case\(s\) \(3 lesion\(s\)\)"):
        library.query(query, k=3, exclude_case="b")
    assert len(library.query(query, k=4, distinct_cases=False)) == 4


def _brute_force(library: Library, query: dict, k: int) -> list[tuple[str, int, float]]:
    """Every lesion's combined distance in float64 (each block z-scored with the library's statistics, divided by
    sqrt(its length)), ranked by distance then library row; the first lesion of each case, k cases."""
    blocks = []
    q_lesion = max(query["retrieval"]["lesions"], key=lambda les: les["volume_ml"])
    for lib_rows, q_row in (([les.radiomics for les in library.lesions], [q_lesion["radiomics"][n] for n in NAMES]),
                            ([les.deep for les in library.lesions], q_lesion["deep"])):
        rows = np.asarray(lib_rows, np.float64)
        std = rows.std(0)
        std[std < 1e-9] = 1.0
        scale = std * np.sqrt(rows.shape[1])
        blocks.append(((rows - rows.mean(0)) / scale, (np.asarray(q_row, np.float64) - rows.mean(0)) / scale))
    lib = np.concatenate([b[0] for b in blocks], 1)
    q = np.concatenate([b[1] for b in blocks])
    distances = np.linalg.norm(lib - q, axis=1)
    out: dict[str, tuple[str, int, float]] = {}
    for row in np.lexsort((np.arange(len(distances)), distances)):
        les = library.lesions[row]
        out.setdefault(les.case_id, (les.case_id, les.lesion_id, float(distances[row])))
    return list(out.values())[:k]


def test_distinct_cases_equal_a_brute_force_ranking(tmp_path):
    """Twelve cases of 1-4 lesions, one ("crowd") with six lesions around the query, so that the first searches
    hold fewer than k cases and the search is widened."""
    rng = np.random.default_rng(7)
    library = Library.create(tmp_path / "lib", MODEL, NAMES)
    for index in range(11):
        lesions = [(float(rng.uniform(1, 20)), float(rng.uniform(0.2, 0.9)), rng.normal(0, 3, 4).tolist())
                   for _ in range(int(rng.integers(1, 5)))]
        library.add_case(fake_case(tmp_path / f"case{index}", lesions), f"case{index}")
    crowd = [(5.0 + 0.01 * i, 0.5, [0.01 * i, 0.0, 0.0, 0.0]) for i in range(6)]
    library.add_case(fake_case(tmp_path / "crowd", crowd), "crowd")
    query = _query(tmp_path, [(5.02, 0.5, [0.015, 0.0, 0.0, 0.0])])
    assert len(library.lesions) > 12
    for k in range(1, 13):
        found = library.query(query, k=k)
        expected = _brute_force(library, query, k)
        assert [(n.lesion.case_id, n.lesion.lesion_id) for n in found] == [e[:2] for e in expected]
        np.testing.assert_allclose([n.distance for n in found], [e[2] for e in expected], rtol=1e-5, atol=1e-6)
    assert library.query(query, k=3)[0].lesion.case_id == "crowd"
    assert [n.lesion.case_id for n in library.query(query, k=3, distinct_cases=False)] == ["crowd"] * 3
