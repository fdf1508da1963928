"""``medcnncad library build | add | query`` end to end on hand-made case folders (and one real segmentation,
slow); every bad input is exit code 2 and one line."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ROOT
from helpers import small_phantom

sys.path.insert(0, str(ROOT / "Testing" / "retrieval"))
from retrieval_cases import MODEL, NAMES, fake_case  # noqa: E402

from medcnncad.cli import main  # noqa: E402
from medcnncad.retrieval.library import Library  # noqa: E402


def _csv(tmp_path, rows: list[str], header: str = "case_id,result,grade,diagnosis") -> str:
    path = tmp_path / "cases.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


def _cases(tmp_path):
    fake_case(tmp_path / "r1", [(1.0, 0.5, [0.0, 0.0])])
    fake_case(tmp_path / "r2", [(9.0, 0.3, [5.0, 5.0])])
    fake_case(tmp_path / "r3", [(2.0, 0.5, [0.2, 0.1])])
    return _csv(tmp_path, ["p1,r1,LGG,glioma", "p2,r2,HGG,glioma"])


def _error(capsys, argv, word):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and word in err[0] and "Traceback" not in err[0], err


def test_build_add_query(tmp_path, capsys):
    cases = _cases(tmp_path)
    lib = str(tmp_path / "lib")
    assert main(["library", "build", "--cases", cases, "--out", lib]) == 0
    assert "2 case(s), 2 lesion(s)" in capsys.readouterr().out
    assert main(["library", "add", "--library", lib, "--case", str(tmp_path / "r3"), "--case-id", "p3",
                 "--meta", "grade=HGG"]) == 0
    assert "holds 3 case(s)" in capsys.readouterr().out
    assert main(["library", "query", "--library", lib, "--case", str(tmp_path / "r3"), "-k", "2",
                 "--exclude", "p3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split("\t") == ["rank", "distance", "case_id", "lesion", "volume_ml", "diagnosis", "grade",
                                    "thumbnail", "note"]
    assert [line.split("\t")[2] for line in lines[1:]] == ["p1", "p2"]  # r3 looks like r1
    assert lines[1].split("\t")[5:7] == ["glioma", "LGG"]
    assert main(["library", "query", "--library", lib, "--case", str(tmp_path / "r3"), "-k", "1", "--json",
                 "--features", "radiomics"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found[0]["case_id"] == "p3" and found[0]["distance"] == 0.0 and found[0]["metadata"] == {"grade": "HGG"}


def test_bad_library_inputs_are_one_line(tmp_path, capsys):
    cases = _cases(tmp_path)
    lib = str(tmp_path / "lib")
    assert main(["library", "build", "--cases", cases, "--out", lib]) == 0
    capsys.readouterr()
    _error(capsys, ["library", "build", "--cases", cases, "--out", lib], "already holds a case library")
    _error(capsys, ["library", "query", "--library", lib, "--case", str(tmp_path / "r1"), "-k", "3"],
           "k = 3: the library holds 2 case(s) (2 lesion(s))")
    _error(capsys, ["library", "query", "--library", lib, "--case", str(tmp_path / "r1"), "--exclude", "nosuch"],
           "--exclude nosuch: no such case in the library")
    other = fake_case(tmp_path / "other", [(1.0, 0.5, [0.0, 0.0])], model={**MODEL, "id": "robust",
                                                                           "weights_sha256": "c" * 64})
    _error(capsys, ["library", "query", "--library", lib, "--case", str(other)], "segmented with model robust")
    old = fake_case(tmp_path / "old", [(1.0, 0.5, [0.0, 0.0])], version="0")
    _error(capsys, ["library", "add", "--library", lib, "--case", str(old)], "descriptor version 0")
    _error(capsys, ["library", "add", "--library", lib, "--case", str(tmp_path / "r1"), "--meta", "grade"],
           "KEY=VALUE")
    _error(capsys, ["library", "build", "--cases", _csv(tmp_path, ["p1,glioma"], "case_id,diagnosis"),
                    "--out", str(tmp_path / "lib2"), "--model", "brats-demo-unet"], "needs a case_id column")
    _error(capsys, ["library", "build", "--cases", _csv(tmp_path, ["p1,,LGG,glioma"]), "--out", str(tmp_path / "l3"),
                    "--model", "brats-demo-unet"], "neither a result folder")
    Library.create(tmp_path / "empty", MODEL, NAMES)
    _error(capsys, ["library", "query", "--library", str(tmp_path / "empty"), "--case", str(tmp_path / "r1")],
           "the library is empty")
    entry = tmp_path / "lib" / "entries" / "p1" / "entry.json"
    entry.write_text(entry.read_text().replace("LGG", "HGG"))
    _error(capsys, ["library", "query", "--library", lib, "--case", str(tmp_path / "r1")], "checksum mismatch")


def test_a_build_that_fails_on_a_case_leaves_no_half_library(tmp_path, capsys):
    """A helper's reproduction: the second case's report.json holds no retrieval descriptors; the build failed
    after adding the first and left library.json, so the rerun with a good CSV said "already holds a case
    library"."""
    _cases(tmp_path)
    bare = tmp_path / "bare"
    bare.mkdir()
    report = json.loads((tmp_path / "r2" / "report.json").read_text())
    report.pop("retrieval")
    (bare / "report.json").write_text(json.dumps(report))
    lib = str(tmp_path / "lib")
    _error(capsys, ["library", "build", "--cases", _csv(tmp_path, ["p1,r1,LGG,glioma", "p2,bare,HGG,glioma"]),
                    "--out", lib], "no retrieval descriptors")
    assert not (tmp_path / "lib" / "library.json").exists() and not (tmp_path / "lib" / "entries").exists()
    assert main(["library", "build", "--cases", _csv(tmp_path, ["p1,r1,LGG,glioma", "p2,r2,HGG,glioma"]),
                 "--out", lib]) == 0


