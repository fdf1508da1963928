"""Real-patient evaluation: the scoring rules by hand, and (where ../shared/realdata is present) the case
discovery and label maps against the files. Real data never enter the repository; these skip without it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ROOT

from medcnncad.data.real_cases import (
    BRATS2013_MAP,
    PSEUDO_LABEL_MARKER,
    describe_case,
    discover_real_cases,
    load_reference,
    map_labels,
)
from medcnncad.errors import InputError
from medcnncad.evaluation.real import evaluate_real, format_real_table, score_case, training_patients
from medcnncad.metrics.label_conventions import relabel

REALDATA = ROOT.parent / "shared" / "realdata"
needs_realdata = pytest.mark.skipif(not REALDATA.is_dir(), reason="../shared/realdata is not here")


def test_score_case_by_hand():
    """Reference: a 4x4x4 tumor (core 2x2x2 of it); prediction: the same tumor shifted by one voxel plus a
    separate 2x2x2 enhancing blob: WT Dice = 2*48/(64+72), the blob is the largest component outside the reference."""
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[4:8, 4:8, 4:8] = 2
    ref[5:7, 5:7, 5:7] = 1
    pred = np.zeros_like(ref)
    pred[5:9, 4:8, 4:8] = 2
    pred[14:16, 14:16, 14:16] = 4
    spacing = (2.0, 2.0, 2.0)  # voxels of 0.008 mL
    scores = score_case(pred, ref, spacing, ("WT", "TC"))
    assert scores["dice_WT"] == pytest.approx(2 * 48 / (64 + 72))
    assert scores["dice_TC"] == 0.0  # the only predicted core (ET) is the separate blob
    assert scores["found"] is True
    assert scores["sensitivity_WT"] == pytest.approx(48 / 64)  # the shifted tumor keeps 48 of its 64 voxels
    assert scores["largest_outside_ml"] == pytest.approx(8 * 0.008)
    assert scores["reference_wt_ml"] == pytest.approx(64 * 0.008)


def test_a_reference_without_the_whole_tumor_scores_what_it_describes():
    """A reference of the core only (necrosis 1 and enhancing 4, no oedema): TC and ET are scored, the whole-tumor
    scores are undefined (not 0), and the tumor is found where the prediction touches the core."""
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[5:7, 5:7, 5:7] = 1
    ref[5:7, 5:7, 7] = 4
    pred = np.zeros_like(ref)
    pred[4:9, 4:9, 4:9] = 2  # oedema around the core, the reference does not draw it
    pred[5:7, 5:7, 5:8] = 1
    pred[14:16, 14:16, 14:16] = 2  # a component away from the core: oedema or a false positive, unknown
    scores = score_case(pred, ref, (1.0, 1.0, 1.0), ("TC", "ET"))
    assert scores["dice_TC"] == pytest.approx(1.0) and scores["dice_ET"] == 0.0
    assert scores["dice_WT"] is None and scores["sensitivity_WT"] is None
    assert scores["reference_wt_ml"] is None and scores["largest_outside_ml"] is None
    assert scores["found"] is True and scores["predicted_wt_ml"] == pytest.approx((125 + 8) / 1000)


def test_summaries_average_only_the_rows_where_a_score_is_defined():
    """A row whose reference has no whole tumor has no WT Dice and no share marked: the means are over the other
    rows (0.9, not 0.45), the row is counted as left out, and the table says so."""
    from medcnncad.evaluation.real import _pooled, _summary

    rows = [_row("a", "FLAIR", 0.9), {**_row("b", "FLAIR", 0.0), "dice_WT": None, "sensitivity_WT": None,
                                      "reference_wt_ml": None, "largest_outside_ml": None}]
    summary, pooled = _summary(rows), _pooled(rows)
    flair = summary["FLAIR"]
    assert flair["mean_dice_WT"] == pytest.approx(0.9) and flair["mean_sensitivity_WT"] == pytest.approx(0.9)
    assert flair["rows_without_WT"] == 1 and flair["fp_over_1ml"] == 0 and flair["found"] == 2
    assert pooled["mean_dice_WT"] == pytest.approx(0.9) and pooled["rows_without_WT"] == 1
    table = format_real_table({"model": "m", "version": "1", "trained_on": "phantoms", "rows": rows,
                               "summary": summary, "pooled": pooled})
    assert "| b | FLAIR | - | - | - | yes (-) | 1.0/- | - |" in table
    assert "| FLAIR | 2 | 2 | 90.0 % | 0.900 (1 row without a whole-tumor reference left out) | 0 | 0 |" in table
    assert "Every row: mean WT Dice 0.900 (1 row without a whole-tumor reference left out) over 2 rows" in table


def test_the_table_shows_how_much_of_the_tumor_was_marked():
    row = {"case": "p1", "inputs": ["T1c"], "dice_WT": 0.003, "found": True, "sensitivity_WT": 0.0014,
           "predicted_wt_ml": 0.3, "reference_wt_ml": 217.4, "largest_outside_ml": 0.0, "case_probability": 0.84,
           "seconds": 9.0}
    older = {**row, "case": "p2"}
    del older["sensitivity_WT"]  # a report written before the column existed
    summary = {"T1c": {"cases": 2, "found": 2, "mean_sensitivity_WT": 0.0007, "mean_dice_WT": 0.003,
                       "fp_over_1ml": 0, "case_probability_below_0.9": 2}}
    table = format_real_table({"model": "m", "version": "1", "trained_on": "phantoms", "rows": [row, older],
                               "summary": summary})
    assert "| p1 | T1c | 0.003 | - | - | yes (0.1 %) | 0.3/217.4 |" in table
    assert "| p2 | T1c | 0.003 | - | - | yes (-) |" in table
    assert "| T1c | 2 | 2 | 0.1 % | 0.003 | 0 | 2 |" in table


def test_the_summary_gives_each_mean_an_interval_that_resamples_patients():
    """Three patients, FLAIR rows 0, 0, 1 (by hand, as in Testing/metrics/test_intervals.py: [0, 1]) and one T1c
    row each for two of them (too few patients: no interval); every row together: 5 rows of 3 patients."""
    from medcnncad.evaluation.real import _pooled, _summary

    def row(case: str, variant: str, dice: float) -> dict:
        return {"case": case, "variant": variant, "inputs": [variant], "dice_WT": dice, "found": dice > 0,
                "sensitivity_WT": dice, "predicted_wt_ml": 1.0, "reference_wt_ml": 1.0, "largest_outside_ml": 0.0,
                "case_probability": 0.95, "seconds": 1.0}

    rows = [row("a", "FLAIR", 0.0), row("b", "FLAIR", 0.0), row("c", "FLAIR", 1.0), row("a", "T1c", 0.5),
            row("b", "T1c", 0.5)]
    summary, pooled = _summary(rows), _pooled(rows)
    assert summary["FLAIR"]["dice_WT_ci95"] == [0.0, 1.0] and summary["T1c"]["dice_WT_ci95"] is None
    assert pooled["rows"] == 5 and pooled["patients"] == 3 and pooled["mean_dice_WT"] == pytest.approx(0.4)
    low, high = pooled["dice_WT_ci95"]
    assert 0.0 <= low < 0.4 < high <= 1.0
    table = format_real_table({"model": "m", "version": "1", "trained_on": "phantoms", "rows": rows,
                               "summary": summary, "pooled": pooled})
    assert "| FLAIR | 3 | 1 | 33.3 % | 0.333 (0.000 to 1.000) | 0 | 0 |" in table
    assert "| T1c | 2 | 2 | 50.0 % | 0.500 | 0 | 0 |" in table
    assert f"Every row: mean WT Dice 0.400 ({low:.3f} to {high:.3f}) over 5 rows of 3 patients" in table


def _row(case: str, variant: str, dice: float, found: bool = True, outside: float = 0.0,
         probability: float = 0.95) -> dict:
    return {"case": case, "variant": variant, "inputs": [variant], "dice_WT": dice, "found": found,
            "sensitivity_WT": dice, "predicted_wt_ml": 1.0, "reference_wt_ml": 1.0, "largest_outside_ml": outside,
            "case_probability": probability, "seconds": 1.0}


def test_compare_real_pairs_rows_and_resamples_patients(tmp_path, capsys):
    """Changes by hand: FLAIR +0.1, +0.1, +0.4 (mean +0.2; a resample is +0.4 only when all three draws are
    patient c, P 1/27 > 2.5 %, and +0.1 when none is: interval [+0.1, +0.4]); a T1c row lost its tumor and one
    row is only in the new report. Through the command line too, and a file that is no report is one error."""
    import json

    from medcnncad.cli import main
    from medcnncad.evaluation.real import compare_real_reports

    before = {"model": "m", "version": "1", "rows": [_row("a", "FLAIR", 0.5), _row("b", "FLAIR", 0.6),
                                                    _row("c", "FLAIR", 0.2), _row("a", "T1c", 0.3)]}
    after = {"model": "m", "version": "2", "rows": [_row("a", "FLAIR", 0.6), _row("b", "FLAIR", 0.7),
                                                   _row("c", "FLAIR", 0.6), _row("a", "T1c", 0.0, found=False),
                                                   _row("d", "FLAIR", 0.9)]}
    c = compare_real_reports(before, after)
    flair = c["variants"]["FLAIR"]
    assert (flair["rows"], flair["patients"]) == (3, 3)
    assert flair["mean_change_dice_WT"] == pytest.approx(0.2) and flair["change_ci95"] == pytest.approx([0.1, 0.4])
    assert c["variants"]["T1c"]["change_ci95"] is None  # one patient
    assert c["every_row"]["rows"] == 4 and c["every_row"]["mean_change_dice_WT"] == pytest.approx(0.075)
    assert c["outcome_changes"]["found"] == [{"case": "a", "variant": "T1c", "before": True, "after": False}]
    assert c["outcome_changes"]["fp_over_1ml"] == [] and c["only_after"] == [["d", "FLAIR", "FLAIR"]]
    for name, report in (("b.json", before), ("a.json", after)):
        (tmp_path / name).write_text(json.dumps(report))
    assert main(["compare-real", "--before", str(tmp_path / "b.json"), "--after", str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    assert "| FLAIR | 3 | 3 | +0.200 (+0.100 to +0.400) |" in out and "found: a T1c True -> False" in out
    assert "only after (left out): d FLAIR FLAIR" in out
    core_only = {"dice_WT": None, "largest_outside_ml": None}
    c = compare_real_reports({**before, "rows": [{**_row("e", "T1c", 0.3), **core_only}]},
                             {**after, "rows": [{**_row("e", "T1c", 0.5), **core_only}]})
    assert c["every_row"] == {"rows": 0, "patients": 0, "mean_change_dice_WT": None, "change_ci95": None}
    bad = {"x.json": ({"rows": [{"case": "a"}]}, "x.json: not an evaluate-real report"),
           "v.json": ({"rows": before["rows"]}, "v.json: not an evaluate-real report"),
           "n.json": ({**before, "rows": [{**_row("a", "T1c", 0.1), "dice_WT": "high"}]},
                      "n.json: row a T1c has a score that is not a finite number"),
           "d.json": ({**before, "rows": [_row("a", "T1c", 0.1), _row("a", "T1c", 0.2)]},
                      "d.json: rows given twice: a T1c"),
           "o.json": ({**before, "rows": [_row("z", "T1c", 0.1)]}, "o.json and "),
           "t.txt": ("not json", "t.txt: not a JSON file")}
    for name, (content, message) in bad.items():
        (tmp_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
        assert main(["compare-real", "--before", str(tmp_path / name), "--after", str(tmp_path / "a.json")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and "internal error" not in err[0], (name, err)


def test_rows_of_training_patients_are_marked():
    """The training record's transplant donors and whole real scans are training patients (folder names, paths
    of any form); a record without them (phantoms only, or no record) names none."""
    record = {"config": {"transplant_from": ["../shared/realdata/BraTS2021_00006", "/x/brats_2013_pat0001_1/"],
                         "real_from": ["/work/shared/realdata/brats_2013_pat0003_1"]}}
    assert training_patients(record) == {"BraTS2021_00006", "brats_2013_pat0001_1", "brats_2013_pat0003_1"}
    assert training_patients({"config": {"transplant_from": [], "real_from": None}}) == set()
    assert training_patients({"config": {"real_from": ["/data/Task01_BrainTumour"]},  # a dataset: its case ids
                              "real_patients": ["BRATS_001", "BRATS_007"]}) >= {"BRATS_001", "BRATS_007"}
    assert training_patients({}) == set()
    row = {"case": "p1", "inputs": ["FLAIR"], "dice_WT": 0.9, "found": True, "sensitivity_WT": 0.9,
           "predicted_wt_ml": 10.0, "reference_wt_ml": 10.0, "largest_outside_ml": 0.0, "case_probability": 0.99,
           "seconds": 5.0}
    report = {"model": "m", "version": "1", "trained_on": "phantoms", "summary": {}}
    marked = format_real_table({**report, "rows": [{**row, "training_patient": True}, {**row, "case": "p2"}]})
    assert "| p1 (training) | FLAIR |" in marked and "| p2 | FLAIR |" in marked and "not held out" in marked
    assert "not held out" not in format_real_table({**report, "rows": [row]})


def test_map_labels_refuses_unknown_values():
    np.testing.assert_array_equal(map_labels(np.array([0, 1, 2, 3, 4]), BRATS2013_MAP), [0, 1, 2, 1, 4])
    with pytest.raises(InputError, match=r"label values \[7\]"):
        map_labels(np.array([0, 7]), BRATS2013_MAP)


def test_a_missing_realdata_folder_is_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        discover_real_cases(tmp_path / "nothing")


@needs_realdata
def test_the_real_cases_and_their_label_maps():
    cases = {c.case_id: c for c in discover_real_cases(REALDATA)}
    labelled = sorted(c for c, case in cases.items() if case.labelled)
    assert len(labelled) == 10 and "ReMIND-022" in labelled and "TCGA-DU-7294" in labelled
    brats17 = load_reference(cases["Brats17_CBICA_ARF_1"])
    assert set(np.unique(sitk.GetArrayViewFromImage(brats17))) == {0, 1, 2, 4}  # 3 (enhancing) became 4


@pytest.mark.slow
@needs_realdata
def test_the_remind_dicom_seg_lands_on_the_t1c_series():
    """The clinical patient's DICOM SEG (one 'Glioma' segment, 0.76 mL) rasterised on the T1c grid."""
    case = next(c for c in discover_real_cases(REALDATA) if c.case_id == "ReMIND-022")
    ref = load_reference(case)
    assert ref.GetSize() == (248, 256, 176)  # the T1c series: 248 columns, 256 rows, 176 slices
    ml = float(np.count_nonzero(sitk.GetArrayViewFromImage(ref))) * float(np.prod(ref.GetSpacing())) / 1000
    assert 0.7 < ml < 0.85


