"""The case library: build, add, query against hand-computed neighbours; checksums refuse a tampered library;
an incompatible model or descriptor version, an empty library and a too-large k are one clear error each."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from retrieval_cases import MODEL, NAMES, fake_case

from medcnncad.pipeline.library import LibraryRow, add_cohort
from medcnncad.retrieval.library import Library, LibraryError, sha256_of


def _library(tmp_path):
    library = Library.create(tmp_path / "lib", MODEL, NAMES)
    library.add_case(fake_case(tmp_path / "c1", [(1.0, 0.5, [0.0, 0.0]), (9.0, 0.5, [5.0, 5.0])]), "c1",
                     {"grade": "LGG"})
    library.add_case(fake_case(tmp_path / "c2", [(2.0, 0.6, [0.1, 0.0])]), "c2", {"grade": "HGG"})
    library.add_case(fake_case(tmp_path / "c3", [(8.0, 0.4, [4.0, 5.0])]), "c3", {"grade": "HGG"})
    return library


def _standardised(rows):
    rows = np.asarray(rows, float)
    std = rows.std(0)
    std[std == 0] = 1
    return rows.mean(0), std * np.sqrt(rows.shape[1])


def test_query_returns_the_hand_computed_neighbours(tmp_path):
    library = _library(tmp_path)
    reopened = Library.open(tmp_path / "lib")
    assert [(les.case_id, les.lesion_id) for les in reopened.lesions] == [("c1", 1), ("c1", 2), ("c2", 1), ("c3", 1)]
    query = json.loads(fake_case(tmp_path / "q", [(1.5, 0.5, [0.1, 0.1])]).joinpath("report.json").read_text())
    # radiomics only: z-scores with the library's mean/std, divided by sqrt(2)
    radiomics = [[1.0, 0.5], [9.0, 0.5], [2.0, 0.6], [8.0, 0.4]]
    mean, scale = _standardised(radiomics)
    lib = (np.asarray(radiomics) - mean) / scale
    q = (np.array([1.5, 0.5]) - mean) / scale
    expected = np.argsort(np.linalg.norm(lib - q, axis=1), kind="stable")
    found = reopened.query(query, k=4, features="radiomics", distinct_cases=False)  # every lesion ranked
    assert [n.rank for n in found] == [1, 2, 3, 4]
    assert [(n.lesion.case_id, n.lesion.lesion_id) for n in found] == \
        [(reopened.lesions[i].case_id, reopened.lesions[i].lesion_id) for i in expected]
    np.testing.assert_allclose([n.distance for n in found], np.sort(np.linalg.norm(lib - q, axis=1)), rtol=1e-5)
    assert found[0].lesion.metadata == {"grade": "LGG"} and found[0].lesion.thumbnail.is_file()
    # combined: the deep block pulls the same way here; c1 lesion 1 stays nearest
    assert reopened.query(query, k=2)[0].lesion.case_id == "c1"
    assert {n.lesion.case_id for n in reopened.query(query, k=2, exclude_case="c1")} == {"c2", "c3"}
    assert len(library.lesions) == 4


def test_library_is_portable_and_stores_no_paths(tmp_path):
    _library(tmp_path)
    shutil.move(tmp_path / "lib", tmp_path / "elsewhere")
    moved = Library.open(tmp_path / "elsewhere")
    assert len(moved.lesions) == 4 and moved.lesions[0].thumbnail.parent.parent.parent == tmp_path / "elsewhere"
    text = "".join(p.read_text() for p in (tmp_path / "elsewhere").rglob("*.json"))
    assert str(tmp_path) not in text


@pytest.mark.parametrize("target", ["entries/c2/entry.json", "entries/c2/lesion_1.png"])
def test_a_tampered_library_is_refused(tmp_path, target):
    _library(tmp_path)
    path = tmp_path / "lib" / target
    path.write_bytes(path.read_bytes() + b" ")
    with pytest.raises(LibraryError, match="checksum mismatch"):
        Library.open(tmp_path / "lib")


def test_an_entry_outside_the_library_is_refused(tmp_path):
    _library(tmp_path)
    data = json.loads((tmp_path / "lib" / "library.json").read_text())
    data["entries"][0]["file"] = "../c1/report.json"
    (tmp_path / "lib" / "library.json").write_text(json.dumps(data))
    with pytest.raises(LibraryError, match="leaves the library folder"):
        Library.open(tmp_path / "lib")


def test_incompatible_cases_and_bad_requests_are_clear_errors(tmp_path):
    library = _library(tmp_path)
    other = fake_case(tmp_path / "other", [(1.0, 0.5, [0.0, 0.0])], model={**MODEL, "weights_sha256": "b" * 64})
    with pytest.raises(LibraryError, match="library holds model demo"):
        library.add_case(other, "other")
    newer = fake_case(tmp_path / "newer", [(1.0, 0.5, [0.0, 0.0])], model={**MODEL, "version": "1.0.1"})
    with pytest.raises(LibraryError, match="demo 1.0.1 .* the library holds model demo 1.0.0"):
        library.add_case(newer, "newer")  # the same weights, another version: its preprocessing may differ
    old = fake_case(tmp_path / "old", [(1.0, 0.5, [0.0, 0.0])], version="0")
    with pytest.raises(LibraryError, match="descriptor version 0"):
        library.add_case(old, "old")
    with pytest.raises(LibraryError, match="already in the library"):
        library.add_case(tmp_path / "c1", "c1")
    with pytest.raises(LibraryError, match="case id"):
        library.add_case(tmp_path / "c1", "../x")
    report = json.loads((tmp_path / "c1" / "report.json").read_text())
    with pytest.raises(LibraryError, match=r"k = 5: the library holds 3 case\(s\) \(4 lesion"):
        library.query(report, k=5)
    with pytest.raises(LibraryError, match="k = 5: the library holds 4 lesion"):
        library.query(report, k=5, distinct_cases=False)
    with pytest.raises(LibraryError, match="no lesion 7"):
        library.query(report, k=1, lesion_id=7)
    with pytest.raises(LibraryError, match="no retrieval descriptors"):
        library.query({"model": MODEL}, k=1)
    empty = Library.create(tmp_path / "empty", MODEL, NAMES)
    with pytest.raises(LibraryError, match="library is empty"):
        empty.query(report, k=1)
    with pytest.raises(LibraryError, match="already holds a case library"):
        Library.create(tmp_path / "lib", MODEL, NAMES)
    data = json.loads((tmp_path / "lib" / "library.json").read_text())
    data["descriptor_version"] = "0"
    (tmp_path / "lib" / "library.json").write_text(json.dumps(data))
    with pytest.raises(LibraryError, match="descriptor version 0"):
        Library.open(tmp_path / "lib")
    with pytest.raises(LibraryError, match="not a case library"):
        Library.open(tmp_path / "nowhere")


def test_html_similar_cases_section(tmp_path):
    from medcnncad.reporting.html import _similar_section

    library = _library(tmp_path)
    report = json.loads((tmp_path / "c2" / "report.json").read_text())
    similar = [n.to_json() for n in library.query(report, k=2, exclude_case="c2")]
    html = "".join(_similar_section(tmp_path / "c2", report, similar))
    assert "<h2>Similar cases</h2>" in html and "query: WT lesion 1 (2.00 mL)" in html
    assert html.count("<tr>") == 3 and html.count("data:image/png;base64") == 3  # query + 2 neighbours
    assert "<th>grade</th>" in html and "<td>LGG</td>" in html
    assert _similar_section(tmp_path, report, None) == []


def test_view_images_are_stored_without_tags_checksummed_and_refused_when_missing(tmp_path):
    import SimpleITK as sitk

    library = Library.create(tmp_path / "lib", MODEL, NAMES)
    case = fake_case(tmp_path / "c1", [(1.0, 0.5, [0.0, 0.0])])
    with pytest.raises(LibraryError, match="no labels.seg.nrrd"):  # checked before anything is written
        library.add_case(case, "c1", view_image=tmp_path / "t1.nrrd")
    assert not (tmp_path / "lib" / "entries" / "c1").exists()
    labels = sitk.Image(4, 5, 6, sitk.sitkUInt8)
    sitk.WriteImage(labels, str(case / "labels.seg.nrrd"))
    image = sitk.GetImageFromArray(np.arange(120, dtype=np.int16).reshape(6, 5, 4))
    image.SetSpacing((1.0, 2.0, 3.0))
    image.SetOrigin((10.0, -5.0, 2.5))
    image.SetMetaData("0010|0010", "Doe^Jane")  # a patient name in the header
    sitk.WriteImage(image, str(tmp_path / "t1.nrrd"))
    assert "Doe^Jane" in (tmp_path / "t1.nrrd").read_bytes().decode("latin-1")
    library.add_case(case, "c1", {"grade": "HGG"}, view_image=tmp_path / "t1.nrrd")
    library.add_case(fake_case(tmp_path / "c2", [(2.0, 0.6, [0.1, 0.0])]), "c2")  # a case without images
    reopened = Library.open(tmp_path / "lib")
    view = reopened.lesions[0].view
    stored = sitk.ReadImage(str(view["image"]))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(stored), sitk.GetArrayFromImage(image))
    assert stored.GetSpacing() == (1.0, 2.0, 3.0) and stored.GetOrigin() == (10.0, -5.0, 2.5)
    assert b"Doe^Jane" not in view["image"].read_bytes()
    assert view["segmentation"].read_bytes() == (case / "labels.seg.nrrd").read_bytes()
    assert reopened.lesions[1].view is None
    assert reopened.query(json.loads((case / "report.json").read_text()), k=1)[0].to_json()["view"] == \
        {"image": str(view["image"]), "segmentation": str(view["segmentation"])}
    view["image"].unlink()
    with pytest.raises(LibraryError, match="view image missing or checksum mismatch"):
        Library.open(tmp_path / "lib")


def test_at_most_k_returns_the_whole_smaller_library(tmp_path):
    library = _library(tmp_path)
    report = json.loads((tmp_path / "c1" / "report.json").read_text())
    assert [n.rank for n in library.query(report, k=9, at_most=True)] == [1, 2, 3]  # c1, c2, c3
    assert [n.rank for n in library.query(report, k=9, at_most=True, distinct_cases=False)] == [1, 2, 3, 4]
    with pytest.raises(LibraryError, match="k = 9"):
        library.query(report, k=9)


def test_non_finite_descriptors_are_refused_not_ranked(tmp_path):
    """A NaN made every distance NaN and the ranking the library's row order (c1, c2, c3 at distance nan)."""
    library = _library(tmp_path)
    nan_radiomics = fake_case(tmp_path / "n1", [(float("nan"), 0.5, [0.0, 0.0])])
    with pytest.raises(LibraryError, match=r"n1: retrieval lesion 1: value 'volume_ml' is nan"):
        library.add_case(nan_radiomics, "n1")
    assert not (tmp_path / "lib" / "entries" / "n1").exists() and len(library.lesions) == 4
    inf_deep = json.loads(fake_case(tmp_path / "q", [(1.5, 0.5, [0.1, float("inf")])])
                          .joinpath("report.json").read_text())
    with pytest.raises(LibraryError, match=r"q: retrieval lesion 1: deep: value 1 is inf: not a finite number"):
        library.query(inf_deep, k=1, where=str(tmp_path / "q"))
    nan_roundness = json.loads(fake_case(tmp_path / "q2", [(1.5, float("nan"), [0.1, 0.1])])
                               .joinpath("report.json").read_text())
    with pytest.raises(LibraryError, match=r"radiomics: value 'roundness' is nan"):
        library.query(nan_roundness, k=1, features="radiomics")
    # a library written before the check (NaN in an entry, its checksum updated) is refused at open
    entry = tmp_path / "lib" / "entries" / "c2" / "entry.json"
    entry.write_text(entry.read_text().replace('"roundness": 0.6', '"roundness": NaN'))
    data = json.loads((tmp_path / "lib" / "library.json").read_text())
    data["entries"][1]["sha256"] = sha256_of(entry)
    (tmp_path / "lib" / "library.json").write_text(json.dumps(data))
    with pytest.raises(LibraryError, match=r"c2/entry.json: retrieval lesion 1: radiomics: value 'roundness' is nan"):
        Library.open(tmp_path / "lib")


