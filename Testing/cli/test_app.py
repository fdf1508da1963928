"""The medcnncad command line: results, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ROOT, make_image
from helpers import blob_volume, small_phantom, write_auto3dseg_model, write_bundle

from medcnncad.cli import main
from medcnncad.metrics.segmentation import structure_metrics


def _write(img, path):
    sitk.WriteImage(img, str(path))
    return str(path)


def _labels(tmp_path):
    rng = np.random.default_rng(3)
    ref = np.zeros((12, 14, 16), np.uint8)
    ref[3:9, 4:10, 5:12] = 2
    ref[5:7, 6:8, 7:9] = 4
    pred = ref.copy()
    pred[rng.random(ref.shape) < 0.05] = 2
    spacing = (0.9, 1.2, 3.0)
    return (_write(make_image(pred, spacing), tmp_path / "pred.nii.gz"),
            _write(make_image(ref, spacing), tmp_path / "ref.nrrd"), pred, ref, spacing)


def test_evaluate_json_matches_library(tmp_path, capsys):
    pred_path, ref_path, pred, ref, spacing = _labels(tmp_path)
    assert main(["evaluate", "--pred", pred_path, "--ref", ref_path, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["metrics"]
    assert set(out) == {"label_2", "label_4", "foreground"}
    expected = structure_metrics(np.isin(pred, (2, 4)), np.isin(ref, (2, 4)), spacing)
    for key in ("dice", "jaccard", "precision", "recall", "sensitivity", "specificity", "accuracy", "f1",
                "hd95_mm", "assd_mm", "volume_diff_ml"):
        assert out["foreground"][key] == pytest.approx(getattr(expected, key), abs=1e-9), key


def test_evaluate_without_a_model_notes_values_only_one_file_has(tmp_path, capsys):
    """BraTS 2023 stores enhancing tumor as 3: compared value by value with a BraTS 2021 prediction, 3 and 4 are
    each on one side only, which stderr says (with the option that fixes it); matching values say nothing."""
    pred_path, _, pred, ref, spacing = _labels(tmp_path)
    as_2023 = _write(make_image(np.where(ref == 4, 3, ref).astype(np.uint8), spacing), tmp_path / "ref2023.nii.gz")
    assert main(["evaluate", "--pred", pred_path, "--ref", as_2023, "--json"]) == 0
    captured = capsys.readouterr()
    assert set(json.loads(captured.out)["metrics"]) == {"label_2", "label_3", "label_4", "foreground"}
    assert "label values [3] are only in" in captured.err and "[4] only in the prediction" in captured.err
    assert "--reference-labels" in captured.err
    assert main(["evaluate", "--pred", pred_path, "--ref", as_2023, "--json", "--reference-labels", "brats2023"]) == 0
    captured = capsys.readouterr()
    assert set(json.loads(captured.out)["metrics"]) == {"label_2", "label_4", "foreground"} and not captured.err


def test_evaluate_reads_a_dataset_folders_label_file_in_its_dataset_json_convention(tmp_path, capsys):
    """The Decathlon's Task01 stores 1 oedema, 2 non-enhancing tumor, 3 enhancing tumor. A reference with no
    enhancing tumor then holds only values the model has too (1, 2), so read as BraTS 2021's its oedema would be
    scored as necrosis without a sign; in its labelsTr/ beside dataset.json it is read as that file says."""
    _, _, pred, ref, spacing = _labels(tmp_path)
    ref[ref == 4] = 1  # the core: necrosis, no enhancing tumor
    pred = ref.copy()
    pred_path = _write(make_image(pred, spacing), tmp_path / "pred_core.nii.gz")
    task = tmp_path / "Task01_BrainTumour"
    (task / "labelsTr").mkdir(parents=True)
    (task / "dataset.json").write_text(json.dumps({
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}}))
    msd = np.select([ref == 2, ref == 1], [1, 2], 0).astype(np.uint8)  # BraTS 2021 -> the Decathlon's values
    inside = _write(make_image(msd, spacing), task / "labelsTr" / "BRATS_900.nii.gz")
    outside = _write(make_image(msd, spacing), tmp_path / "BRATS_900.nii.gz")
    argv = ["evaluate", "--pred", pred_path, "--json", "--model", "brats-demo-unet", "--ref"]
    assert main([*argv, inside]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert metrics["NCR"]["dice"] == metrics["ED"]["dice"] == metrics["WT"]["dice"] == 1.0
    assert main([*argv, outside]) == 0  # the same file elsewhere: the model's values, oedema and necrosis swapped
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert metrics["NCR"]["dice"] == metrics["ED"]["dice"] == 0.0 and metrics["WT"]["dice"] == 1.0
    assert main([*argv, outside, "--reference-labels", "msd"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["ED"]["dice"] == 1.0
    _one_line_error(capsys, [*argv, inside, "--reference-labels", "brats"],
                    "BRATS_900.nii.gz: its dataset.json maps label 1 to 2, not 1 (its convention: 0=0, 1=2, 2=1, 3=4)")
    assert main([*argv, inside, "--reference-labels", "msd"]) == 0  # the same convention, named: accepted
    capsys.readouterr()
    # without --model the values are compared as they are (a prediction in the dataset's own values scores 1)
    assert main(["evaluate", "--pred", inside, "--ref", inside, "--json"]) == 0
    captured = capsys.readouterr()
    assert {k: v["dice"] for k, v in json.loads(captured.out)["metrics"].items()} == \
        {"label_1": 1.0, "label_2": 1.0, "foreground": 1.0}
    assert "is a dataset folder's label file; without --model its values are compared as they are" in captured.err


def test_evaluate_with_model_names(tmp_path, capsys):
    pred_path, ref_path, *_ = _labels(tmp_path)
    assert main(["evaluate", "--pred", pred_path, "--ref", ref_path, "--json", "--model", "brats-demo-unet"]) == 0
    assert set(json.loads(capsys.readouterr().out)["metrics"]) == {"NCR", "ED", "ET", "WT", "TC"}


def _one_line_error(capsys, argv, fragment):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("medcnncad: error:"), err
    assert fragment in err, err
    assert "Traceback" not in err


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    pred_path, ref_path, pred, *_ = _labels(tmp_path)
    other = _write(make_image(pred, (1, 1, 1)), tmp_path / "other.nii.gz")
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not an image at all")
    floats = _write(make_image(pred.astype(np.float32) + 0.5, (0.9, 1.2, 3.0)), tmp_path / "float.nii.gz")
    _one_line_error(capsys, ["evaluate", "--pred", str(tmp_path / "nope.nii.gz"), "--ref", ref_path], "nope.nii.gz")
    _one_line_error(capsys, ["evaluate", "--pred", other, "--ref", ref_path], "grid differs")
    _one_line_error(capsys, ["evaluate", "--pred", str(garbage), "--ref", ref_path], "garbage.nii.gz")
    _one_line_error(capsys, ["evaluate", "--pred", floats, "--ref", ref_path], "non-integer")
    _one_line_error(capsys, ["segment", "--model", "brats-demo-unet", "--input", f"T1={pred_path}",
                             "--out", str(tmp_path / "o")], "needs input channel(s)")
    _one_line_error(capsys, ["segment", "--model", "brats-demo-unet", "--input", "T1", "--out", str(tmp_path)],
                    "NAME=PATH")
    _one_line_error(capsys, ["segment", "--model", "no-such", "--input", f"T1={pred_path}",
                             "--out", str(tmp_path)], "no such model")
    assert not (tmp_path / "o").exists()
    _one_line_error(capsys, ["calibrate-case", "--tumor-free", "0"], "tumor-free fraction 0.0")
    _one_line_error(capsys, ["calibrate-case", "--channels", "T1c,PET", "--n", "2"], "channels ['T1c', 'PET']")


def _phantom_case(tmp_path):
    """The small phantom's sequences written to ``tmp_path/case``: (--input arguments, label, case folder)."""
    images, label = small_phantom()
    case = tmp_path / "case"
    case.mkdir()
    args = []
    for name, img in images.items():
        args += ["--input", f"{name}={_write(img, case / f'{name}.nii.gz')}"]
    return args, label, case