def _write_case(folder, names, labels=None, seg_name=None):
    """Tiny 6x6x6 volumes under ``names``; ``labels`` (values placed one per voxel) written as ``seg_name``."""
    folder.mkdir(parents=True)
    image = sitk.GetImageFromArray(np.ones((6, 6, 6), np.float32))
    for name in names:
        sitk.WriteImage(image, str(folder / name))
    if labels is not None:
        seg = np.zeros((6, 6, 6), np.uint8)
        seg.flat[:len(labels)] = labels
        sitk.WriteImage(sitk.GetImageFromArray(seg), str(folder / seg_name))
    return folder


def test_brats2023_labels_put_enhancing_tumor_at_3(tmp_path):
    """BraTS 2023 (glioma, metastases, meningioma, SSA): 1 NETC, 2 SNFH, 3 ET -> BraTS 1, 2, 4."""
    case_id = "BraTS-MET-00002-000"
    _write_case(tmp_path / case_id, [f"{case_id}-{s}.nii.gz" for s in ("t1c", "t1n", "t2w", "t2f")],
                [1, 2, 3], f"{case_id}-seg.nii.gz")
    (case,) = discover_real_cases(tmp_path)
    assert case.source == "BraTS2023-MET" and case.labelled and set(case.inputs) == {"T1", "T1c", "T2", "FLAIR"}
    values = sitk.GetArrayFromImage(load_reference(case)).ravel()[:4]
    np.testing.assert_array_equal(values, [1, 2, 4, 0])


