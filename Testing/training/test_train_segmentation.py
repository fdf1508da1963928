"""`medcnncad train segmentation` writes a complete, loadable model and resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import TEMPLATE

from medcnncad.cli import main
from medcnncad.errors import InputError
from medcnncad.models.manifest import load_manifest, sha256_file
from medcnncad.models.registry import load_model


def _tiny_template(tmp_path):
    raw = json.loads(TEMPLATE.read_text())
    raw["id"] = "tiny-test"
    raw["preprocessing"]["spacing_mm"] = [4.0, 4.0, 4.0]
    raw["network"]["kwargs"].update({"channels": [4, 8], "strides": [2], "num_res_units": 0})
    raw["inference"]["roi_size"] = [32, 32, 32]
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(raw))
    return path


def test_train_writes_model_and_resumes(tmp_path, capsys):
    out = tmp_path / "model"
    argv = ["train", "segmentation", "--template", str(_tiny_template(tmp_path)), "--out", str(out),
            "--n-train", "1", "--n-val", "1", "--epochs", "1", "--steps-per-epoch", "2", "--patch", "16", "16", "16",
            "--workers", "1", "--region-loss", "0.5"]
    assert main(argv) == 0
    manifest = load_manifest(out)
    assert manifest.id == "tiny-test" and manifest.training["config"]["region_loss"] == 0.5
    assert manifest.weights_sha256 == sha256_file(out / "model.pt")
    training = manifest.training
    assert training["epochs"] == 1 and set(training["validation_dice"]) == {"NCR", "ED", "ET", "WT", "TC"}
    assert "medcnncad train segmentation" in training["command"] and "100000" in training["data"]
    first = load_model(out).network.state_dict()
    # resume of a finished run: nothing left to train, the same record (test below: an interrupted one)
    assert main(argv + ["--resume"]) == 0
    resumed = load_manifest(out)
    assert resumed.training["epochs"] == 1 and resumed.training["history"] == training["history"]
    assert resumed.weights_sha256 == manifest.weights_sha256
    assert isinstance(load_model(out).network, torch.nn.Module) and first


def test_fine_tuning_from_a_model_says_how_to_score_it_as_that_model_runs(tmp_path, capsys):
    out = tmp_path / "tuned"
    argv = ["train", "segmentation", "--template", str(TEMPLATE), "--out", str(out), "--n-train", "1",
            "--n-val", "1", "--epochs", "1", "--steps-per-epoch", "1", "--patch", "16", "16", "16", "--workers", "1"]
    assert main(argv + ["--init", "brats-robust-unet"]) == 0
    printed = capsys.readouterr().out
    assert f"medcnncad train candidate --run {out} --like brats-robust-unet" in printed
    assert main([*argv[:5], str(tmp_path / "fresh"), *argv[6:]]) == 0
    assert "train candidate" not in capsys.readouterr().out  # nothing to carry over without --init


def test_region_loss_scores_summed_label_probabilities_against_label_unions(tmp_path):
    """Two voxels, softmax probabilities given exactly; region Dice computed by hand."""
    from medcnncad.models.manifest import parse_manifest
    from medcnncad.training.segmentation import RegionDiceCELoss, region_channels

    manifest = parse_manifest(json.loads(TEMPLATE.read_text()), TEMPLATE.parent, where="template")
    regions = region_channels(manifest)  # channels background, NCR, ED, ET
    assert regions == [[1, 2, 3], [1, 3]]  # WT = NCR + ED + ET, TC = NCR + ET
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]])  # voxel A (label ET), voxel B (background)
    logits = torch.log(probs).T.reshape(1, 4, 1, 1, 2)
    label = torch.tensor([3, 0]).reshape(1, 1, 1, 1, 2)
    # WT: p = (0.9, 0.3), t = (1, 0): 1 - 2*0.9 / (1.2 + 1) = 0.181818; TC: p = (0.6, 0.2): 1 - 1.2 / 1.8 = 0.333333
    expected = (0.181818 + 0.333333) / 2
    plain = RegionDiceCELoss(regions, 0.0)(logits, label)
    weighted = RegionDiceCELoss(regions, 2.0)(logits, label)
    assert float(weighted - plain) == pytest.approx(2 * expected, abs=1e-4)
    with pytest.raises(ValueError, match="-1"):
        RegionDiceCELoss(regions, -1.0)
    out = tmp_path / "never-written"
    assert main(["train", "segmentation", "--template", str(TEMPLATE), "--out", str(out), "--region-loss", "-1"]) == 2
    assert not out.exists()
    with pytest.raises(ValueError, match="no regions"):
        RegionDiceCELoss([], 1.0)


def test_fine_tuning_keeps_matching_layers_and_reports_the_rest(tmp_path):
    from medcnncad.models.weights import build_network
    from medcnncad.training.segmentation import TrainConfig, _optimizer, initialise_from

    raw = json.loads(TEMPLATE.read_text())
    kwargs = dict(raw["network"]["kwargs"], out_channels=3)  # one label fewer: the last layer differs
    network = build_network(raw["network"]["class"], kwargs)
    report = initialise_from(network, "brats-demo-unet")
    demo = load_model("brats-demo-unet").network.state_dict()
    own = network.state_dict()
    assert report["reinitialised"] and report["kept"]
    for name in report["kept"]:
        assert torch.equal(own[name], demo[name])
    for name in report["reinitialised"]:
        assert own[name].shape != demo[name].shape
    # pretrained tensors learn 10x slower by default; frozen ones not at all
    optimizer = _optimizer(network, TrainConfig(lr=1e-3), set(report["kept"]))
    assert sorted(g["lr"] for g in optimizer.param_groups) == [1e-4, 1e-3]
    frozen = _optimizer(network, TrainConfig(lr=1e-3, freeze_pretrained=True), set(report["kept"]))
    assert len(frozen.param_groups) == 1
    assert not any(p.requires_grad for n, p in network.named_parameters() if n in report["kept"])


def test_channel_dropout_never_drops_everything_and_favours_weights():
    from medcnncad.data.augment import RandChannelDropd

    drop = RandChannelDropd(["image"], prob=1.0, single=1.0, keep_weights=[0, 1, 0, 0])
    drop.set_random_state(0)
    image = torch.ones(4, 2, 2, 2)
    out = drop({"image": image})["image"]
    assert out[1].eq(1).all() and out[[0, 2, 3]].eq(0).all()  # only the weighted channel survives
    drop = RandChannelDropd(["image"], prob=1.0, single=0.0)
    drop.set_random_state(1)
    for _ in range(50):
        kept = drop({"image": image})["image"].flatten(1).amax(1)
        assert 1 <= int(kept.sum()) <= 3
    assert drop({"image": torch.ones(1, 2, 2, 2)})["image"].eq(1).all()  # one channel: nothing to drop


def test_training_data_from_a_csv_and_a_folder(tmp_path):
    import SimpleITK as sitk

    from medcnncad.errors import InputError
    from medcnncad.models.manifest import parse_manifest
    from medcnncad.training.data import _prepare, file_cases, split_cases

    demo = parse_manifest(json.loads(TEMPLATE.read_text()), tmp_path)
    raw = json.loads(TEMPLATE.read_text())
    for channel in raw["inputs"]:
        channel["required"] = False
    manifest = parse_manifest(raw, tmp_path)
    rows = ["case,T1-CE,FLAIR,label"]  # an alias (t1ce) in another case and with a separator
    for n in range(3):
        folder = tmp_path / "cases" / f"case{n}"
        folder.mkdir(parents=True)
        image = sitk.GetImageFromArray((torch.arange(8 * 8 * 8).reshape(8, 8, 8) % 7 + 1).float().numpy())
        image.SetSpacing((3.0, 3.0, 3.0))
        label = sitk.GetImageFromArray((sitk.GetArrayFromImage(image) > 5).astype("uint8") * 4)
        label.CopyInformation(image)
        for name in ("BraTS_t1ce.nii.gz", "BraTS_flair.nii.gz"):
            sitk.WriteImage(image, str(folder / name))
        sitk.WriteImage(label, str(folder / "BraTS_seg.nii.gz"))
        rows.append(f"case{n},cases/case{n}/BraTS_t1ce.nii.gz,cases/case{n}/BraTS_flair.nii.gz,"
                    f"cases/case{n}/BraTS_seg.nii.gz")
    (tmp_path / "cases.csv").write_text("\n".join(rows) + "\n")
    from_csv = file_cases(tmp_path / "cases.csv", manifest)
    from_folder = file_cases(tmp_path / "cases", manifest)
    assert [sorted(c["inputs"]) for c in from_csv] == [["FLAIR", "T1c"]] * 3
    assert [c["inputs"] for c in from_csv] == [c["inputs"] for c in from_folder]
    train, val = split_cases(from_csv, 0.34, seed=0)
    assert len(train) == 2 and len(val) == 1 and not {c["id"] for c in train} & {c["id"] for c in val}
    # the demo model requires all four sequences: the pair is refused, naming what is missing
    with pytest.raises(InputError, match=r"case case0: required input\(s\) \['T1', 'T2'\]"):
        file_cases(tmp_path / "cases.csv", demo)
    image, label, info = _prepare((from_csv[0], manifest.raw, str(tmp_path)))
    assert image.shape[0] == 4 and not image[0].any() and not image[2].any()  # absent T1, T2: zeros
    assert set(np.unique(label)) <= {0, 3}  # label value 4 -> output channel 3 (ET)
    (tmp_path / "bad.csv").write_text("case,foo,label\nx,a.nii.gz,b.nii.gz\n")
    with pytest.raises(InputError, match="no column names an input"):
        file_cases(tmp_path / "bad.csv", manifest)
    # a BraTS 2023 label file (enhancing tumor = 3) would train its enhancing tumor as background: refused
    seg_path = tmp_path / "cases" / "case0" / "BraTS_seg.nii.gz"
    seg = sitk.ReadImage(str(seg_path))
    label_2023 = sitk.GetImageFromArray((sitk.GetArrayFromImage(seg) > 0).astype("uint8") * 3)
    label_2023.CopyInformation(seg)
    sitk.WriteImage(label_2023, str(seg_path))
    with pytest.raises(InputError, match=r"case0/BraTS_seg\.nii\.gz: label values \[3\] are not the model's"):
        _prepare((from_csv[0], manifest.raw, str(tmp_path)))



@pytest.mark.parametrize("share, centred_on_label", [(0.0, True), (1.0, False)])
def test_negative_share_decides_where_patches_are_centred(share, centred_on_label):
    from medcnncad.data.augment import segmentation_transforms

    label = torch.zeros((1, 40, 40, 40))
    label[0, 4:10, 4:10, 4:10] = 1  # a small labelled cube in one corner
    image = torch.rand((1, 40, 40, 40))
    image[0] += 10 * label[0]  # the label is visible in the patch's image, too
    transforms = segmentation_transforms((9, 9, 9), 8, "light", negative_share=share)
    transforms.set_random_state(seed=0)
    for patch in transforms({"image": image, "label": label}):
        assert bool(patch["label"][0, 4, 4, 4] > 0) is centred_on_label
    with pytest.raises(ValueError, match="negative_share 1.5"):
        segmentation_transforms((9, 9, 9), 1, negative_share=1.5)


def test_loader_workers_train_reproducibly_and_a_missing_gpu_fails_before_any_output(tmp_path, capsys):
    template = str(_tiny_template(tmp_path))
    common = ["train", "segmentation", "--template", template, "--n-train", "2", "--n-val", "1", "--epochs", "1",
              "--steps-per-epoch", "3", "--patch", "16", "16", "16", "--workers", "1", "--device", "cpu"]
    runs = []
    for name in ("a", "b"):
        assert main(common + ["--out", str(tmp_path / name), "--loader-workers", "2"]) == 0
        runs.append(load_manifest(tmp_path / name))
    assert runs[0].weights_sha256 == runs[1].weights_sha256  # MONAI seeds each worker from the run's seed
    assert runs[0].training["config"]["loader_workers"] == 2 and runs[0].training["environment"]["device"] == "cpu"
    assert main(common + ["--out", str(tmp_path / "c")]) == 0  # augmentation in this process: other draws
    assert load_manifest(tmp_path / "c").weights_sha256 != runs[0].weights_sha256
    capsys.readouterr()
    if not torch.cuda.is_available():
        argv = common + ["--out", str(tmp_path / "gpu")]
        argv[argv.index("--device") + 1] = "cuda"
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("medcnncad: error:") and "CUDA is not available" in err[-1]
        assert not (tmp_path / "gpu").exists()


def test_loader_workers_default_to_a_few_on_cuda_only(monkeypatch):
    from medcnncad.errors import InputError
    from medcnncad.training.segmentation import _loader_workers

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert _loader_workers(None, torch.device("cpu")) == 0
    assert _loader_workers(None, torch.device("cuda")) == 8
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert _loader_workers(None, torch.device("cuda")) == 1
    assert _loader_workers(3, torch.device("cpu")) == 3
    with pytest.raises(InputError, match="loader workers -1"):
        _loader_workers(-1, torch.device("cpu"))


def test_keep_weights_choose_the_single_sequence_and_bad_ones_fail_before_any_output(tmp_path, capsys):
    from medcnncad.cli.train import name_weights
    from medcnncad.errors import InputError
    from medcnncad.models.manifest import parse_manifest
    from medcnncad.training.segmentation import _keep_weights

    manifest = parse_manifest(json.loads(TEMPLATE.read_text()), tmp_path)
    names = [c.name.lower() for c in manifest.inputs]
    default = _keep_weights(manifest)
    assert default[names.index("t1c")] == 3.0 and default[names.index("flair")] == 2.0 and sum(default) == 7.0
    weights = _keep_weights(manifest, name_weights("T1c=6, flair=2"))  # names match case-insensitively
    assert weights[names.index("t1c")] == 6.0 and sum(weights) == 6.0 + 2.0 + 1.0 * (len(names) - 2)
    with pytest.raises(InputError, match="'PD'"):
        _keep_weights(manifest, (("PD", 2.0),))
    with pytest.raises(InputError, match="at least one"):
        _keep_weights(manifest, tuple((n, 0.0) for n in names))
    template = str(_tiny_template(tmp_path))
    argv = ["train", "segmentation", "--template", template, "--out", str(tmp_path / "bad"), "--n-train", "1",
            "--n-val", "1", "--epochs", "1", "--steps-per-epoch", "1", "--workers", "1", "--channel-drop", "0.5",
            "--keep-weights", "pd=3"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'pd'" in err[0] and not (tmp_path / "bad").exists()
    argv[-1] = "t1c"  # no weight: a one-line usage error naming the option
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--keep-weights" in err[0] and "expected NAME=WEIGHT" in err[0]


def test_single_share_sets_how_often_one_sequence_is_kept():
    from medcnncad.data.augment import RandChannelDropd, segmentation_transforms

    image = torch.ones(4, 2, 2, 2)
    for share, expected in ((1.0, 1.0), (0.0, None)):
        drop = [t for t in segmentation_transforms((2, 2, 2), 1, channel_drop=1.0, single_share=share).transforms
                if isinstance(t, RandChannelDropd)][0]
        drop.set_random_state(3)
        kept = [int(drop({"image": image})["image"].flatten(1).amax(1).sum()) for _ in range(200)]
        singles = sum(k == 1 for k in kept) / len(kept)
        if expected is not None:
            assert singles == expected
        else:  # uniform proper subsets of 4 channels: one kept with probability 1/3
            assert 0.2 < singles < 0.47


def _tiny_data(monkeypatch):
    """Two training cases and one validation case of 20^3 voxels (4 channels, labels 0-3), made here instead of
    phantoms, so that a run of a few steps takes a second."""
    import medcnncad.training.segmentation as seg

    rng = np.random.default_rng(5)

    def case(_):
        label = np.zeros((1, 20, 20, 20), np.uint8)
        label[0, 6:14, 6:14, 6:14] = rng.integers(1, 4, (8, 8, 8))
        image = (rng.normal(0, 1, (4, 20, 20, 20)) + label).astype(np.float32)
        return image, label, {}

    made = [case(i) for i in range(3)]
    monkeypatch.setattr(seg, "_data", lambda manifest, cfg: ([{"id": "a", "kind": "phantom"},
                                                                {"id": "b", "kind": "phantom"}],
                                                               [{"id": "v", "kind": "phantom"}], "two test cases"))
    monkeypatch.setattr(seg, "prepare_cases", lambda cases, manifest, workers: made[:2] if len(cases) == 2
                        else made[2:])


@pytest.mark.parametrize("loader_workers", ["0", "1"])
def test_a_run_interrupted_and_resumed_ends_as_one_long_run(tmp_path, monkeypatch, loader_workers):
    """Three epochs in one go and the same command stopped after epoch 1 then resumed give the same weights, the
    same losses and the same model.pt: the checkpoint carries the random streams (data order, augmentation,
    the loader workers' seeds) and the best epoch's weights. A resume with another schedule is refused."""
    import medcnncad.training.segmentation as seg

    _tiny_data(monkeypatch)
    argv = ["train", "segmentation", "--template", str(_tiny_template(tmp_path)), "--epochs", "3",
            "--steps-per-epoch", "2", "--patch", "16", "16", "16", "--workers", "1", "--device", "cpu",
            "--seed", "3", "--augmentation", "robust", "--channel-drop", "0.5", "--loader-workers", loader_workers]
    assert main(argv + ["--out", str(tmp_path / "long")]) == 0

    saved = seg.save_checkpoint

    def stop_after_first_epoch(*args, **kwargs):
        saved(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(seg, "save_checkpoint", stop_after_first_epoch)
    assert main(argv + ["--out", str(tmp_path / "split")]) == 130
    monkeypatch.setattr(seg, "save_checkpoint", saved)
    (tmp_path / "split" / "model.pt").write_bytes(b"torn")  # as a crash while writing it would leave it
    assert main(argv + ["--out", str(tmp_path / "split"), "--resume"]) == 0
    long, split = load_manifest(tmp_path / "long"), load_manifest(tmp_path / "split")
    assert [h["loss"] for h in split.training["history"]] == [h["loss"] for h in long.training["history"]]
    assert split.weights_sha256 == long.weights_sha256 == sha256_file(tmp_path / "split" / "model.pt")
    a = torch.load(tmp_path / "long" / "checkpoint.pt", weights_only=False)["network"]
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)["network"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    argv[argv.index("--epochs") + 1] = "4"
    with pytest.raises(InputError, match=r"other settings \(epochs 3 -> 4\)"):
        seg.train_segmentation(str(_tiny_template(tmp_path)), tmp_path / "split",
                               seg.TrainConfig(epochs=4, steps_per_epoch=2, patch=(16, 16, 16), workers=1,
                                               device="cpu", seed=3, augmentation="robust", channel_drop=0.5,
                                               loader_workers=int(loader_workers)), resume=True)


def test_a_resume_with_other_settings_is_one_line_error(tmp_path, monkeypatch, capsys):
    """The checkpoint's cosine schedule spans its own epochs; a resume asking for more would record 4 epochs and
    train a warm restart: refused, exit 2, naming the setting; nothing is rewritten."""
    _tiny_data(monkeypatch)
    argv = ["train", "segmentation", "--template", str(_tiny_template(tmp_path)), "--out", str(tmp_path / "m"),
            "--epochs", "1", "--steps-per-epoch", "1", "--patch", "16", "16", "16", "--workers", "1"]
    assert main(argv) == 0
    before = sha256_file(tmp_path / "m" / "manifest.json")
    argv[argv.index("--epochs") + 1] = "2"
    capsys.readouterr()
    assert main(argv + ["--resume", "--workers", "2"]) == 2  # workers only prepare cases: not compared
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("medcnncad: error: --resume") and "(epochs 1 -> 2)" in err[-1]
    assert sha256_file(tmp_path / "m" / "manifest.json") == before


def test_a_run_on_patient_data_does_not_claim_it_was_not(tmp_path, monkeypatch):
    """The template says "synthetic phantoms ... - not on patient data"; a run with two whole real scans and
    tumors of one donor in half its phantoms says which patients instead, in its manifest's trained_on."""
    import medcnncad.training.segmentation as seg

    _tiny_data(monkeypatch)
    real = [{"id": "real-p1", "kind": "real", "case_id": "p1"}, {"id": "real-p2", "kind": "real", "case_id": "p2"}]
    monkeypatch.setattr(seg, "_data", lambda manifest, cfg: (real, [{"id": "v", "kind": "phantom"}], "test"))
    monkeypatch.setattr(seg, "donor_references", lambda donors: ["f" * 64])
    cfg = seg.TrainConfig(epochs=1, steps_per_epoch=1, patch=(16, 16, 16), workers=1, device="cpu",
                          transplant_from=("/data/donor7",), transplant_share=0.5)
    template = _tiny_template(tmp_path)
    assert "not on patient data" in json.loads(template.read_text())["trained_on"]
    seg.train_segmentation(template, tmp_path / "m", cfg)
    assert load_manifest(tmp_path / "m").trained_on == (
        "synthetic phantoms (MedCNNCAD generator on the MNI152 template); real tumors of donor7 transplanted into "
        "50% of the phantoms; the whole scans of p1, p2 (patient data)")
    assert load_manifest(tmp_path / "m").training["real_patient_references"] == ["f" * 64]
    phantoms_only = seg.TrainConfig()
    assert seg.trained_on_text("phantoms - not on patient data", phantoms_only, []) == "phantoms - not on patient data"
    assert seg.trained_on_text("phantoms - not on patient data", seg.TrainConfig(data="/x/cases.csv"), []) == \
        "the cases of /x/cases.csv (patient data)"


def test_a_sigmoid_template_is_refused_before_any_output(tmp_path, capsys):
    """Training fits a softmax; a sigmoid template would be trained as softmax and written as sigmoid."""
    raw = json.loads(_tiny_template(tmp_path).read_text())
    raw["postprocessing"]["activation"] = "sigmoid"
    template = tmp_path / "sigmoid.json"
    template.write_text(json.dumps(raw))
    out = tmp_path / "never-written"
    assert main(["train", "segmentation", "--template", str(template), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"medcnncad: error: {template}: postprocessing activation 'sigmoid': training fits softmax "
                   f"models only (one label per voxel); set \"activation\": \"softmax\" with one channel per label")
    assert not out.exists()