@pytest.mark.slow
def test_build_segments_cases_without_a_result(tmp_path, capsys):
    images, _ = small_phantom()
    paths = {}
    for name, image in images.items():
        paths[name] = tmp_path / f"{name}.nii.gz"
        sitk.WriteImage(image, str(paths[name]))
    cases = _csv(tmp_path, [f"ph1,{paths['T1']},{paths['T1c']},{paths['T2']},{paths['FLAIR']},HGG"],
                 "case_id,T1,T1c,T2,FLAIR,grade")
    lib = tmp_path / "lib"
    assert main(["library", "build", "--cases", cases, "--out", str(lib), "--model", "brats-demo-unet",
                 "--serial", "--device", "cpu", "--with-images"]) == 0
    library = Library.open(lib)
    assert library.model["id"] == "brats-demo-unet" and library.lesions[0].metadata == {"grade": "HGG"}
    view = library.lesions[0].view  # --with-images: the first channel (T1) and the case's segmentation
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(view["image"]))),
                                  sitk.GetArrayFromImage(images["T1"]))
    assert view["segmentation"].name == "labels.seg.nrrd"
    assert library.lesions[0].deep is not None and library.lesions[0].deep.shape == (320,)
    text = "".join(p.read_text() for p in lib.glob("entries/*/*.json")) + (lib / "library.json").read_text()
    assert str(tmp_path) not in text  # no input paths in the library's own files
    assert main(["library", "query", "--library", str(lib), "--case", str(lib / "segmentations" / "cases" / "ph1"),
                 "-k", "1"]) == 0
    assert "\tph1\t" in capsys.readouterr().out
    case = lib / "segmentations" / "cases" / "ph1"
    assert main(["report", str(case), "--library", str(lib), "-k", "1"]) == 0
    page = (case / "report.html").read_text()
    assert "<h2>Similar cases</h2>" in page and "<td>HGG</td>" in page


def test_a_malformed_query_report_is_exit_2_naming_it(tmp_path, capsys):
    cases = _cases(tmp_path)
    lib = str(tmp_path / "lib")
    assert main(["library", "build", "--cases", cases, "--out", lib]) == 0
    bad = fake_case(tmp_path / "bad", [(1.0, 0.5, [0.0, 0.0])])
    (bad / "report.json").write_text("[1, 2]")
    _error(capsys, ["library", "query", "--library", lib, "--case", str(bad)], "bad/report.json: not a MedCNNCAD")
    report = json.loads((tmp_path / "r3" / "report.json").read_text())
    report["retrieval"]["lesions"][0]["deep"] = [0.0]
    (bad / "report.json").write_text(json.dumps(report))
    _error(capsys, ["library", "query", "--library", lib, "--case", str(bad)],
           "bad: retrieval lesion 1: deep: 1 value(s), expected 2")
    _error(capsys, ["library", "add", "--library", lib, "--case", str(bad)], "deep: 1 value(s), expected 2")
    assert len(Library.open(lib).entries) == 2


def test_report_can_leave_the_case_itself_out_and_a_self_match_is_noted(tmp_path, capsys, monkeypatch):
    """``report --library`` had no --exclude: a case in the library was its own nearest neighbour (distance 0,
    its own grade), with nothing said."""
    import medcnncad.cli.cohort as cohort_cli

    cases = _cases(tmp_path)
    lib = str(tmp_path / "lib")
    assert main(["library", "build", "--cases", cases, "--out", lib]) == 0
    capsys.readouterr()
    assert main(["library", "query", "--library", lib, "--case", str(tmp_path / "r1"), "-k", "1"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1].split("\t")[:3] == ["1", "0.000", "p1"]
    assert err.strip() == (f"medcnncad: note: library case(s) p1 hold this lesion's exact descriptors (distance 0): "
                           f"most likely {tmp_path / 'r1'} itself; --exclude CASE_ID leaves a case out")
    shown = []
    monkeypatch.setattr(cohort_cli, "case_report", lambda folder, _shots, similar: shown.append(similar) or folder)
    _error(capsys, ["report", str(tmp_path / "r1"), "--library", lib, "-k", "1", "--exclude", "p9"],
           "--exclude p9: no such case in the library")
    assert main(["report", str(tmp_path / "r1"), "--library", lib, "-k", "1"]) == 0
    assert [(n["case_id"], n["distance"], n["metadata"]["grade"]) for n in shown[-1]] == [("p1", 0.0, "LGG")]
    assert "p1 hold this lesion's exact descriptors" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "r1"), "--library", lib, "-k", "1", "--exclude", "p1"]) == 0
    assert capsys.readouterr().err == ""
    # left: p2 alone, one lesion: z-scored against itself it is all zeros, r1 is (1-9, 0.5-0.3, 0-5, 0-5) / 1 / sqrt(2)
    # per block (a constant column gets scale 1): sqrt((64 + 0.04) / 2 + (25 + 25) / 2) = 7.5299
    assert [n["case_id"] for n in shown[-1]] == ["p2"]
    assert shown[-1][0]["distance"] == pytest.approx(np.sqrt((64 + 0.04) / 2 + 50 / 2), abs=1e-5)