def test_untrusted_bundle_exit_2_then_trust_flag_runs(tmp_path, capsys):
    args, _, _ = _phantom_case(tmp_path)
    bundle = str(write_bundle(tmp_path / "bundle"))
    _one_line_error(capsys, ["segment", "--model", bundle, *args, "--out", str(tmp_path / "out")], "--trust")
    assert not (tmp_path / "out").exists()
    assert main(["segment", "--model", bundle, *args, "--out", str(tmp_path / "out"), "--trust"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"]["id"] == "demo-bundle"


def test_a_bundle_whose_network_gives_another_output_count_than_its_metadata_is_one_line_exit_2(tmp_path, capsys):
    """The demo bundle's metadata declares three outputs for its four-output network: one line naming the model,
    its folder and both counts (before: an internal error from the stitching), and no output folder."""
    bundle = write_bundle(tmp_path / "bundle", code=False)
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    metadata["network_data_format"]["outputs"]["pred"].update(
        {"num_channels": 3, "channel_def": {"0": "background", "1": "NCR", "2": "ED"}})
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata))
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["inferer"]["roi_size"] = [32, 32, 32]  # one small window: the error comes from the first
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    args = []
    for k, name in enumerate(("T1", "T1c", "T2", "FLAIR")):  # each its own image: the same one twice is refused
        args += ["--input", f"{name}={_write(make_image(blob_volume() * (k + 1)), tmp_path / f'{name}.nii.gz')}"]
    _one_line_error(capsys, ["segment", "--model", str(bundle), *args, "--out", str(tmp_path / "out")],
                    f"medcnncad: error: model 'demo-bundle' ({bundle}): its network gives 4 output channels, but its "
                    f"manifest declares 3 (background, NCR, ED)")
    assert not (tmp_path / "out").exists()