def test_brats2018_to_2021_names_keep_enhancing_tumor_at_4(tmp_path):
    sources = {"BraTS20_Training_001": "BraTS2020", "BraTS19_2013_10_1": "BraTS2019", "Brats18_2013_2_1": "BraTS2018",
               "Brats17_TCIA_105_1": "BraTS2017"}
    for case_id in sources:
        _write_case(tmp_path / case_id, [f"{case_id}_{s}.nii.gz" for s in ("t1", "t1ce", "t2", "flair")],
                    [1, 2, 4], f"{case_id}_seg.nii.gz")
    cases = {c.case_id: c for c in discover_real_cases(tmp_path)}
    assert {k: c.source for k, c in cases.items()} == sources
    for case in cases.values():
        np.testing.assert_array_equal(sitk.GetArrayFromImage(load_reference(case)).ravel()[:4], [1, 2, 4, 0])


def test_a_folder_of_another_name_is_read_by_its_file_names(tmp_path):
    _write_case(tmp_path / "patient_a", ["a_flair.nii.gz", "a_t1ce.nii.gz"], [2, 4], "a_seg.nii.gz")
    _write_case(tmp_path / "patient_b", ["b-t2f.nii.gz"], [2, 3], "b-seg.nii.gz")
    _write_case(tmp_path / "notes", ["readme.nii.gz"])  # no known file names: skipped
    cases = {c.case_id: c for c in discover_real_cases(tmp_path)}
    assert sorted(cases) == ["patient_a", "patient_b"]
    assert set(cases["patient_a"].inputs) == {"FLAIR", "T1c"} and cases["patient_a"].source == "BraTS2021-named"
    assert set(cases["patient_b"].inputs) == {"FLAIR"} and cases["patient_b"].source == "BraTS2023-named"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(load_reference(cases["patient_b"])).ravel()[:3],
                                  [2, 4, 0])