def test_malformed_descriptors_are_one_clear_error(tmp_path):
    library = _library(tmp_path)
    report = json.loads((tmp_path / "c2" / "report.json").read_text())
    del report["retrieval"]["lesions"][0]["radiomics"]["roundness"]
    with pytest.raises(LibraryError, match=r"the case: retrieval lesion 1: no radiomics value 'roundness'"):
        library.query(report, k=1)
    report = json.loads((tmp_path / "c2" / "report.json").read_text())
    report["retrieval"]["lesions"][0]["deep"] = [0.1, 0.0, 0.3]  # the library's vectors have 2 values
    with pytest.raises(LibraryError, match=r"retrieval lesion 1: deep: 3 value\(s\), expected 2"):
        library.query(report, k=1)
    two = fake_case(tmp_path / "two", [(1.0, 0.5, [0.0, 0.0]), (2.0, 0.5, [0.0])])  # lengths differ inside a case
    with pytest.raises(LibraryError, match=r"two: retrieval lesion 2: deep: 1 value\(s\), expected 2"):
        library.add_case(two, "two")
    with pytest.raises(LibraryError, match="no retrieval descriptors"):
        library.query([1, 2], k=1)  # type: ignore[arg-type]
    with pytest.raises(LibraryError, match="an integer lesion_id"):
        library.query({**report, "retrieval": {**report["retrieval"], "lesions": [{"lesion_id": "1"}]}}, k=1)
    # the well-formed query still answers: c2's own lesion, at distance 0
    good = json.loads((tmp_path / "c2" / "report.json").read_text())
    found = library.query(good, k=1)
    assert found[0].lesion.case_id == "c2" and found[0].distance == 0.0


