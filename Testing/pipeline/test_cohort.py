"""Cohort runs: resumable, failures isolated, statistics right, dask equal to serial."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from bad_inputs import _brain, _image

from medcnncad.cli import main
from medcnncad.errors import InputError
from medcnncad.pipeline.cohort import bootstrap_ci, expected_calibration_error, read_cases, run_cohort
from medcnncad.retrieval.library import Library

CHANNELS = ("T1", "T1c", "T2", "FLAIR")


@pytest.fixture
def cohort_csv(tmp_path):
    rows = []
    for index in range(4):
        folder = tmp_path / f"case{index}"
        folder.mkdir()
        row = {"case_id": f"case{index}"}
        for c, name in enumerate(CHANNELS):
            volume = _brain(seed=10 * index + c)
            sitk.WriteImage(_image(volume), str(folder / f"{name}.nii.gz"))
            row[name] = f"case{index}/{name}.nii.gz"
        reference = (_brain(seed=10 * index) > 700).astype(np.uint8) * 4 if index < 3 else \
            np.zeros((20, 24, 24), np.uint8)
        sitk.WriteImage(_image(reference), str(folder / "ref.nii.gz"))
        row["reference"] = f"case{index}/ref.nii.gz"
        row["label"] = "1" if index < 3 else "0"
        rows.append(row)
    rows.append({"case_id": "broken", "T1": "case0/T1.nii.gz", "T1c": "missing.nii.gz", "T2": "case0/T2.nii.gz",
                 "FLAIR": "case0/FLAIR.nii.gz", "reference": "", "label": ""})
    path = tmp_path / "cases.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["case_id", *CHANNELS, "reference", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _reports(out):
    result = {}
    for report in sorted((out / "cases").glob("*/report.json")):
        data = json.loads(report.read_text())
        result[report.parent.name] = (data["metrics"], data["lesions"], data["case"], data["retrieval"]["lesions"])
    return result


def test_serial_run_summary_resume_and_failures(cohort_csv, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["batch", "--cases", str(cohort_csv), "--out", str(out), "--device", "cpu", "--serial",
                 "--report", "--library", str(tmp_path / "lib")]) == 0
    summary = json.loads((out / "summary.json").read_text())
    page = (out / "report.html").read_text()
    for plot in ("Dice per structure", "Bland-Altman, WT volume", "ROC, case abnormality", "Reliability diagram"):
        assert f"<h2>{plot}</h2><img" in page, plot
    assert "Research use only" in page and (out / "cases" / "case0" / "report.html").is_file()
    assert summary["cases"] == 5 and summary["completed"] == 4 and summary["failed_cases"] == ["broken"]
    failures = list(csv.DictReader(open(out / "failures.csv")))
    assert failures[0]["case_id"] == "broken" and "missing.nii.gz" in failures[0]["error"]
    rows = list(csv.DictReader(open(out / "cohort.csv")))
    assert len(rows) == 4 * 5 and {r["structure"] for r in rows} == {"NCR", "ED", "ET", "WT", "TC"}
    dice = [json.loads((out / "cases" / f"case{i}" / "report.json").read_text())["metrics"]["ET"]["dice"]
            for i in range(4)]
    et = summary["structures"]["ET"]["dice"]
    assert et["mean"] == pytest.approx(np.mean(dice)) and et["median"] == pytest.approx(np.median(dice))
    assert et["ci95"][0] <= et["mean"] <= et["ci95"][1]
    wt = [json.loads((out / "cases" / f"case{i}" / "report.json").read_text())["metrics"]["WT"]["lesions_brats2023"]
          for i in range(4)]
    assert summary["structures"]["WT"]["lesion_sensitivity_brats2023"] == pytest.approx(
        sum(x["true_positive"] for x in wt) / sum(x["reference_lesions"] for x in wt))
    lesionwise = summary["structures"]["WT"]["lesionwise_dice_mean_brats2023"]
    assert lesionwise == pytest.approx(np.mean([x["lesionwise_dice"] for x in wt]))
    printed = capsys.readouterr().out
    assert "Cohort summary" in printed
    assert printed.split("| WT |")[1].splitlines()[0].endswith(f"| {lesionwise:.3f} |")  # the table's last column
    classification = summary["classification"]
    assert classification["cases"] == 4 and 0.0 <= classification["auc"] <= 1.0
    before = _reports(out)
    stamp = (out / "cases" / "case0" / "report.json").stat().st_mtime_ns
    library = Library.open(tmp_path / "lib")  # every finished case, the CSV's label column as its metadata
    assert [e["case_id"] for e in library.entries] == ["case0", "case1", "case2", "case3"]
    entry = json.loads((tmp_path / "lib" / library.entries[0]["file"]).read_text())
    assert entry["metadata"] == {"label": "1"}
    assert main(["batch", "--cases", str(cohort_csv), "--out", str(out), "--device", "cpu", "--serial",
                 "--library", str(tmp_path / "lib")]) == 0
    assert (out / "cases" / "case0" / "report.json").stat().st_mtime_ns == stamp  # resumed: not redone
    assert _reports(out) == before
    assert len(Library.open(tmp_path / "lib").entries) == 4  # cases already in the library are not added twice


def _assert_same(a, b, where: str = "report") -> None:
    """``a`` and ``b`` (JSON values) hold the same keys, items, strings, integers and flags, and floats equal to float32
    rounding (relative 1e-5, absolute 1e-6)."""
    assert type(a) is type(b) or {type(a), type(b)} <= {int, float}, f"{where}: {a!r} vs {b!r}"
    if isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: {len(a)} vs {len(b)} items"
        for n, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{n}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6), f"{where}: {a!r} vs {b!r}"
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def test_the_report_comparison_takes_float32_rounding_and_nothing_more():
    report = {"lesions": [{"id": 1, "volume_ml": 46.6, "p": 0.6061134338378906, "kind": "ET"}]}
    _assert_same(report, {"lesions": [{"id": 1, "volume_ml": 46.6, "p": 0.6061137318611145, "kind": "ET"}]})
    for other in ({"id": 2}, {"volume_ml": 46.601}, {"p": 0.61}, {"kind": "ED"}):
        with pytest.raises(AssertionError):
            _assert_same(report, {"lesions": [{**report["lesions"][0], **other}]})
    with pytest.raises(AssertionError, match="2 items"):
        _assert_same(report, {"lesions": report["lesions"] * 2})


def test_dask_local_cluster_equals_serial(cohort_csv, tmp_path):
    """The same cases on a local dask cluster and in this process: the same lesions, labels and reports, numbers equal
    to float32 rounding. Not to the bit: with one thread each, the network's probabilities still differed by up to
    3e-7 between the two processes now and then (and the radiomics and encoder descriptors after them), which made
    an exact comparison fail about once in several full runs."""
    cases = read_cases(cohort_csv, CHANNELS)
    run_cohort(cases, "demo", tmp_path / "serial", device="cpu", serial=True)
    run_cohort(cases, "demo", tmp_path / "dask", device="cpu", workers=2)
    serial, distributed = _reports(tmp_path / "serial"), _reports(tmp_path / "dask")
    assert set(serial) == {"case0", "case1", "case2", "case3"}
    _assert_same(serial, distributed)
    a = json.loads((tmp_path / "serial" / "summary.json").read_text())
    b = json.loads((tmp_path / "dask" / "summary.json").read_text())
    _assert_same(a, b, "summary")


def test_the_summary_counts_the_cases_a_distance_leaves_out():
    """Four cases: HD95 1 and 6 mm, a missed tumor (no distance) and a tumor-free case with nothing predicted (0 mm,
    as BraTS scores both empty). The median is over the three defined values and the table names the left-out one."""
    from medcnncad.pipeline.cohort import CohortCase, summarize, summary_markdown

    lesions = {"reference_lesions": 1, "true_positive": 1, "false_positive": 0}

    def report(hd95, dice):
        return {"metrics": {"WT": {"dice": dice, "hd95_mm": hd95, "assd_mm": hd95, "lesions": lesions}}}

    reports = {"a": report(1.0, 0.9), "b": report(6.0, 0.5), "c": report(None, 0.0), "d": report(0.0, 1.0)}
    cases = [CohortCase(name, {}) for name in reports]
    summary = summarize(cases, reports)
    hd95 = summary["structures"]["WT"]["hd95_mm"]
    assert (hd95["n"], hd95["undefined"], hd95["median"]) == (3, 1, 1.0)
    assert summary["structures"]["WT"]["dice"]["undefined"] == 0
    assert "| 1.000 (1 of 4 undefined: one side empty) |" in summary_markdown(summary)


def test_statistics_by_hand():
    assert bootstrap_ci([1.0]) is None
    low, high = bootstrap_ci([0.0, 1.0] * 10)
    assert 0.2 < low < 0.5 < high < 0.8  # normal approximation: 0.5 +- 1.96 * 0.5 / sqrt(20) = 0.5 +- 0.22
    # bins: 0.1 -> label 0 (gap 0.1), 0.9 and 0.9 -> labels 1, 0 (gap |0.5 - 0.9| = 0.4): (1 * 0.1 + 2 * 0.4) / 3
    assert expected_calibration_error([0.1, 0.9, 0.9], [0, 1, 0]) == pytest.approx(0.3)


def test_csv_errors_name_the_line(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("case_id,T1,label\na,x.nii.gz,1\na,y.nii.gz,0\n")
    with pytest.raises(InputError, match="line 3: case_id 'a'"):
        read_cases(path, CHANNELS)
    path.write_text("case_id,T1,label\na,x.nii.gz,maybe\n")
    with pytest.raises(InputError, match="label 'maybe'"):
        read_cases(path, CHANNELS)
    path.write_text("patient,T1\n")
    with pytest.raises(InputError, match="no cases"):
        read_cases(path, CHANNELS)
    path.write_text("case_id,T1,reference,reference_labels\na,x.nii.gz,r.nii.gz,brats2023\nb,y.nii.gz,s.nii.gz,3:4\n")
    with pytest.raises(InputError, match="line 3: column reference_labels: label map '3:4'"):
        read_cases(path, CHANNELS)
    path.write_text("case_id,T1,reference,reference_labels\na,x.nii.gz,,brats2023\n")
    with pytest.raises(InputError, match="line 2: reference_labels 'brats2023' without a reference"):
        read_cases(path, CHANNELS)
    path.write_text("case_id,T1,reference,reference_labels\na,x.nii.gz,r.nii.gz,brats2023\nb,y.nii.gz,s.nii.gz,\n")
    assert [c.reference_labels for c in read_cases(path, CHANNELS)] == [{0: 0, 1: 1, 2: 2, 3: 4}, None]


def test_a_decathlon_file_named_out_of_its_dataset_json_order_is_refused(tmp_path):
    """``--input T1,T1c,T2,FLAIR=imagesTr/BRATS_001.nii.gz`` (the engine's order, not the file's) would swap every
    sequence without a sign: the dataset.json beside imagesTr/ says volume 0 is FLAIR."""
    import json

    from medcnncad.errors import InputError
    from medcnncad.pipeline.case import _volume_indices

    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps({"modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
                                                       "labels": {"0": "background"}}))
    image = tmp_path / "imagesTr" / "BRATS_001.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([sitk.Image(3, 4, 5, sitk.sitkFloat32)] * 4), str(image))  # its header is read
    inputs = {name: str(image) for name in ("T1", "T1c", "T2", "FLAIR")}
    right = {"FLAIR": "0", "T1": "1", "T1c": "2", "T2": "3"}
    assert _volume_indices(inputs, right) == {"FLAIR": 0, "T1": 1, "T1c": 2, "T2": 3}
    with pytest.raises(InputError, match=r"BRATS_001.nii.gz: volume 0 is FLAIR by its dataset.json, not T1 "
                                         r"\(its order: FLAIR, T1, T1c, T2\)"):
        _volume_indices(inputs, {"T1": "0", "T1c": "1", "T2": "2", "FLAIR": "3"})
    assert _volume_indices({"T1": str(image)}, {}) == {}  # no volume named: the reader asks for one, not this check


def test_an_nnunet_file_given_as_another_channel_than_its_suffix_is_refused(tmp_path):
    """nnU-Net's imagesTr/<case>_0001.nii.gz is the channel dataset.json gives index 1 (here T1ce): given as FLAIR
    with no selector, it would be read as FLAIR without a word."""
    from medcnncad.errors import InputError
    from medcnncad.pipeline.case import _volume_indices

    (tmp_path / "imagesTr").mkdir()
    channels = {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"}
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": channels, "labels": {"background": 0},
                                                       "file_ending": ".nii.gz"}))
    image = tmp_path / "imagesTr" / "BraTS2021_00006_0001.nii.gz"
    sitk.WriteImage(sitk.Image(3, 4, 5, sitk.sitkFloat32), str(image))
    assert _volume_indices({"T1c": str(image)}, {}) == {}
    with pytest.raises(InputError, match=r"_0001.nii.gz: volume 0 is T1c by its dataset.json, not FLAIR"):
        _volume_indices({"FLAIR": str(image)}, {})
    link = tmp_path / "imagesTr" / "BraTS2021_00007_0001.nii.gz"  # an imagesTr of links to the raw files
    raw = tmp_path / "raw_t1ce.nii.gz"
    sitk.WriteImage(sitk.Image(3, 4, 5, sitk.sitkFloat32), str(raw))
    link.symlink_to(raw)
    with pytest.raises(InputError, match="volume 0 is T1c by its dataset.json, not FLAIR"):
        _volume_indices({"FLAIR": str(link)}, {})
    assert _volume_indices({"FLAIR": str(image)}, {}, {"FLAIR": None}) == {}  # a model's generic channel name
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": {"background": 0}}))
    assert _volume_indices({"FLAIR": str(image)}, {}) == {}  # a generic dataset.json name: no word against it



def test_a_spreadsheet_export_reads_as_written(tmp_path):
    """A UTF-8 byte-order mark, a header in another case or with separators, and blank lines (a helper's fuzzing:
    'needs a case_id column', every case failing on the ignored 'flair' column with exit 0, and line numbers that
    skipped the blank lines)."""
    path = tmp_path / "c.csv"
    path.write_bytes("case_id,t1,T-2,flair\n\na,a1.nii.gz,a2.nii.gz,a3.nii.gz\n\n\nb,b1.nii.gz,,\n".encode("utf-8-sig"))
    cases = read_cases(path, ["T1", "T2", "FLAIR"])
    assert [sorted(c.inputs) for c in cases] == [["FLAIR", "T1", "T2"], ["T1"]]
    assert cases[0].inputs["FLAIR"].endswith("a3.nii.gz")
    path.write_text("case_id,T1\n\na,x.nii.gz\n\n\na,y.nii.gz\n")
    with pytest.raises(InputError, match="line 6: case_id 'a'"):  # the line in the file, blank lines counted
        read_cases(path, ["T1"])
    path.write_text("case_id,flair,FLAIR\na,x.nii.gz,y.nii.gz\n")
    with pytest.raises(InputError, match=r"columns \['flair', 'FLAIR'\] all name channel FLAIR"):
        read_cases(path, ["FLAIR"])


def test_a_batch_where_every_case_fails_is_not_a_success(tmp_path, capsys):
    (tmp_path / "c.csv").write_text("case_id,T1,T1c,T2,FLAIR\na,missing.nii.gz,m.nii.gz,m.nii.gz,m.nii.gz\n")
    code = main(["batch", "--cases", str(tmp_path / "c.csv"), "--out", str(tmp_path / "out"), "--serial",
                 "--model", "demo", "--device", "cpu"])
    assert code == 2
    assert "no case completed (1 failed; the reasons are in" in capsys.readouterr().err


def test_a_local_cohort_worker_registers_within_its_one_thread_budget(monkeypatch):
    """``batch --workers N`` runs N processes, one case at a time each: in each, the clinical chain's registrations
    run on one thread (Dask's nanny sets OMP_NUM_THREADS=1 there), while this process without a budget would use
    every core. Before, each worker process started one registration per core of the machine."""
    import os

    from dask.distributed import Client

    from medcnncad.pipeline.cohort import local_cluster
    from medcnncad.preprocessing.chain import registration_workers

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores < 2:
        pytest.skip("one core: the width is 1 with or without a budget")
    assert registration_workers() == cores
    with local_cluster(1) as cluster, Client(cluster) as client:
        assert client.submit(registration_workers, pure=False).result(timeout=120) == 1