def test_query_and_report_list_distinct_cases_unless_lesions_are_asked_for(tmp_path, capsys):
    """A library case with two lesions near the query filled two of the k rows of ``library query`` and of the
    report's "Similar cases" (k=2: p1 twice, p2 not shown)."""
    fake_case(tmp_path / "r1", [(1.0, 0.5, [0.0, 0.0]), (1.2, 0.5, [0.1, 0.0])])
    fake_case(tmp_path / "r2", [(5.0, 0.5, [2.0, 2.0])])
    fake_case(tmp_path / "new", [(1.15, 0.5, [0.08, 0.0])])
    lib = str(tmp_path / "lib")
    assert main(["library", "build", "--cases", _csv(tmp_path, ["p1,r1,LGG,glioma", "p2,r2,HGG,glioma"]),
                 "--out", lib]) == 0
    capsys.readouterr()
    query = ["library", "query", "--library", lib, "--case", str(tmp_path / "new"), "-k", "2"]
    assert main(query) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()[1:]]
    assert [(r[0], r[2], r[3]) for r in rows] == [("1", "p1", "2"), ("2", "p2", "1")]
    assert main([*query, "--lesions", "--json"]) == 0
    assert [(n["case_id"], n["lesion_id"]) for n in json.loads(capsys.readouterr().out)] == [("p1", 2), ("p1", 1)]
    _error(capsys, [*query[:-1], "3"], "k = 3: the library holds 2 case(s) (3 lesion(s)); choose k between 1 and 2")
    (tmp_path / "new" / "overlay.png").write_bytes((tmp_path / "new" / "lesion_1.png").read_bytes())
    report = json.loads((tmp_path / "new" / "report.json").read_text())
    report.update(created="2026-01-01T00:00:00+00:00", device="cpu", timings_s={"network": 1.0}, warnings=[],
                  case={"abnormality_probability": 0.9, "rule": "max"}, inputs={},
                  model={**MODEL, "name": "Demo", "trained_on": "phantoms"})
    (tmp_path / "new" / "report.json").write_text(json.dumps(report))
    assert main(["report", str(tmp_path / "new"), "--library", lib, "-k", "2"]) == 0
    page = (tmp_path / "new" / "report.html").read_text()
    similar = page[page.index("<h2>Similar cases</h2>"):]
    assert [c for c in ("<td>p1</td>", "<td>p2</td>") if c in similar] == ["<td>p1</td>", "<td>p2</td>"]
    assert similar.count("<td>p1</td>") == 1 and "one row each" in similar
    assert main(["report", str(tmp_path / "new"), "--library", lib, "-k", "2", "--lesions"]) == 0
    page = (tmp_path / "new" / "report.html").read_text()
    similar = page[page.index("<h2>Similar cases</h2>"):]
    assert similar.count("<td>p1</td>") == 2 and "<td>p2</td>" not in similar and "2 lesions of 1 cases" in similar


def test_query_table_notes_a_case_segmented_from_other_sequences(tmp_path, capsys):
    """A T1c-only case was ranked against four-sequence library cases without a word."""
    fake_case(tmp_path / "r1", [(1.0, 0.5, [0.0, 0.0])], given_inputs=["T1", "T1c", "T2", "FLAIR"])
    fake_case(tmp_path / "r2", [(9.0, 0.3, [5.0, 5.0])])  # added before the sequences were recorded
    fake_case(tmp_path / "new", [(1.1, 0.5, [0.1, 0.0])], given_inputs=["T1c"])
    lib = str(tmp_path / "lib")
    assert main(["library", "build", "--cases", _csv(tmp_path, ["p1,r1,LGG,glioma", "p2,r2,HGG,glioma"]),
                 "--out", lib]) == 0
    capsys.readouterr()
    assert main(["library", "query", "--library", lib, "--case", str(tmp_path / "new"), "-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[-1] for line in lines] == [
        "note", "library case p1 was segmented from FLAIR+T1+T1c+T2, this case from T1c only",
        "library case p2 was segmented from unknown sequences (not recorded), this case from T1c only"]