def test_adds_through_two_open_handles_keep_both_cases(tmp_path):
    """Two 'library add' processes that opened the library before either saved: the second save dropped the
    first case from library.json (1 entry of 2, its folder orphaned), and one id added twice replaced the
    first case's files; both adds had reported success."""
    Library.create(tmp_path / "lib", MODEL, NAMES)
    first, second = Library.open(tmp_path / "lib"), Library.open(tmp_path / "lib")
    assert first.add_case(fake_case(tmp_path / "c1", [(1.0, 0.5, [0.0, 0.0]), (9.0, 0.5, [5.0, 5.0])]), "c1") == 2
    assert second.add_case(fake_case(tmp_path / "c2", [(2.0, 0.6, [0.1, 0.0])]), "c2") == 1
    assert [(les.case_id, les.lesion_id) for les in second.lesions] == [("c1", 1), ("c1", 2), ("c2", 1)]
    reopened = Library.open(tmp_path / "lib")
    assert [e["case_id"] for e in reopened.entries] == ["c1", "c2"] and len(reopened.lesions) == 3
    with pytest.raises(LibraryError, match="'c2' is already in the library"):
        first.add_case(fake_case(tmp_path / "c3", [(8.0, 0.4, [4.0, 5.0])]), "c2")
    assert Library.open(tmp_path / "lib").lesions[2].volume_ml == 2.0  # c2's own files, not c3's