def test_a_label_outside_the_convention_names_the_file(tmp_path):
    case_id = "BraTS-GLI-02000-100"  # BraTS 2024 post-treatment: 4 is the resection cavity
    _write_case(tmp_path / case_id, [f"{case_id}-t1c.nii.gz"], [1, 3, 4], f"{case_id}-seg.nii.gz")
    (case,) = discover_real_cases(tmp_path)
    with pytest.raises(InputError, match=rf"{case_id}-seg\.nii\.gz: label values \[4\].*BraTS2023-GLI"):
        load_reference(case)


def test_a_paediatric_brats_case_is_refused_not_misread(tmp_path):
    """Its labels are 1 ET, 2 NET, 3 cyst, 4 oedema: not BraTS 2023's. Refused by its folder's name or, in a folder
    of another name (any case), by its files' names."""
    case_id = "BraTS-PED-00001-000"
    folders = [_write_case(tmp_path / name, [f"{case_id}-t1c.nii.gz"], [1, 2, 3], f"{case_id}-seg.nii.gz")
               for name in (case_id, "renamed", case_id.lower() + "_copy")]
    assert discover_real_cases(tmp_path) == []
    for folder in folders:
        with pytest.raises(InputError, match="task PED"):
            describe_case(folder)
    assert describe_case(_write_case(tmp_path / "brats-study-01", ["x_t1ce.nii.gz"])).source == "BraTS2021-named"