def test_segment_writes_every_output(tmp_path, capsys):
    args, label, case = _phantom_case(tmp_path)
    ref = _write(label, case / "label.nii.gz")
    out = tmp_path / "out"
    assert main(["segment", "--model", "brats-demo-unet", *args, "--out", str(out), "--reference", ref]) == 0
    names = {p.name for p in out.iterdir()}
    report = json.loads((out / "report.json").read_text())
    thumbnails = {f"lesion_{les['lesion_id']}.png" for les in report["retrieval"]["lesions"]}
    assert thumbnails and {"labels.nii.gz", "labels.seg.nrrd", "prob_NCR.nii.gz", "prob_ED.nii.gz", "prob_ET.nii.gz",
                           "overlay.png", "report.json"} | thumbnails == names
    assert set(report["metrics"]) == {"NCR", "ED", "ET", "WT", "TC"}
    for key in ("dice", "jaccard", "precision", "recall", "sensitivity", "specificity", "accuracy", "f1",
                "hd95_mm", "assd_mm", "volume_diff_ml"):
        assert key in report["metrics"]["WT"]
    assert report["model"]["weights_sha256"] and report["device"] == "cpu"
    assert {"read", "preprocess", "inference", "postprocess", "lesions", "metrics", "write"} <= set(report["timings_s"])
    assert report["metrics"]["WT"]["dice"] > 0.8
    labels = sitk.ReadImage(str(out / "labels.nii.gz"))
    assert labels.GetSize() == label.GetSize()
    assert "WT" in capsys.readouterr().out