def test_an_add_waits_for_the_library_lock(tmp_path):
    import threading

    from medcnncad.io.file_lock import exclusive_lock
    from medcnncad.retrieval.library import LOCK_FILE

    library = Library.create(tmp_path / "lib", MODEL, NAMES)
    case = fake_case(tmp_path / "c1", [(1.0, 0.5, [0.0, 0.0])])
    done = threading.Event()
    worker = threading.Thread(target=lambda: (library.add_case(case, "c1"), done.set()))
    with exclusive_lock(tmp_path / "lib" / LOCK_FILE) as locked:
        assert locked
        worker.start()
        assert not done.wait(0.5) and not (tmp_path / "lib" / "entries" / "c1").exists()
    worker.join(10)
    assert done.is_set() and [e["case_id"] for e in Library.open(tmp_path / "lib").entries] == ["c1"]


def test_case_ids_differing_only_in_case_are_refused(tmp_path):
    """On macOS and Windows 'P1' and 'p1' share one entry folder: the second add overwrote the first's entry and the
    library was refused at the next open (checksum mismatch)."""
    library = _library(tmp_path)
    with pytest.raises(LibraryError, match="case id 'C1': the library .* holds 'c1', the same name but for case"):
        library.add_case(fake_case(tmp_path / "other", [(3.0, 0.5, [0.0, 0.0])]), "C1")
    assert len(Library.open(tmp_path / "lib").entries) == 3