@pytest.mark.slow
def test_evaluate_real_scores_a_brats2023_folder_as_its_own_label_file(tmp_path):
    """A phantom written with BraTS 2023 names (enhancing tumor stored as 3) scores, through ``evaluate-real``,
    the Dice that ``segment --reference`` gives against the phantom's own BraTS-valued label file."""
    from medcnncad.cli.app import main
    from medcnncad.data.phantom import make_phantom, write_phantom

    paths = write_phantom(make_phantom(7), tmp_path / "phantom")
    case_id = "BraTS-GLI-09999-000"
    folder = tmp_path / "data" / case_id
    folder.mkdir(parents=True)
    for channel, name in (("T1", "t1n"), ("T1c", "t1c"), ("T2", "t2w"), ("FLAIR", "t2f")):
        (folder / f"{case_id}-{name}.nii.gz").symlink_to(paths[channel])
    label = sitk.ReadImage(str(paths["label"]))
    values = sitk.GetArrayFromImage(label)
    assert set(np.unique(values)) == {0, 1, 2, 4}
    seg = sitk.GetImageFromArray(np.where(values == 4, 3, values).astype(np.uint8))
    seg.CopyInformation(label)
    sitk.WriteImage(seg, str(folder / f"{case_id}-seg.nii.gz"))

    common = ["--model", "brats-demo-unet", "--device", "cpu", "--precision", "manifest", "--no-tta"]
    assert main(["evaluate-real", "--data", str(tmp_path / "data"), "--variants", "all",
                 "--grade-classifier", "none", "--out", str(tmp_path / "real.json"), *common]) == 0
    assert main(["segment", "--input", f"T1={paths['T1']}", "--input", f"T1c={paths['T1c']}",
                 "--input", f"T2={paths['T2']}", "--input", f"FLAIR={paths['FLAIR']}", "--reference",
                 str(paths["label"]), "--out", str(tmp_path / "seg"), "--grade-classifier", "none", *common]) == 0
    import json
    (row,) = json.loads((tmp_path / "real.json").read_text())["rows"]
    metrics = json.loads((tmp_path / "seg" / "report.json").read_text())["metrics"]
    assert row["source"] == "BraTS2023-GLI" and row["reference_is_expert"] and row["notes"] == ""
    for region in ("WT", "TC", "ET"):
        assert row[f"dice_{region}"] == pytest.approx(metrics[region]["dice"], abs=1e-3), region
    assert row["dice_ET"] > 0.5  # enhancing tumor was read as 4 (read as ED, ET Dice would be 0)


def test_collections_with_brats_labels_and_their_own_spellings_are_read(tmp_path):
    """UCSF-PDGM (``_T1c``, ``_tumor_segmentation``) and UPENN-GBM (``_T1GD``, ``_segm``) name their files in
    capitals and their own words, with BraTS's labels (1, 2, 4); the bias-corrected copies are not inputs."""
    ucsf_id = "UCSF-PDGM-0004"
    _write_case(tmp_path / f"{ucsf_id}_nifti", [f"{ucsf_id}_{name}.nii.gz" for name in (
        "FLAIR", "T1c", "T1c_bias", "T1", "T2_bias", "brain_segmentation", "brain_parenchyma_segmentation")],
        [1, 2, 4], f"{ucsf_id}_tumor_segmentation.nii.gz")
    upenn_id = "UPENN-GBM-00001_11"
    folder = _write_case(tmp_path / upenn_id, [f"{upenn_id}_T1GD.nii.gz", f"{upenn_id}_FLAIR.nii.gz"],
                         [2, 4, 1], f"{upenn_id}_segm.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.full((6, 6, 6), 7, np.uint8)),
                    str(folder / f"{upenn_id}_automated_approx_segm.nii.gz"))  # sorts first; an algorithm's
    (folder / f"._{upenn_id}_segm.nii.gz").write_bytes(b"\0" * 4096)  # a macOS companion file: not an image
    cases = {c.case_id: c for c in discover_real_cases(tmp_path)}
    ucsf, upenn = cases[f"{ucsf_id}_nifti"], cases[upenn_id]
    assert {k: v.name for k, v in ucsf.inputs.items()} == {
        "FLAIR": f"{ucsf_id}_FLAIR.nii.gz", "T1c": f"{ucsf_id}_T1c.nii.gz", "T1": f"{ucsf_id}_T1.nii.gz"}  # no T2
    assert ucsf.reference is not None and ucsf.reference.name == f"{ucsf_id}_tumor_segmentation.nii.gz"
    assert upenn.inputs["T1c"].name == f"{upenn_id}_T1GD.nii.gz" and set(upenn.inputs) == {"T1c", "FLAIR"}
    assert upenn.reference is not None and upenn.reference.name == f"{upenn_id}_segm.nii.gz"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(load_reference(upenn)).ravel()[:4], [2, 4, 1, 0])
    assert upenn.tumor_type is None and "file names" in upenn.notes  # the convention was read from the names


def test_an_unlabelled_brats_case_has_no_label_map(tmp_path):
    _write_case(tmp_path / "BraTS20_Validation_001", ["BraTS20_Validation_001_t1ce.nii.gz"])
    (case,) = discover_real_cases(tmp_path)
    assert not case.labelled and dict(case.label_map) == {} and case.notes == "unlabelled"


def test_hgg_and_lgg_folders_give_their_cases_grade(tmp_path):
    """The BraTS 2017-2019 releases keep their cases in HGG/ and LGG/."""
    for grade, case_id in (("HGG", "Brats18_2013_2_1"), ("LGG", "Brats18_2013_0_1")):
        _write_case(tmp_path / grade / case_id, [f"{case_id}_t1ce.nii.gz"], [2, 4], f"{case_id}_seg.nii.gz")
    _write_case(tmp_path / "BraTS20_Training_001", ["BraTS20_Training_001_flair.nii.gz"])
    assert [(c.case_id, c.grade) for c in discover_real_cases(tmp_path)] == [
        ("BraTS20_Training_001", None), ("Brats18_2013_0_1", "LGG"), ("Brats18_2013_2_1", "HGG")]