def test_console_script_and_models_listing():
    done = subprocess.run([sys.executable, "-m", "medcnncad.cli", "models"], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT / "MedCNNCAD"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "brats-demo-unet\t1.0.1\tsegmentation\tinputs T1,T1c,T2,FLAIR" in done.stdout


def test_segment_with_lesion_classifier_and_uncertainty(tmp_path, capsys):
    from helpers import classifier_dict, write_classifier

    data = classifier_dict()
    data.update(inputs=[{"name": n, "modality": "MR"} for n in ("T1", "T1c", "T2", "FLAIR")],
                lesion_structure="WT", lesion_label_values=[1, 2, 4])
    data["network"]["kwargs"]["in_channels"] = 5
    clf = write_classifier(tmp_path / "clf", data)
    images, _ = small_phantom()
    args = []
    for name, img in images.items():
        args += ["--input", f"{name}={_write(img, tmp_path / f'{name}.nii.gz')}"]
    out = tmp_path / "out"
    assert main(["segment", "--model", "brats-demo-unet", *args, "--out", str(out), "--classifier", str(clf),
                 "--tta"]) == 0
    report = json.loads((out / "report.json").read_text())
    wt = [les for les in report["lesions"] if les["structure"] == "WT"]
    assert wt and all(set(les["class_probabilities"]) == {"low", "high"} for les in wt)
    assert report["classification"]["case"]["probability_high"] == max(
        les["class_probabilities"]["high"] for les in wt)
    assert (out / "uncertainty.nii.gz").is_file() and report["uncertainty"]["cost"] == "4x the network time"
    assert all(les["uncertainty"] is not None for les in report["lesions"])
    printed = capsys.readouterr().out
    assert "P(high)" in printed and "case abnormality probability" in printed and "(uncalibrated score)" in printed
    # a classifier is not a segmentation model: one line, exit 2
    assert main(["segment", "--model", str(clf), *args, "--out", str(tmp_path / "x")]) == 2
    assert "lesion grade classifier is used with --grade-classifier" in capsys.readouterr().err


def test_tta_follows_the_model_unless_asked():
    from medcnncad.cli import build_parser

    def tta(*extra: str):
        return build_parser().parse_args(["segment", "--model", "m", "--input", "T1=x", "--out", "o", *extra]).tta

    assert tta() is None and tta("--tta") is True and tta("--no-tta") is False


@pytest.mark.parametrize("force", [False, True])
def test_calibrate_case_writes_only_a_calibration_that_helps_unless_forced(tmp_path, capsys, monkeypatch, force):
    import shutil

    from medcnncad.cli import evaluate as evaluation  # the command module that calls fit_case_calibration
    from medcnncad.metrics.calibration import binary_report

    folder = tmp_path / "model"
    shutil.copytree(ROOT / "Resources" / "Models" / "brats-demo-unet", folder)
    before = (folder / "manifest.json").read_text()
    scores, labels = [0.999] * 4 + [0.001] * 4, [1] * 4 + [0] * 4
    fake = {"method": "platt", "a": 0.3, "b": 0.0, "inputs": ["T1", "T1c", "T2", "FLAIR"], "fitted_on": "fake",
            "before": binary_report(scores, labels, 0.5), "after": binary_report(scores, labels, 0.5),
            "leave_one_out": binary_report([0.9] * 4 + [0.1] * 4, labels, 0.5), "cases": []}
    monkeypatch.setattr(evaluation, "fit_case_calibration", lambda *a, **k: fake)
    assert main(["calibrate-case", "--model", str(folder), "--write"] + (["--force"] if force else [])) == 0
    printed = capsys.readouterr().out
    if force:
        assert "written to" in printed
        assert json.loads((folder / "manifest.json").read_text())["case_calibration"][0]["a"] == 0.3
    else:
        assert "not written: leave-one-out log loss 0.105 is not below the uncalibrated score's 0.001" in printed
        assert (folder / "manifest.json").read_text() == before


def test_auto3dseg_folder_listed_trusted_and_segmented(tmp_path, capsys, monkeypatch):
    """An Auto3DSeg folder (SlicerMONAIAuto3DSeg layout) from the command line: listed with its format,
    refused while its network config holds code, trusted by hash, then segmented to a full report."""
    model = write_auto3dseg_model(tmp_path / "models" / "brain-a3d", 4, {1: "tumor core", 2: "edema", 3: "enhancing"},
                                  sigmoid=True, network_extra={"init_filters": "$8"})
    (model / "medcnncad.json").write_text(json.dumps({"inputs": ["T1", "T1c", "T2", "FLAIR"]}))
    monkeypatch.setenv("MEDCNNCAD_MODEL_PATH", str(tmp_path / "models"))
    assert main(["models"]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("brain-a3d")]
    assert listed and "Auto3DSeg SegResNet" in listed[0] and "T1c" in listed[0]
    args, _, _ = _phantom_case(tmp_path)
    _one_line_error(capsys, ["segment", "--model", str(model), *args, "--out", str(tmp_path / "out")], "trust")
    assert main(["trust", str(model)]) == 0
    assert main(["segment", "--model", str(model), *args, "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"]["format"] == "auto3dseg"
    assert report["model"]["source"].endswith("brain-a3d/model.pt")
    assert (tmp_path / "out" / "labels.nii.gz").is_file()


def test_grade_classifier_none_means_none_in_any_case():
    from medcnncad.cli.options import classifier_or_none
    assert [classifier_or_none(v) for v in (None, "", "none", "None", "brats-grade-densenet")] == [
        None, None, None, None, "brats-grade-densenet"]


def test_a_brats2023_reference_is_refused_until_its_convention_is_named(tmp_path, capsys):
    """BraTS 2023 stores enhancing tumor as 3, a value the BraTS model has no label for: scored as it is, every
    region would lose the enhancing tumor. Refused before the network runs (no output folder), then, with
    ``--reference-labels brats2023``, scored exactly as the same reference in the model's own values."""
    args, label, case = _phantom_case(tmp_path)
    values = sitk.GetArrayFromImage(label)
    assert 4 in values and 3 not in values
    as_2023 = sitk.GetImageFromArray(np.where(values == 4, 3, values).astype(np.uint8))
    as_2023.CopyInformation(label)
    ref_2023 = _write(as_2023, case / "seg_2023.nii.gz")
    ref = _write(label, case / "label.nii.gz")
    common = ["segment", "--model", "brats-demo-unet", *args, "--precision", "manifest", "--grade-classifier", "none"]
    _one_line_error(capsys, [*common, "--out", str(tmp_path / "refused"), "--reference", ref_2023],
                    "seg_2023.nii.gz: label values [3] are not the model's ([1, 2, 4])")
    assert not (tmp_path / "refused").exists()
    assert main([*common, "--out", str(tmp_path / "a"), "--reference", ref_2023,
                 "--reference-labels", "brats2023"]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "--reference", ref]) == 0
    a, b = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("a", "b"))
    assert a["metrics"] == b["metrics"] and a["metrics"]["ET"]["dice"] > 0.5
    assert a["reference_labels"] == {"0": 0, "1": 1, "2": 2, "3": 4} and "reference_labels" not in b
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(tmp_path / "a" / "labels.nii.gz"), "--ref", ref_2023, "--json",
                 "--model", "brats-demo-unet", "--reference-labels", "3=4"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["WT"]["dice"] == pytest.approx(a["metrics"]["WT"]["dice"])