def test_a_failed_add_leaves_no_entry_folder(tmp_path, monkeypatch):
    import SimpleITK as sitk

    import medcnncad.retrieval.library as library_module

    library = _library(tmp_path)
    case = fake_case(tmp_path / "c4", [(3.0, 0.5, [0.0, 0.0])])
    (case / "labels.seg.nrrd").write_bytes(b"")
    (tmp_path / "lib" / "entries" / "c4").mkdir()
    (tmp_path / "lib" / "entries" / "c4" / "lesion_7.png").write_bytes(b"an earlier failed add's file")

    def disk_full(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(library_module, "_store_view", disk_full)
    image = tmp_path / "t1.nrrd"
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkInt16), str(image))
    with pytest.raises(OSError, match="No space left"):
        library.add_case(case, "c4", view_image=image)
    assert not (tmp_path / "lib" / "entries" / "c4").exists()
    assert [e["case_id"] for e in library.entries] == ["c1", "c2", "c3"] and len(library.lesions) == 4
    monkeypatch.undo()
    assert library.add_case(case, "c4") == 1
    assert sorted(p.name for p in (tmp_path / "lib" / "entries" / "c4").iterdir()) == ["entry.json", "lesion_1.png"]
    assert len(Library.open(tmp_path / "lib").lesions) == 5


def test_a_cohort_reusing_a_library_case_id_is_refused_not_skipped(tmp_path):
    """``batch --library`` into an existing library skipped every row whose id the library held, as if resumed: a
    second cohort's case0 (another patient, HGG) silently never entered the library (1 case, the first's LGG)."""
    first = fake_case(tmp_path / "A" / "case0", [(1.0, 0.5, [0.0, 0.0])])
    add_cohort(tmp_path / "lib", [LibraryRow("case0", first, {"grade": "LGG"})], {})
    resumed = add_cohort(tmp_path / "lib", [LibraryRow("case0", first, {"grade": "LGG"})], {})  # the same case
    assert len(resumed.entries) == 1
    other = fake_case(tmp_path / "B" / "case0", [(9.0, 0.2, [5.0, 5.0])])
    with pytest.raises(LibraryError, match=r"B/case0: case id 'case0': the library .* holds another case"):
        add_cohort(tmp_path / "lib", [LibraryRow("case0", other, {"grade": "HGG"})], {})
    added = add_cohort(tmp_path / "lib", [LibraryRow("case0-B", other, {"grade": "HGG"})], {})
    assert [(les.case_id, les.volume_ml, les.metadata["grade"]) for les in added.lesions] == \
        [("case0", 1.0, "LGG"), ("case0-B", 9.0, "HGG")]