def test_an_unreadable_folder_is_skipped_not_a_traceback(tmp_path, monkeypatch):
    _write_case(tmp_path / "BraTS20_Training_001", ["BraTS20_Training_001_flair.nii.gz"])
    (tmp_path / "lost+found").mkdir()
    real_iterdir = Path.iterdir

    def iterdir(self):
        if self.name == "lost+found":
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    assert [c.case_id for c in discover_real_cases(tmp_path)] == ["BraTS20_Training_001"]


def test_a_pseudo_labelled_case_is_not_an_expert_reference(tmp_path):
    case_id = "BraTS-GLI-00001-000"
    folder = _write_case(tmp_path / case_id, [f"{case_id}-t1c.nii.gz"], [2, 3], f"{case_id}-seg.nii.gz")
    assert describe_case(folder).reference_is_expert
    (folder / PSEUDO_LABEL_MARKER).write_text("{}")
    case = describe_case(folder)
    assert not case.reference_is_expert and "pseudo-label" in case.notes and case.tumor_type == "glioma"


@pytest.mark.slow
def test_a_decathlon_folder_and_a_4d_segment_input_score_as_the_separate_files(tmp_path):
    """A phantom written as the Decathlon's Task01 (one 4D file, volumes FLAIR, T1w, t1gd, T2w; labels 1 oedema,
    2 non-enhancing tumor, 3 enhancing) scores, through ``evaluate-real``, the Dice that ``segment --reference``
    gives on its separate files; ``segment --input FLAIR,T1,T1c,T2=FILE`` gives those labels too."""
    import json

    from medcnncad.cli.app import main
    from medcnncad.data.phantom import make_phantom, write_phantom

    paths = write_phantom(make_phantom(7), tmp_path / "phantom")
    task = tmp_path / "data" / "Task01_BrainTumour"
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    (task / "dataset.json").write_text(json.dumps({
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}}))
    stacked = sitk.JoinSeries([sitk.ReadImage(str(paths[c])) for c in ("FLAIR", "T1", "T1c", "T2")])
    sitk.WriteImage(stacked, str(task / "imagesTr" / "BRATS_001.nii.gz"))
    label = sitk.ReadImage(str(paths["label"]))
    seg = sitk.GetImageFromArray(relabel(sitk.GetArrayFromImage(label), {0: 0, 2: 1, 1: 2, 4: 3}, "test"))
    seg.CopyInformation(label)
    sitk.WriteImage(seg, str(task / "labelsTr" / "BRATS_001.nii.gz"))

    common = ["--model", "brats-demo-unet", "--device", "cpu", "--precision", "manifest", "--no-tta",
              "--grade-classifier", "none"]
    assert main(["evaluate-real", "--data", str(tmp_path / "data"), "--variants", "all",
                 "--out", str(tmp_path / "real.json"), *common]) == 0
    separate = ["--input", f"T1={paths['T1']}", "--input", f"T1c={paths['T1c']}", "--input", f"T2={paths['T2']}",
                "--input", f"FLAIR={paths['FLAIR']}"]
    stacked_input = ["--input", f"FLAIR,T1,T1c,T2={task / 'imagesTr' / 'BRATS_001.nii.gz'}"]
    for name, given in (("separate", separate), ("stacked", stacked_input)):
        assert main(["segment", *given, "--reference", str(paths["label"]), "--out", str(tmp_path / name),
                     *common]) == 0
    # the Decathlon's own label file as the reference: read in its dataset.json's convention, without being told
    assert main(["segment", *stacked_input, "--reference", str(task / "labelsTr" / "BRATS_001.nii.gz"),
                 "--out", str(tmp_path / "own"), *common]) == 0
    (row,) = json.loads((tmp_path / "real.json").read_text())["rows"]
    reports = {name: json.loads((tmp_path / name / "report.json").read_text())
               for name in ("separate", "stacked", "own")}
    assert reports["own"]["metrics"] == reports["stacked"]["metrics"]
    assert reports["own"]["reference_labels"] == {"0": 0, "1": 2, "2": 1, "3": 4}
    from medcnncad.errors import InputError  # a convention given for the whole root cannot override dataset.json's

    with pytest.raises(InputError, match="BRATS_001.nii.gz: its dataset.json maps label 1 to 2, not 1"):
        evaluate_real(tmp_path / "data", "brats-demo-unet", device="cpu", reference_labels={0: 0, 1: 1, 2: 2, 4: 4})
    assert row["source"] == "Decathlon:Task01_BrainTumour" and row["inputs"] == ["FLAIR", "T1", "T1c", "T2"]
    for region in ("WT", "TC", "ET"):
        want = reports["separate"]["metrics"][region]["dice"]
        assert row[f"dice_{region}"] == pytest.approx(want, abs=1e-3), region
        assert reports["stacked"]["metrics"][region]["dice"] == pytest.approx(want, abs=1e-6), region
    assert row["dice_ET"] > 0.5  # 3 was read as enhancing tumor, 1 as oedema
    assert reports["stacked"]["input_volumes"] == {"FLAIR": 0, "T1": 1, "T1c": 2, "T2": 3}
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "stacked" / "labels.nii.gz"))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "separate" / "labels.nii.gz"))))


