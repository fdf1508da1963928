"""A similar case segmented from other input sequences than the query (T1c alone against all four) is not
compared on equal terms: each such neighbour carries a plain note, kept in the library entry, the query's JSON,
the text table and the HTML report; an entry that predates the recording says "unknown", never a guess."""

from __future__ import annotations

import json

import pytest
from retrieval_cases import MODEL, NAMES, fake_case

from medcnncad.reporting.html import _similar_section
from medcnncad.retrieval.library import Library, LibraryError

ALL = ["T1", "T1c", "T2", "FLAIR"]


def _library(tmp_path) -> Library:
    library = Library.create(tmp_path / "lib", MODEL, NAMES)
    library.add_case(fake_case(tmp_path / "all4", [(1.0, 0.5, [0.0, 0.0])], given_inputs=ALL), "all4")
    library.add_case(fake_case(tmp_path / "t1c", [(2.0, 0.5, [0.5, 0.0])], given_inputs=["T1c"]), "t1c")
    library.add_case(fake_case(tmp_path / "old", [(4.0, 0.5, [1.0, 0.0])]), "old")  # an entry from before
    return library


def _report(tmp_path, given_inputs) -> dict:
    folder = fake_case(tmp_path / "query", [(1.1, 0.5, [0.05, 0.0])], given_inputs=given_inputs)
    return json.loads((folder / "report.json").read_text())


def test_each_neighbour_segmented_from_other_sequences_carries_a_note(tmp_path):
    library = Library.open(_library(tmp_path).root)
    assert json.loads((tmp_path / "lib" / "entries" / "all4" / "entry.json").read_text())["given_inputs"] == ALL
    found = library.query(_report(tmp_path, ["T1c"]), k=3)
    assert [(n.lesion.case_id, n.inputs_note) for n in found] == [
        ("all4", "library case all4 was segmented from FLAIR+T1+T1c+T2, this case from T1c only"),
        ("t1c", None),
        ("old", "library case old was segmented from unknown sequences (not recorded), this case from T1c only")]
    rows = [n.to_json() for n in found]
    assert [r["given_inputs"] for r in rows] == [ALL, ["T1c"], None]
    assert rows[0]["inputs_note"] == found[0].inputs_note and rows[1]["inputs_note"] is None
    both = library.query(_report(tmp_path, ["FLAIR", "T2", "T1c", "T1"]), k=2)  # the same set, another order
    assert [n.inputs_note for n in both] == [None, "library case t1c was segmented from T1c only, this case from "
                                                   "FLAIR+T1+T1c+T2"]


def test_a_query_whose_sequences_were_not_recorded_says_unknown(tmp_path):
    found = _library(tmp_path).query(_report(tmp_path, None), k=1)
    assert found[0].inputs_note == ("library case all4 was segmented from FLAIR+T1+T1c+T2, this case from unknown "
                                    "sequences (not recorded)")


def test_malformed_given_inputs_are_refused_naming_them(tmp_path):
    library = _library(tmp_path)
    report = _report(tmp_path, ["T1c"])
    report["retrieval"]["given_inputs"] = "T1c"
    with pytest.raises(LibraryError, match="given_inputs 'T1c': expected a list of sequence names"):
        library.query(report, k=1)


def test_the_html_report_shows_the_notes(tmp_path):
    library = _library(tmp_path)
    report = _report(tmp_path, ["T1c"])
    similar = [n.to_json() for n in library.query(report, k=3)]
    page = "".join(_similar_section(tmp_path / "query", report, similar))
    assert "<th>note</th>" in page
    assert "<td>library case all4 was segmented from FLAIR+T1+T1c+T2, this case from T1c only</td>" in page
    assert "<td>library case old was segmented from unknown sequences (not recorded), this case from T1c only</td>" \
        in page and "not compared on equal terms" in page
    same = [n.to_json() for n in library.query(_report(tmp_path, ["T1c"]), k=1, exclude_case="all4")]
    assert "note" not in "".join(_similar_section(tmp_path / "query", report, same))  # no column without a note