def test_a_named_convention_replaces_the_layouts_for_brats_2024_post_treatment(tmp_path):
    """BraTS 2024 post-treatment names its files as BraTS 2023 does but stores the resection cavity as 4: refused
    under the layout's convention (with the way out in the message), read with ``reference_labels`` brats2024 as
    background, so the reference whole tumor is the NETC and ET voxels only."""
    from medcnncad.metrics.label_conventions import LABEL_CONVENTIONS

    case_id = "BraTS-GLI-02000-100"
    _write_case(tmp_path / case_id, [f"{case_id}-{s}.nii.gz" for s in ("t1n", "t1c", "t2w", "t2f")], [1, 3, 4, 4, 4],
                f"{case_id}-seg.nii.gz")
    with pytest.raises(InputError, match="label values \\[4\\].*--reference-labels.*brats2024"):
        evaluate_real(str(tmp_path), "brats-demo-unet", "cpu", variants=("all",), tta=False)
    report = evaluate_real(str(tmp_path), "brats-demo-unet", "cpu", variants=("all",), tta=False,
                           reference_labels=LABEL_CONVENTIONS["brats2024"])
    (row,) = report["rows"]
    assert row["reference_wt_ml"] == pytest.approx(2 / 1000)  # two 1 mm voxels: NETC and ET, not the cavity
    assert row["notes"].startswith("label convention given")


@needs_realdata
def test_the_realdata_folder_as_training_data_keeps_expert_sub_region_references(capsys):
    """``train --real-from ../shared/realdata``: ReMIND-022 (a whole-tumor mask) and TCGA-DU-7294 (five algorithms'
    fusion) are left out, the unlabelled BraTS 2023 cases are not listed; ReMIND-022 named alone is refused."""
    from medcnncad.training.data import real_scan_cases

    ids = [c["case_id"] for c in real_scan_cases([str(REALDATA)], 1)]
    assert "ReMIND-022" not in ids and "TCGA-DU-7294" not in ids and len(ids) == 8
    assert "ReMIND-022 (regions WT), TCGA-DU-7294 (no expert)" in capsys.readouterr().err
    with pytest.raises(InputError, match="ReMIND-022: its reference gives only WT"):
        real_scan_cases([str(REALDATA / "ReMIND-022")], 1)


def test_a_reference_on_another_grid_is_used_unless_its_labels_lie_outside_the_images():
    """A reference at another resolution, or cropped to its labels (Slicer's .seg.nrrd), is resampled; one whose
    labels lie outside the images (another scan's file: a helper's run scored Dice 0.003 without a word) is refused,
    naming it."""
    from medcnncad.evaluation.real import _reference_on

    grid = sitk.Image(24, 24, 20, sitk.sitkFloat32)
    coarse = sitk.Image(12, 12, 10, sitk.sitkUInt8)
    coarse.SetSpacing((2.0, 2.0, 2.0))
    coarse.SetOrigin((0.5, 0.5, 0.5))  # voxel centres of the 2 mm grid: the same 24 x 24 x 20 mm box
    coarse[6, 6, 5] = 2
    mapped = _reference_on(coarse, grid, "coarse.nii.gz")
    assert mapped.GetSize() == (24, 24, 20) and int(sitk.GetArrayViewFromImage(mapped).sum()) == 2 * 8
    cropped = sitk.Image(4, 4, 4, sitk.sitkUInt8)
    cropped.SetOrigin((10.0, 10.0, 8.0))
    cropped[1, 1, 1] = 4
    assert sitk.GetArrayViewFromImage(_reference_on(cropped, grid, "cropped.seg.nrrd"))[9, 11, 11] == 4
    elsewhere = sitk.Image(8, 7, 6, sitk.sitkUInt8)
    elsewhere.SetOrigin((100.0, 0.0, 0.0))
    elsewhere[2, 2, 2] = 1
    with pytest.raises(InputError, match=r"elsewhere.nii.gz: only 0 of its 0.001 labelled mL lie inside the images"):
        _reference_on(elsewhere, grid, "elsewhere.nii.gz")
    assert _reference_on(grid, grid, "same") is grid


def test_a_case_named_in_cases_that_is_not_scored_is_one_line_error(tmp_path, capsys):
    """``--cases`` naming a mistyped id or an unlabelled case left that patient out of every mean without a word;
    now exit 2, naming both, before the model loads."""
    from medcnncad.cli import main

    _write_case(tmp_path / "BraTS2021_00001", ["BraTS2021_00001_t1ce.nii.gz"], [1, 2, 4], "BraTS2021_00001_seg.nii.gz")
    _write_case(tmp_path / "BraTS2021_00002", ["BraTS2021_00002_t1ce.nii.gz"])
    with pytest.raises(InputError, match=r"--cases: BraTS2021_0001 not in .*; BraTS2021_00002 without a reference"):
        evaluate_real(str(tmp_path), "no-such-model", cases=["BraTS2021_00001", "BraTS2021_0001", "BraTS2021_00002"])
    assert main(["evaluate-real", "--data", str(tmp_path), "--cases", "BraTS2021_0001"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cases: BraTS2021_0001 not in" in err[0]


def test_compare_real_pairs_same_inputs_and_leaves_training_patients_out(capsys):
    """Case a's "all" row was read with T1c+FLAIR before and T1+T1c+T2+FLAIR after (another folder): not the same
    row. Case b became a training patient of the new model (+0.3): not held out. Only c's change (+0.1) is
    averaged; before the fix the mean was (0.4 + 0.3 + 0.1) / 3 = 0.267."""
    from medcnncad.evaluation.real import compare_real_reports, format_comparison

    def row(case, dice, inputs, trained=False):
        return {**_row(case, "all", dice), "inputs": inputs, "training_patient": trained}

    before = {"model": "m", "version": "1", "rows": [row("a", 0.3, ["FLAIR", "T1c"]), row("b", 0.5, ["FLAIR"]),
                                                    row("c", 0.6, ["FLAIR"])]}
    after = {"model": "m", "version": "2", "rows": [row("a", 0.7, ["FLAIR", "T1", "T1c", "T2"]),
                                                   row("b", 0.8, ["FLAIR"], trained=True), row("c", 0.7, ["FLAIR"])]}
    c = compare_real_reports(before, after)
    assert c["every_row"]["rows"] == 1 and c["every_row"]["mean_change_dice_WT"] == pytest.approx(0.1)
    assert c["only_before"] == [["a", "all", "FLAIR+T1c"]] and c["only_after"] == [["a", "all", "FLAIR+T1+T1c+T2"]]
    assert c["training_patient_rows"] == [["b", "all", "FLAIR"]]
    assert "training patients' rows (not held out, left out): b all FLAIR" in format_comparison(c)
    with pytest.raises(InputError, match="share no held-out row"):
        compare_real_reports({**before, "rows": before["rows"][1:2]}, {**after, "rows": after["rows"][1:2]})


def test_a_renamed_copy_of_a_training_patient_is_still_a_training_patient(tmp_path):
    """A whole scan trained on from a folder called "patientA" (a copy of BraTS2021_00001) was scored as held
    out under its real name: the record's case id is "patientA". Its reference file's SHA-256, recorded by the
    training data (real_scan_cases) and compared by evaluate-real, marks it."""
    from medcnncad.evaluation.real import is_training_patient
    from medcnncad.models.manifest import sha256_file
    from medcnncad.training.data import real_scan_cases

    original = _write_case(tmp_path / "data" / "BraTS2021_00001", ["BraTS2021_00001_t1ce.nii.gz"], [1, 2, 4],
                           "BraTS2021_00001_seg.nii.gz")
    copy = _write_case(tmp_path / "patientA", ["BraTS2021_00001_t1ce.nii.gz"], [1, 2, 4],
                       "BraTS2021_00001_seg.nii.gz")
    (trained,) = real_scan_cases([str(copy)], 1)
    assert trained["case_id"] == "patientA"
    assert trained["reference_sha256"] == sha256_file(original / "BraTS2021_00001_seg.nii.gz")
    (case,) = discover_real_cases(tmp_path / "data")
    names = training_patients({"real_patients": ["patientA"]})
    assert not is_training_patient(case, names, set())  # by name alone: missed
    assert is_training_patient(case, names, {trained["reference_sha256"]})
    assert not is_training_patient(case, names, {"0" * 64})


def test_the_report_names_the_cases_a_variant_was_not_run_on(tmp_path):
    """A case with T1c alone gets one row ('all'); T1c alone and FLAIR alone are not run on it, and the report and
    its table say so instead of counting one case fewer without a word."""
    from medcnncad.data.phantom import make_phantom, write_phantom

    paths = write_phantom(make_phantom(7), tmp_path / "phantom")
    case_id = "BraTS-GLI-09998-000"
    folder = tmp_path / "data" / case_id
    folder.mkdir(parents=True)
    (folder / f"{case_id}-t1c.nii.gz").symlink_to(paths["T1c"])
    label = sitk.ReadImage(str(paths["label"]))
    seg = sitk.GetImageFromArray(np.where(sitk.GetArrayFromImage(label) == 4, 3,
                                          sitk.GetArrayFromImage(label)).astype(np.uint8))
    seg.CopyInformation(label)
    sitk.WriteImage(seg, str(folder / f"{case_id}-seg.nii.gz"))
    report = evaluate_real(str(tmp_path / "data"), "brats-robust-unet", "cpu", tta=False, precision="manifest")
    assert [(r["variant"], r["inputs"]) for r in report["rows"]] == [("all", ["T1c"])]
    assert report["variants_not_run"] == {"T1c": [f"{case_id} (T1c is its only sequence: scored once, as 'all')"],
                                          "FLAIR": [f"{case_id} (no FLAIR)"]}
    assert f"Not run with FLAIR alone: {case_id} (no FLAIR)." in format_real_table(report)
