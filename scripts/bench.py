"""Benchmarks (not tests): each comparison runs side by side in one process, repeated; medians and
ratios are printed. ``make bench`` runs all; results are tabled in docs/performance.md.

    python scripts/bench.py metrics [--repeats 5]
    python scripts/bench.py case [--repeats 3]
    python scripts/bench.py segresnet [--repeats 3]
    python scripts/bench.py bundle [--repeats 3] [--weights DIR]  # zoo SegResNet as a MONAI bundle, measured policy
    python scripts/bench.py segresnet-template --out T.json  # training template for --weights (performance.md)
    python scripts/bench.py default-case [--repeats 3]  # the shipped default model, BraTS-size case, stages
    python scripts/bench.py policy
    python scripts/bench.py memory        # 512 x 512 x 600 CT, peak RSS, engine vs MONAI (subprocesses)
    python scripts/bench.py worker [--repeats 3]
    python scripts/bench.py lesion-filter [--repeats 5]
    python scripts/bench.py retrieval [--repeats 5]   # query latency + memory at 1e3/1e5/1e6 lesions, build time
    python scripts/bench.py mixture [--repeats 5]     # the core refinement's mixture fit, scikit-learn vs engine
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

ROOT = Path(__file__).resolve().parents[1]


def _median_time(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def _network_time(segmenter, images: dict[str, sitk.Image], repeats: int,
                  flips: Sequence[tuple[int, ...]] = ((),)) -> tuple[float, tuple[int, ...]]:
    """Median time of the segmenter's sliding-window network alone on the preprocessed ``images`` (one pass
    per entry of ``flips``, the dimensions of the (C, I, J, K) tensor flipped), and the preprocessed grid's
    shape (I, J, K)."""
    from medcnncad.models.preprocessing import to_metatensor

    pre = segmenter.model.preprocess(to_metatensor([images[c.name] for c in segmenter.manifest.inputs])).as_tensor()

    def network() -> None:
        for dims in flips:
            segmenter._infer(torch.flip(pre, dims) if dims else pre, lambda s, f: None, [])

    t_net, _ = _median_time(network, repeats)
    return t_net, tuple(pre.shape[1:])


def _write_case(images: dict[str, sitk.Image], folder: Path) -> dict[str, str]:
    """Write ``images`` as ``folder/<name>.nii.gz``; returns name -> path."""
    paths = {}
    for name, image in images.items():
        paths[name] = str(folder / f"{name}.nii.gz")
        sitk.WriteImage(image, paths[name])
    return paths


def _brats_size_labels() -> tuple[np.ndarray, np.ndarray]:
    """A held-out phantom's label map on a 240 x 240 x 155 grid, and a plausible 'prediction'."""
    from scipy import ndimage

    from medcnncad.data.phantom import make_phantom

    ref_small = sitk.GetArrayFromImage(make_phantom(900_000).label)
    ref = np.zeros((155, 240, 240), np.uint8)
    k, j, i = (min(a, b) for a, b in zip(ref_small.shape, ref.shape))
    ref[:k, :j, :i] = ref_small[:k, :j, :i]
    pred = ref.copy()
    pred[ndimage.binary_dilation(ref == 2, iterations=1) & (ref == 0)] = 2  # oedema one voxel larger
    pred[ndimage.binary_erosion(ref == 4, iterations=1) != (ref == 4)] = 1  # enhancing rim thinner
    return pred, ref


def bench_metrics(repeats: int) -> None:
    from monai.metrics import DiceMetric, HausdorffDistanceMetric

    from medcnncad.metrics.segmentation import compute_metrics

    pred, ref = _brats_size_labels()
    structures = {"NCR": (1,), "ED": (2,), "ET": (4,)}
    onehot = lambda a: torch.from_numpy(np.stack([a == v for v in (1, 2, 4)])[None].astype(np.float32))  # noqa
    p, r = onehot(pred), onehot(ref)

    def monai_run():
        dice = DiceMetric(include_background=True, reduction="none")(p, r)
        hd95 = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(p, r)
        return dice, hd95

    t_ours, ours = _median_time(lambda: compute_metrics(pred, ref, (1.0, 1.0, 1.0), structures), repeats)
    t_monai, (dice, hd95) = _median_time(monai_run, repeats)
    worst = max(max(abs(ours[n].dice - float(dice[0, i])), abs(ours[n].hd95_mm - float(hd95[0, i])) /
                    max(1.0, float(hd95[0, i]))) for i, n in enumerate(structures))
    print(f"metrics, 3 labels on 240x240x155, median of {repeats}:")
    print(f"  MedCNNCAD full metric set (Dice, Jaccard, precision, recall, specificity, accuracy, HD95, ASSD, "
          f"Hausdorff, volumes, lesion detection): {t_ours * 1000:.1f} ms")
    print(f"  MONAI DiceMetric + HausdorffDistanceMetric(95):                       {t_monai * 1000:.1f} ms")
    print(f"  ratio MONAI / MedCNNCAD: {t_monai / t_ours:.1f}x; largest difference vs MONAI (Dice abs, HD95 rel): "
          f"{worst:.2e}")


def bench_case(repeats: int) -> None:
    from medcnncad.cli import main
    from medcnncad.data.phantom import make_phantom, write_phantom
    from medcnncad.inference.segmenter import Segmenter
    from medcnncad.models.registry import load_model

    folder = Path(tempfile.mkdtemp(prefix="medcnncad-bench-"))
    case = make_phantom(900_000)
    paths = write_phantom(case, folder / "case")
    args = ["segment", "--model", "demo", "--device", "cpu", "--precision", "manifest", "--out", str(folder / "out"),
            "--reference", str(paths["label"])]
    for name in case.images:
        args += ["--input", f"{name}={paths[name]}"]
    segmenter = Segmenter(load_model("demo"), "cpu")
    t_net, _ = _network_time(segmenter, case.images, repeats)
    import contextlib
    import io
    import json

    with contextlib.redirect_stdout(io.StringIO()):
        t_case, _ = _median_time(lambda: main(args), repeats)
    stages = json.loads((folder / "out" / "report.json").read_text())["timings_s"]
    size = case.images["T1"].GetSize()
    print(f"end-to-end case (read 4 NIfTI -> segment -> lesions -> metrics -> write all outputs), demo model, "
          f"{size[0]}x{size[1]}x{size[2]} input, median of {repeats}:")
    print(f"  medcnncad segment (new process state, model load included): {t_case:.2f} s")
    print(f"  sliding-window network alone on the same windows:          {t_net:.2f} s")
    print(f"  ratio case / network: {t_case / t_net:.2f}")
    print("  stages of the last run (s): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))


SEGRESNET_KWARGS = {"spatial_dims": 3, "in_channels": 4, "out_channels": 3, "init_filters": 16,
                    "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "dropout_prob": 0.2}


def _segresnet_model(folder: Path, fit_roi: int) -> Path:
    """A manifest folder for the model-zoo brain-tumor SegResNet size with random weights (speed only)."""
    import json

    from medcnncad.models.manifest import sha256_file
    from medcnncad.models.weights import build_network

    raw = json.loads((ROOT / "Resources" / "ModelTemplates" / "brats-demo-unet.json").read_text())
    raw.update(id=f"segresnet-speed-{fit_roi}", aliases=[], trained_on="nothing: random weights, for timing only")
    raw["network"] = {"class": "monai.networks.nets.SegResNet", "kwargs": SEGRESNET_KWARGS}
    raw["preprocessing"]["spacing_mm"] = [1.0, 1.0, 1.0]
    raw["preprocessing"]["crop_foreground"] = {"enabled": True, "margin_vox": 0}
    raw["inference"] = {"roi_size": [240, 240, 160], "overlap": 0.5, "blend_mode": "constant", "fit_roi": fit_roi}
    raw["postprocessing"] = {"activation": "sigmoid", "probability_file": "uint8",
                             "channels": [{"name": "WT", "value": 2}, {"name": "TC", "value": 1},
                                          {"name": "ET", "value": 4}]}
    raw["regions"] = []
    out = folder / raw["id"]
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(build_network(raw["network"]["class"], SEGRESNET_KWARGS).state_dict(), out / "model.pt")
    raw["weights"] = {"file": "model.pt", "sha256": sha256_file(out / "model.pt")}
    (out / "manifest.json").write_text(json.dumps(raw))
    return out


def write_segresnet_template(path: Path) -> None:
    """The training template of the benchmark's trained zoo-size SegResNet (softmax over background, NCR,
    ED, ET; 1 mm; phantoms): ``medcnncad train segmentation --template <path> ...`` (docs/performance.md)."""
    import json

    raw = json.loads((ROOT / "Resources" / "ModelTemplates" / "brats-demo-unet.json").read_text())
    raw.update(id="segresnet-zoo-size-phantom", name="Zoo-size SegResNet trained on phantoms (benchmark weights only)",
               aliases=[], intended_use="Benchmarking only - not for diagnosis.",
               description="The model-zoo brain-tumor SegResNet size, trained briefly on synthetic phantoms so that "
                           "the speed benchmark measures a network with trained outputs. Timing only.",
               trained_on="synthetic phantoms (MedCNNCAD generator) - not on patient data; benchmark weights only")
    raw["network"] = {"class": "monai.networks.nets.SegResNet", "kwargs": {**SEGRESNET_KWARGS, "out_channels": 4}}
    raw["preprocessing"]["spacing_mm"] = [1.0, 1.0, 1.0]
    raw["inference"] = {"roi_size": [128, 128, 128], "overlap": 0.25, "blend_mode": "gaussian", "sw_batch_size": 1}
    path.write_text(json.dumps(raw, indent=1))


def _monai_bundle_default(paths: dict[str, str], out: Path, network: torch.nn.Module, softmax: bool = False) -> None:
    """The model-zoo bundle's own pipeline: fp32, one 240x240x160 window, overlap 0.5, then save
    (sigmoid + threshold 0.5 as the zoo bundle; ``softmax``: softmax + arg-max)."""
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import (
        Activations,
        AsDiscrete,
        Compose,
        ConcatItemsd,
        EnsureChannelFirstd,
        LoadImaged,
        NormalizeIntensityd,
        Orientationd,
        SaveImage,
        Spacingd,
    )

    keys = list(paths)
    pre = Compose([LoadImaged(keys), EnsureChannelFirstd(keys), ConcatItemsd(keys, "image"),
                   Orientationd("image", "RAS"), Spacingd("image", (1.0, 1.0, 1.0)),
                   NormalizeIntensityd("image", nonzero=True, channel_wise=True)])
    data = pre(dict(paths))
    inferer = SlidingWindowInferer(roi_size=(240, 240, 160), sw_batch_size=1, overlap=0.5)
    with torch.inference_mode():
        logits = inferer(data["image"][None], network)[0]
    pred = (AsDiscrete(argmax=True)(Activations(softmax=True)(logits)) if softmax
            else AsDiscrete(threshold=0.5)(Activations(sigmoid=True)(logits)))
    SaveImage(output_dir=str(out), output_postfix="seg", separate_folder=False, print_log=False)(pred)


def bench_segresnet(repeats: int) -> None:
    """Engine vs MONAI's bundle-default pipeline for a BraTS-size case and the model-zoo SegResNet size."""
    import contextlib
    import io
    import json

    from medcnncad.cli import main
    from medcnncad.inference.segmenter import Segmenter
    from medcnncad.io.sample_case import load_sample_case
    from medcnncad.models.registry import load_model

    folder = Path(tempfile.mkdtemp(prefix="medcnncad-bench-"))
    images = load_sample_case(brats_size=True)
    paths = _write_case(images, folder)
    model = _segresnet_model(folder, fit_roi=8)
    args = ["segment", "--model", str(model), "--device", "cpu", "--precision", "manifest",
            "--out", str(folder / "out")]
    for name in images:
        args += ["--input", f"{name}={paths[name]}"]
    segmenter = Segmenter(load_model(str(model)), "cpu")
    t_net, box = _network_time(segmenter, images, repeats)
    with contextlib.redirect_stdout(io.StringIO()):
        t_case, _ = _median_time(lambda: main(args), repeats)
    stages = json.loads((folder / "out" / "report.json").read_text())["timings_s"]
    network = load_model(str(model)).network
    t_monai, _ = _median_time(lambda: _monai_bundle_default(paths, folder / "monai", network), repeats)
    print(f"BraTS-size case (4 x 240x240x155 NIfTI), SegResNet init_filters 16, blocks_down 1,2,2,4 "
          f"(random weights), CPU fp32, median of {repeats}:")
    print(f"  MONAI bundle-default pipeline (load, one 240x240x160 window, overlap 0.5, save): {t_monai:.2f} s")
    print(f"  medcnncad segment end to end (brain box {box}, window fitted to it): {t_case:.2f} s")
    print(f"  the engine's network alone on the same window: {t_net:.2f} s")
    print(f"  speed-up vs MONAI: {t_monai / t_case:.2f}x; case / network: {t_case / t_net:.2f}")
    print("  stages of the last run (s): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))

def _segresnet_bundle(folder: Path, weights: Path | None = None) -> Path:
    """The model-zoo brain-tumor SegResNet as a MONAI bundle (its inference config's shape).

    ``weights``: a model folder written by ``medcnncad train segmentation`` for a SegResNet of that size
    (manifest + model.pt, softmax outputs); the bundle then takes its network and weights and ends in a
    softmax + arg-max. Without it: random weights, three sigmoid outputs (TC, WT, ET) as the zoo bundle.
    """
    import json
    import shutil

    out = folder / "segresnet-bundle"
    (out / "configs").mkdir(parents=True)
    (out / "models").mkdir()
    torch.manual_seed(0)
    from monai.networks.nets import SegResNet

    if weights is None:
        kwargs, outputs, source = SEGRESNET_KWARGS, {"0": "TC", "1": "WT", "2": "ET"}, "nothing: random weights"
        torch.save(SegResNet(**kwargs).state_dict(), out / "models" / "model.pt")
        post = [{"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
                {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5}]
    else:
        trained = json.loads((weights / "manifest.json").read_text())
        kwargs = trained["network"]["kwargs"]
        outputs = {str(i): c["name"] for i, c in enumerate(trained["postprocessing"]["channels"])}
        source = f"{trained['trained_on']} ({trained['id']})"
        shutil.copy(weights / trained["weights"]["file"], out / "models" / "model.pt")
        post = [{"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]
    meta = {"name": "SegResNet speed bundle", "version": "0.0.1", "data_source": f"{source}, timing only",
            "network_data_format": {
                "inputs": {"image": {"type": "image", "num_channels": 4,
                                     "channel_def": {"0": "T1c", "1": "T1", "2": "T2", "3": "FLAIR"}}},
                "outputs": {"pred": {"type": "image", "num_channels": len(outputs), "channel_def": outputs}}}}
    keys = "image"
    config = {
        "network_def": {"_target_": "SegResNet", **kwargs},
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": keys},
            {"_target_": "EnsureChannelFirstd", "keys": keys},
            {"_target_": "Orientationd", "keys": keys, "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": keys, "pixdim": [1.0, 1.0, 1.0], "mode": "bilinear"},
            {"_target_": "NormalizeIntensityd", "keys": keys, "nonzero": True, "channel_wise": True}]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [240, 240, 160], "sw_batch_size": 1,
                    "overlap": 0.5},
        "postprocessing": {"_target_": "Compose", "transforms": post}}
    (out / "configs" / "metadata.json").write_text(json.dumps(meta))
    (out / "configs" / "inference.json").write_text(json.dumps(config))
    return out


def bench_bundle(repeats: int, weights: Path | None = None) -> None:
    """The zoo SegResNet run *as a MONAI bundle*: MONAI's bundle-default pipeline vs the engine with the
    bundle's own settings and with the policy measured on this machine (crop, window, precision, layout)."""
    import contextlib
    import io
    import json
    import os

    from medcnncad.cli import main
    from medcnncad.inference.machine_policy import cpu_bf16_native, measured_policy
    from medcnncad.io.sample_case import load_sample_case
    from medcnncad.models.registry import load_model

    folder = Path(tempfile.mkdtemp(prefix="medcnncad-bench-bundle-"))
    os.environ["MEDCNNCAD_POLICY_CACHE"] = str(folder / "policy-cache.json")  # a fresh measurement
    images = load_sample_case(brats_size=True)
    bundle = _segresnet_bundle(folder, weights)
    paths = _write_case(images, folder)

    def segment(precision: str, out: str) -> None:
        args = ["segment", "--model", str(bundle), "--device", "cpu", "--precision", precision, "--out",
                str(folder / out)] + [a for n, p in paths.items() for a in ("--input", f"{n}={p}")]
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(args) == 0

    model = load_model(str(bundle))
    start = time.perf_counter()
    decision = measured_policy(model, torch.device("cpu"))
    t_calibrate = time.perf_counter() - start
    network = model.network
    t_monai, _ = _median_time(lambda: _monai_bundle_default(paths, folder / "monai", network, weights is not None),
                              repeats)
    t_own, _ = _median_time(lambda: segment("fp32", "own"), repeats)
    t_measured, _ = _median_time(lambda: segment("measured", "measured"), repeats)
    own = json.loads((folder / "own" / "report.json").read_text())["timings_s"]
    measured = json.loads((folder / "measured" / "report.json").read_text())
    which = f"weights {weights}" if weights else "random weights"
    print(f"zoo SegResNet as a MONAI bundle ({which}), BraTS-size case (4 x 240x240x155 NIfTI), CPU, "
          f"native bf16: {cpu_bf16_native()}, median of {repeats}:")
    print(f"  policy measured on this machine in {t_calibrate:.1f} s: precision {decision.precision}, "
          f"channels_last {decision.channels_last}, crop {decision.crop}")
    for run in decision.runs:
        if run.get("error"):
            print(f"    {run['precision']:>4} cl={run['channels_last']!s:5} crop={run['crop']:<8} "
                  f"not run: {run['error']}")
            continue
        print(f"    {run['precision']:>4} cl={run['channels_last']!s:5} crop={run['crop']:<8} {run['seconds']:6.2f} s  "
              f"Dice>={run['dice_min']:.4f}  max dp {run['max_probability_difference']:.4f}  "
              f"{'ok' if run['ok'] else 'rejected'}")
    print(f"  MONAI bundle-default pipeline (load, one 240x240x160 window, overlap 0.5, activation, save): "
          f"{t_monai:.2f} s")
    print(f"  medcnncad segment, the bundle's own settings (fp32, no crop): {t_own:.2f} s "
          f"({t_monai / t_own:.2f}x MONAI); its inference stage {own['inference']:.2f} s, "
          f"case / network {t_own / own['inference']:.2f}")
    print(f"  medcnncad segment --precision measured: {t_measured:.2f} s ({t_monai / t_measured:.2f}x MONAI); "
          f"stages: " + ", ".join(f"{k} {v:.2f}" for k, v in measured["timings_s"].items()))
    print(f"  report.json execution_policy: {measured['execution_policy']}")


CT_SHAPE_KJI = (600, 512, 512)
CT_SPACING = (0.7, 0.7, 0.8)


def _ct_phantom(shape_kji: tuple[int, int, int] = CT_SHAPE_KJI) -> tuple[sitk.Image, sitk.Image]:
    """A CT-like int16 volume (HU: air, body 40, spine 700, enhancing lesions 240) and its labels (1 body, 2 lesion),
    built slab by slab so no full-size float64 array exists."""
    rng = np.random.default_rng(6)
    k_n, j_n, i_n = shape_kji
    jj, ii = np.mgrid[0:j_n, 0:i_n].astype(np.float32)
    body = ((ii - i_n / 2) / (0.42 * i_n)) ** 2 + ((jj - j_n / 2) / (0.32 * j_n)) ** 2 < 1
    spine = ((ii - i_n / 2) / 18) ** 2 + ((jj - 0.7 * j_n) / 18) ** 2 < 1
    centres = [(rng.uniform(0.2, 0.8) * k_n, rng.uniform(0.35, 0.6) * j_n, rng.uniform(0.3, 0.7) * i_n,
                rng.uniform(6, 25)) for _ in range(6)]
    ct = np.empty(shape_kji, np.int16)
    labels = np.zeros(shape_kji, np.uint8)
    for k in range(k_n):
        lesion = np.zeros((j_n, i_n), bool)
        for ck, cj, ci, r in centres:
            if abs(k - ck) < r:
                rr = np.sqrt(r * r - (k - ck) ** 2)
                lesion |= (ii - ci) ** 2 + (jj - cj) ** 2 < rr * rr
        lesion &= body
        hu = np.where(body, 40.0, -1000.0) + np.where(spine & body, 660.0, 0.0) + np.where(lesion, 200.0, 0.0)
        ct[k] = np.clip(hu + rng.normal(0, 12, hu.shape), -1024, 3000).astype(np.int16)
        labels[k] = np.where(lesion, 2, np.where(body, 1, 0))
    images = []
    for array in (ct, labels):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(CT_SPACING)
        images.append(image)
    return images[0], images[1]


def _ct_model(folder: Path, ct: sitk.Image, labels: sitk.Image) -> Path:
    """A 3-class (background, body, lesion) MONAI UNet trained for a few seconds on crops of the CT phantom
    (a sensible label map, not noise); probabilities held in float16, written as uint8. For benchmarks only."""
    import json

    from medcnncad.models.manifest import sha256_file
    from medcnncad.models.weights import build_network

    kwargs = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [8, 16, 32], "strides": [2, 2],
              "num_res_units": 1}
    raw = {"schema_version": 1, "id": "ct-memory-bench", "version": "0.0.1", "task": "segmentation",
           "name": "CT memory benchmark UNet (trained seconds on a synthetic CT phantom; benchmarks only)",
           "trained_on": "one synthetic CT phantom - benchmarks only",
           "intended_use": "Benchmarks only - not for diagnosis.",
           "inputs": [{"name": "CT", "modality": "CT"}],
           "labels": [{"name": "body", "value": 1, "color": [0, 1, 0]},
                      {"name": "lesion", "value": 2, "color": [1, 0, 0]}],
           "regions": [{"name": "lesion", "labels": [2]}],
           "preprocessing": {"normalization": {"method": "range", "a_min": -1000, "a_max": 1000}},
           "network": {"class": "monai.networks.nets.UNet", "kwargs": kwargs},
           "inference": {"roi_size": [128, 128, 128], "overlap": 0.25, "blend_mode": "gaussian"},
           "postprocessing": {"activation": "softmax", "probability_dtype": "float16", "probability_file": "uint8",
                              "min_lesion_ml": 0.1,
                              "channels": [{"name": "background", "value": 0}, {"name": "body", "value": 1},
                                           {"name": "lesion", "value": 2}]},
           "weights": {"file": "model.pt", "sha256": ""}}
    torch.manual_seed(0)
    net = build_network(raw["network"]["class"], kwargs)
    x_all = sitk.GetArrayViewFromImage(ct)
    y_all = sitk.GetArrayViewFromImage(labels)
    rng = np.random.default_rng(0)
    optimizer = torch.optim.Adam(net.parameters(), 5e-3)
    lesion_voxels = np.argwhere(y_all[::4, ::4, ::4] == 2) * 4
    for step in range(150):
        if step % 2:  # every other crop around a lesion voxel
            centre = lesion_voxels[rng.integers(len(lesion_voxels))]
            k, j, i = (int(np.clip(c - 24, 0, s - 48)) for c, s in zip(centre, x_all.shape))
        else:
            k, j, i = (int(rng.integers(0, s - 48)) for s in x_all.shape)
        x = torch.from_numpy((np.clip(x_all[k:k + 48, j:j + 48, i:i + 48].astype(np.float32), -1000, 1000) + 1000)
                             / 2000).permute(2, 1, 0)[None, None]
        y = torch.from_numpy(y_all[k:k + 48, j:j + 48, i:i + 48].astype(np.int64)).permute(2, 1, 0)[None]
        loss = torch.nn.functional.cross_entropy(net(x), y, weight=torch.tensor([1.0, 1.0, 2.0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    out = folder / raw["id"]
    out.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out / "model.pt")
    raw["weights"]["sha256"] = sha256_file(out / "model.pt")
    (out / "manifest.json").write_text(json.dumps(raw, indent=1))
    return out


def _peak_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: kB


def _memory_engine(folder: Path, with_reference: bool) -> None:
    """Child process: ``medcnncad segment`` on the CT end to end (with ``--reference``: plus metrics)."""
    import contextlib
    import io
    import json

    from medcnncad.cli import main as cli

    out = folder / ("engine-ref" if with_reference else "engine")
    args = ["segment", "--model", str(folder / "ct-memory-bench"), "--device", "cpu", "--precision", "manifest",
            "--input", f"CT={folder / 'ct.nii.gz'}", "--out", str(out)]
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli(args + (["--reference", str(folder / "labels.nii.gz")] if with_reference else []))
    report = json.loads((out / "report.json").read_text())
    print(json.dumps({"exit": code, "seconds": time.perf_counter() - t0, "peak_rss_gib": _peak_rss_gib(),
                      "timings": report["timings_s"], "lesions": len(report["lesions"]),
                      "dice": {k: v.get("dice") for k, v in report.get("metrics", {}).items()}}))


def _memory_monai(folder: Path) -> None:
    """Child process: the plain MONAI pipeline (load, scale, sliding_window_inference, softmax, argmax, save
    labels and float32 probabilities); prints peak RSS."""
    import json

    from monai.inferers import sliding_window_inference
    from monai.transforms import EnsureChannelFirst, LoadImage, SaveImage, ScaleIntensityRange

    from medcnncad.models.registry import load_model

    t0 = time.perf_counter()
    network = load_model(str(folder / "ct-memory-bench")).network.eval()
    image = EnsureChannelFirst()(LoadImage()(str(folder / "ct.nii.gz")))
    image = ScaleIntensityRange(-1000, 1000, 0.0, 1.0, clip=True)(image)
    with torch.inference_mode():
        logits = sliding_window_inference(image[None], (128, 128, 128), 1, network, overlap=0.25, mode="gaussian")[0]
        probs = torch.softmax(logits, 0)
        del logits
        labels = torch.argmax(probs, 0, keepdim=True).to(torch.uint8)
    SaveImage(output_dir=str(folder / "monai"), output_postfix="labels", separate_folder=False,
              print_log=False)(labels)
    SaveImage(output_dir=str(folder / "monai"), output_postfix="probs", separate_folder=False,
              print_log=False)(probs[1:])
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_gib": _peak_rss_gib()}))


def bench_memory() -> None:
    """Peak RSS of a 512 x 512 x 600 CT through a 3-class model: engine end to end vs plain MONAI."""
    import json
    import subprocess

    from medcnncad.io.images import write_image

    folder = Path(tempfile.mkdtemp(prefix="medcnncad-ct-"))
    ct, labels = _ct_phantom()
    write_image(ct, folder / "ct.nii.gz")
    write_image(labels, folder / "labels.nii.gz")
    _ct_model(folder, ct, labels)
    del ct, labels
    runs = {}
    for what in ("engine", "engine-ref", "monai"):
        done = subprocess.run([sys.executable, __file__, f"_memory-{what}", "--folder", str(folder)],
                              capture_output=True, text=True, check=True)
        runs[what] = json.loads(done.stdout.strip().splitlines()[-1])
    e, r, m = runs["engine"], runs["engine-ref"], runs["monai"]
    print(f"CT {CT_SHAPE_KJI[2]}x{CT_SHAPE_KJI[1]}x{CT_SHAPE_KJI[0]} int16 (.nii.gz), 3-class MONAI UNet, "
          f"128^3 windows, overlap 0.25, CPU; each in a fresh process (peak RSS includes torch + MONAI imports):")
    print(f"  plain MONAI (LoadImage, sliding_window_inference, softmax, argmax, SaveImage labels + float32 "
          f"probabilities): peak RSS {m['peak_rss_gib']:.2f} GiB, {m['seconds']:.1f} s")
    print(f"  medcnncad segment end to end (streamed stitching, float16 probabilities, uint8 files, lesions, "
          f"overlay, seg.nrrd): peak RSS {e['peak_rss_gib']:.2f} GiB, {e['seconds']:.1f} s, exit {e['exit']}")
    print("    stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in e["timings"].items()))
    print(f"  the same with --reference (adds every metric, distance maps over the body's box): "
          f"peak RSS {r['peak_rss_gib']:.2f} GiB, {r['seconds']:.1f} s")
    print(f"  bench model (trained seconds, not the point): {e['lesions']} components; Dice {r['dice']}")


def bench_worker(repeats: int) -> None:
    """The persistent worker (Slicer module's path): first case, then later cases vs the network alone."""
    from medcnncad.data.phantom import make_phantom, write_phantom
    from medcnncad.inference.segmenter import Segmenter
    from medcnncad.models.registry import describe_model, load_model
    from medcnncad.slicer.worker import WorkerClient, load_result

    folder = Path(tempfile.mkdtemp(prefix="medcnncad-worker-"))
    case = make_phantom(900_000)
    paths = write_phantom(case, folder / "case")
    request = {"cmd": "segment", "model": "brats-demo-unet", "device": "cpu", "precision": "manifest",
               "inputs": {name: str(paths[name]) for name in case.images}, "out": str(folder / "out")}
    manifest = describe_model("brats-demo-unet")
    client = WorkerClient()
    times = []
    try:
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            load_result(Path(client.run(dict(request))), manifest)
            times.append(time.perf_counter() - t0)
    finally:
        client.close()
    segmenter = Segmenter(load_model("brats-demo-unet"), "cpu")
    t_net, _ = _network_time(segmenter, case.images, repeats)
    later = statistics.median(times[1:])
    print(f"persistent worker, demo model, phantom 900000 ({'x'.join(map(str, case.images['T1'].GetSize()))}), "
          f"request -> result loaded in the client:")
    print(f"  first case (worker start, imports, model load): {times[0]:.2f} s")
    print(f"  later cases, median of {repeats}: {later:.2f} s; network alone on the same windows {t_net:.2f} s; "
          f"ratio {later / t_net:.2f}")


def bench_forward(repeats: int) -> None:
    """The zoo-size SegResNet's forward pass on the sample case's brain box (152 x 184 x 160, random weights) in
    fp32, fp32 + channels-last, bf16 autocast and bf16 + channels-last (PyTorch's channels-last GroupNorm, and the
    engine's, which normalises contiguous copies), in one process: what the CPU's native bf16 (and AMX) gives a
    GroupNorm network; the largest output difference from fp32 says why the gate may refuse one."""
    from monai.networks.nets import SegResNet

    from medcnncad.inference.layout import to_channels_last
    from medcnncad.inference.machine_policy import _cpu_flags, cpu_bf16_native

    torch.manual_seed(0)
    network = SegResNet(**SEGRESNET_KWARGS).eval()
    image = torch.randn(1, 4, 152, 184, 160)

    def run(bf16: bool, channels_last: bool, hooks: bool = False) -> tuple[float, torch.Tensor]:
        layout = torch.channels_last_3d if channels_last else torch.contiguous_format
        net = to_channels_last(network, torch.device("cpu")) if hooks else copy.deepcopy(network).to(
            memory_format=layout)
        x = image.contiguous(memory_format=layout)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            net(x)  # warm-up: oneDNN picks and caches its kernels
            seconds, out = _median_time(lambda: net(x), repeats)
        return seconds, out.float()  # type: ignore[union-attr]

    flags = sorted(_cpu_flags() & {"avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx2"})
    print(f"zoo-size SegResNet forward, 4 x 152x184x160 brain box, random weights, CPU flags {flags}, native bf16: "
          f"{cpu_bf16_native()}, median of {repeats}:")
    t_fp32, reference = run(False, False)
    print(f"  fp32: {t_fp32:.2f} s")
    t_bf16, bf16_out = reference, reference
    for bf16, channels_last, hooks in ((False, True, False), (True, False, False), (True, True, False),
                                       (False, True, True), (True, True, True)):
        seconds, out = run(bf16, channels_last, hooks)
        if bf16 and not channels_last:
            t_bf16, bf16_out = seconds, out
        layout = " + channels-last" + (" (the engine's: GroupNorm on contiguous copies)" if hooks else
                                       " (PyTorch's channels-last GroupNorm)") if channels_last else ""
        same = f", largest difference from bf16 {float((out - bf16_out).abs().max()):.4f}, {t_bf16 / seconds:.2f}x " \
               f"bf16" if bf16 and channels_last else ""
        print(f"  {'bf16' if bf16 else 'fp32'}{layout}: {seconds:.2f} s, {t_fp32 / seconds:.2f}x fp32; largest "
              f"output difference from fp32 {float((out - reference).abs().max()):.4f}{same}")


def bench_policy() -> None:
    """fp32 vs channels-last vs bf16 autocast for the demo UNet, with the accuracy gate."""
    from medcnncad.data.phantom import cropped_phantom as small_phantom
    from medcnncad.inference.policy import choose_policy
    from medcnncad.models.registry import load_model

    images, _ = small_phantom()
    report = choose_policy(load_model("brats-demo-unet"), images)
    print("execution policy, demo UNet on a cropped held-out phantom (one run each, same process):")
    for r in report["runs"]:
        print(f"  {r['precision']:>5} channels_last={r['channels_last']!s:<5} {r['seconds']:.2f} s  "
              f"min Dice vs fp32 {r['dice_min']:.4f}  max |dP| {r['max_probability_difference']:.4f}  "
              f"{'ok' if r['ok'] else 'REJECTED'}")
    print(f"  chosen: {report['chosen']}")


def _whole_grid_filter(label_map: np.ndarray, fg: np.ndarray, post, channels, voxel_ml: float) -> np.ndarray:
    """Reference: the 2.4.0 post-processing with scipy labelling and measuring on the whole grid."""
    from scipy import ndimage

    from medcnncad.lesions.lesion_filter import component_features

    out = label_map.copy()
    labelled, count = ndimage.label(out > 0, structure=np.ones((3, 3, 3)))
    index = np.arange(count + 1)
    keep = (np.bincount(labelled.ravel(), minlength=count + 1) * voxel_ml >= post.min_lesion_ml) & \
        (ndimage.maximum(fg, labelled, index) >= post.min_lesion_probability)
    keep[0] = False
    out[~keep[labelled]] = 0
    labelled, count = ndimage.label(out > 0, structure=np.ones((3, 3, 3)))
    x = component_features(labelled, count, out, fg[labelled > 0], voxel_ml, channels)
    keep = np.concatenate([[False], post.lesion_filter.probability(x) >= post.lesion_filter.min_probability])
    out[~keep[labelled]] = 0
    return out


def bench_lesion_filter(repeats: int) -> None:
    """brats-robust-unet's floors + lesion filter, boxed (the engine) vs on the whole grid (scipy)."""
    import dataclasses

    from medcnncad.data.phantom import make_phantom, preset
    from medcnncad.inference.segmenter import Segmenter, remove_small_components
    from medcnncad.lesions.lesion_filter import apply_lesion_filter
    from medcnncad.models.registry import load_model

    loaded = load_model("brats-robust-unet")
    post = loaded.manifest.postprocessing
    raw = dataclasses.replace(post, min_lesion_ml=0.0, min_lesion_probability=0.0, lesion_filter=None,
                              label_volume_floors=(), vessel_filter=None)
    case = make_phantom(900_000, preset("heldout"))
    result = Segmenter(dataclasses.replace(loaded, manifest=dataclasses.replace(loaded.manifest, postprocessing=raw)),
                       "cpu").run(case.images)
    fg = sum(result.probabilities.values()).astype(np.float32)
    voxel_ml = float(np.prod(case.label.GetSpacing())) / 1000
    channels = [(c.name, c.value) for c in post.channels if c.value]

    def engine():
        out = remove_small_components(result.label_map.copy(), post.min_lesion_ml, voxel_ml, lambda m: fg[m],
                                      post.min_lesion_probability)
        return apply_lesion_filter(out, lambda m: fg[m], voxel_ml, channels, post.lesion_filter)

    t_engine, ours = _median_time(engine, repeats)
    t_whole, reference = _median_time(lambda: _whole_grid_filter(result.label_map, fg, post, channels, voxel_ml),
                                      repeats)
    print(f"lesion filter of brats-robust-unet {loaded.manifest.version} (floors + classifier) on heldout phantom "
          f"900000, grid {result.label_map.shape[::-1]}, median of {repeats}:")
    print(f"  engine (components labelled in the occupied box): {t_engine * 1000:.0f} ms")
    print(f"  whole grid (scipy labelling and measuring):       {t_whole * 1000:.0f} ms")
    print(f"  ratio {t_whole / t_engine:.1f}x; label maps equal: {bool(np.array_equal(ours, reference))}")


RETRIEVAL_DIMS = (38, 320)  # radiomics values of the BraTS models, deep values (UNet 16-32-64-128)


def _ann_search(library: np.ndarray, queries: np.ndarray, k: int, repeats: int) -> dict | None:
    """faiss HNSW (M = 32, efSearch = 64) when faiss is installed: build time, median query time, index bytes."""
    try:
        import faiss
    except ImportError:
        return None
    t0 = time.perf_counter()
    index = faiss.IndexHNSWFlat(library.shape[1], 32)
    index.hnsw.efSearch = 64
    index.add(library)
    build = time.perf_counter() - t0
    seconds, found = _median_time(lambda: [index.search(q[None], k)[1][0] for q in queries], repeats)
    return {"build_s": build, "query_ms": 1000 * seconds / len(queries), "rows": np.stack(found),
            "bytes": faiss.serialize_index(index).nbytes}


def bench_retrieval(repeats: int) -> None:
    """Exact numpy search (the shipped index) against faiss HNSW on synthetic descriptors; build time per case."""
    import tracemalloc

    from medcnncad.retrieval.index import ExactIndex, standardise_blocks

    dims = sum(RETRIEVAL_DIMS)
    rng = np.random.default_rng(0)
    print(f"retrieval: {dims} values per lesion (combined: radiomics {RETRIEVAL_DIMS[0]} + deep "
          f"{RETRIEVAL_DIMS[1]}), k = 5, 20 queries, medians of {repeats}")
    for n in (1_000, 100_000, 1_000_000):
        blocks = [rng.normal(size=(n, d)).astype(np.float32) for d in RETRIEVAL_DIMS]
        queries = [rng.normal(size=(20, d)).astype(np.float32) for d in RETRIEVAL_DIMS]
        t0 = time.perf_counter()
        library, q = standardise_blocks(blocks, queries)
        standardise_s = time.perf_counter() - t0
        del blocks
        index = ExactIndex(library)
        tracemalloc.start()
        seconds, found = _median_time(lambda index=index, q=q: [index.search(x[None], 5)[1][0] for x in q], repeats)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        exact = np.stack(found)
        line = (f"  N = {n:>9,}: exact {1000 * seconds / len(q):8.2f} ms/query, vectors {library.nbytes / 2**20:7.1f} "
                f"MiB, query working memory {peak / 2**20:6.1f} MiB, standardising the library {standardise_s:.2f} s")
        ann = _ann_search(library, q, 5, repeats) if n <= 100_000 else None
        if ann is not None:
            recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(exact, ann["rows"])])
            line += (f"\n  {'':13} faiss HNSW {ann['query_ms']:8.2f} ms/query, build {ann['build_s']:.1f} s, index "
                     f"{ann['bytes'] / 2**20:.1f} MiB, recall@5 vs exact {recall:.3f}, "
                     f"speed-up {1000 * seconds / len(q) / ann['query_ms']:.1f}x")
        print(line)
    _bench_retrieval_build(repeats)


def _bench_retrieval_build(repeats: int) -> None:
    """Descriptors of one segmented case (the cropped held-out phantom) and adding it to a library."""
    sys.path.insert(0, str(ROOT / "Testing"))
    from helpers import small_phantom

    from medcnncad.inference.segmenter import Segmenter
    from medcnncad.models.registry import load_model
    from medcnncad.pipeline.case import process_case
    from medcnncad.retrieval.descriptors import case_descriptors
    from medcnncad.retrieval.library import Library

    images, _ = small_phantom()
    for model_id in ("brats-demo-unet", "brats-robust-unet"):
        segmenter = Segmenter(load_model(model_id), device="cpu")
        result = segmenter.run(images, tta=False)
        t_seg, _ = _median_time(lambda s=segmenter: s.run(images, tta=False), max(1, repeats // 2))
        t_desc, described = _median_time(lambda s=segmenter, r=result: case_descriptors(r, s.model, s.device), repeats)
        with tempfile.TemporaryDirectory() as tmp:
            paths = _write_case(images, Path(tmp))
            report = process_case(segmenter, paths, Path(tmp) / "case", tta=False)
            library = Library.create(Path(tmp) / "lib", report["model"], report["retrieval"]["radiomics_names"])
            case = Path(tmp) / "case"
            t_add, _ = _median_time(lambda lib=library, case=case: lib.add_case(case, f"c{len(lib.entries)}"), repeats)
            t_open, _ = _median_time(lambda: Library.open(Path(tmp) / "lib"), repeats)
        print(f"  build, {model_id} on the cropped held-out phantom ({len(described)} lesion(s)): segmentation "
              f"{t_seg:.2f} s (no TTA), descriptors {t_desc:.2f} s (+{100 * t_desc / t_seg:.0f} %), library add "
              f"{1000 * t_add:.1f} ms, opening the {repeats + 0}-case library (checksums) {1000 * t_open:.1f} ms")


def bench_default_case(repeats: int) -> None:
    """The shipped default model on the BraTS-size sample case, as ``medcnncad segment`` runs it (its
    clinical chain, test-time augmentation, descriptors, all outputs), in one process after a first run;
    against its network alone on the same windows and flips. The descriptors are also timed with and
    without the segmentation's network input reused, and with the whole network run per lesion, on the
    same result."""
    from medcnncad.inference.segmenter import Segmenter
    from medcnncad.inference.tta import TTA_FLIPS
    from medcnncad.io.sample_case import load_sample_case
    from medcnncad.models.registry import DEFAULT_MODEL, load_model
    from medcnncad.pipeline.case import process_case
    from medcnncad.retrieval.descriptors import case_descriptors

    folder = Path(tempfile.mkdtemp(prefix="medcnncad-default-"))
    images = load_sample_case(brats_size=True)
    paths = _write_case(images, folder)
    model = load_model(DEFAULT_MODEL)
    segmenter = Segmenter(model, "cpu")
    process_case(segmenter, paths, folder / "warm")
    t_case, report = _median_time(lambda: process_case(segmenter, paths, folder / "out"), repeats)
    flips = TTA_FLIPS if segmenter.manifest.inference.test_time_augmentation else [()]
    t_net, _ = _network_time(segmenter, images, repeats, flips)
    result = segmenter.run(images, keep_network_input=True)
    t_again, described = _median_time(lambda: case_descriptors(result, model, "cpu"), repeats)
    kept, result.network_input = result.network_input, None
    t_own, _ = _median_time(lambda: case_descriptors(result, model, "cpu"), repeats)
    result.network_input = kept
    t_full = _descriptors_with_the_decoder(result, model, repeats)
    t_after, t_during = _descriptors_and_write(result, model, folder, repeats)
    stages = report["timings_s"]  # type: ignore[index]
    print(f"default model {model.manifest.id} {model.manifest.version}, BraTS-size sample case "
          f"(4 x 240x240x155 NIfTI), {len(flips)} test-time-augmentation pass(es), median of {repeats}:")
    print(f"  process_case (as medcnncad segment, model loaded): {t_case:.2f} s; network alone {t_net:.2f} s; "
          f"case / network {t_case / t_net:.2f}")
    print("  stages of the last run (s): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
    print(f"  descriptors of {len(described)} lesions: "  # type: ignore[arg-type]
          f"{t_own:.2f} s preprocessing again, {t_again:.2f} s reusing the network input "
          f"({t_own / t_again:.2f}x); {t_full:.2f} s reusing it but running the whole network per lesion "
          f"(encoder only: {t_full / t_again:.2f}x)")
    print(f"  descriptors then writing: {t_after:.2f} s; descriptors while the volumes compress: {t_during:.2f} s "
          f"({t_after / t_during:.2f}x)")


def bench_default_policy(repeats: int) -> None:
    """What the default precision (``measured``) gives a user of the shipped default model on this machine:
    the one-time calibration (fresh cache), then ``process_case`` on the BraTS-size sample case with the
    model's own fp32 settings and with the measured policy, alternating, and how far their outputs differ."""
    import json
    import os

    from medcnncad.inference.machine_policy import build_segmenter, cpu_bf16_native, measured_policy
    from medcnncad.io.sample_case import load_sample_case
    from medcnncad.metrics.segmentation import dice_per_label
    from medcnncad.models.registry import DEFAULT_MODEL, load_model
    from medcnncad.pipeline.case import process_case

    folder = Path(tempfile.mkdtemp(prefix="medcnncad-default-policy-"))
    os.environ["MEDCNNCAD_POLICY_CACHE"] = str(folder / "policy-cache.json")  # a fresh measurement
    paths = _write_case(load_sample_case(brats_size=True), folder)
    model = load_model(DEFAULT_MODEL)
    start = time.perf_counter()
    decision = measured_policy(model, torch.device("cpu"))
    t_calibrate = time.perf_counter() - start
    runs = {name: build_segmenter(model, "cpu", name) for name in ("manifest", "measured")}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for name, segmenter in runs.items():  # a first run each, not timed
        process_case(segmenter, paths, folder / f"warm-{name}")
    for _ in range(repeats):
        for name, segmenter in runs.items():
            t0 = time.perf_counter()
            process_case(segmenter, paths, folder / name)
            times[name].append(time.perf_counter() - t0)
    t = {name: statistics.median(v) for name, v in times.items()}
    labels = {name: sitk.GetArrayFromImage(sitk.ReadImage(str(folder / name / "labels.nii.gz"))) for name in runs}
    dice = dice_per_label(labels["measured"], labels["manifest"], [lab.value for lab in model.manifest.labels])
    report = json.loads((folder / "measured" / "report.json").read_text())
    print(f"default model {model.manifest.id} {model.manifest.version}, BraTS-size sample case, CPU native bf16: "
          f"{cpu_bf16_native()}, median of {repeats} alternating runs:")
    print(f"  calibration (once per machine and model): {t_calibrate:.1f} s; chose precision {decision.precision}, "
          f"channels_last {decision.channels_last}, crop {decision.crop}")
    for run in decision.runs:
        print(f"    {run['precision']:>4} cl={run['channels_last']!s:5} {run['seconds']:6.2f} s  "
              f"Dice>={run['dice_min']:.4f}  max dp {run['max_probability_difference']:.4f}  "
              f"{'ok' if run['ok'] else 'rejected'}")
    print(f"  process_case, the manifest's fp32: {t['manifest']:.2f} s; the measured default: {t['measured']:.2f} s "
          f"({t['manifest'] / t['measured']:.2f}x); label Dice measured vs fp32: "
          + ", ".join(f"{k} {v:.4f}" for k, v in dice.items()))
    print("  stages of the measured run (s): " + ", ".join(f"{k} {v:.2f}" for k, v in report["timings_s"].items()))


def bench_freed_memory(repeats: int) -> None:
    """``process_case`` of the shipped default model (its measured policy) on the BraTS-size sample case in fresh
    processes, alternating: glibc as it is (``MEDCNNCAD_KEEP_FREED_MEMORY=0``) and the freed memory kept in the
    process (what the ``medcnncad`` command does); each process runs one untimed case, then ``repeats`` timed ones
    with a 3 s pause before each (a user's cases do not follow each other within milliseconds)."""
    import json
    import os
    import subprocess

    from medcnncad.inference.machine_policy import measured_policy
    from medcnncad.io.sample_case import load_sample_case
    from medcnncad.models.registry import DEFAULT_MODEL, load_model

    folder = Path(tempfile.mkdtemp(prefix="medcnncad-freed-"))
    _write_case(load_sample_case(brats_size=True), folder)
    measured_policy(load_model(DEFAULT_MODEL), torch.device("cpu"))  # decided once, before the timed processes
    runs: dict[str, list[dict]] = {"given back": [], "kept": []}
    for _ in range(2):
        for name, flag in (("given back", "0"), ("kept", "1")):
            done = subprocess.run([sys.executable, __file__, "_freed-memory-case", "--folder", str(folder),
                                   "--repeats", str(repeats)], capture_output=True, text=True, check=True,
                                  env={**os.environ, "MEDCNNCAD_KEEP_FREED_MEMORY": flag})
            runs[name] += json.loads(done.stdout.strip().splitlines()[-1])
    print(f"default model {DEFAULT_MODEL}, BraTS-size sample case, process_case with the measured policy; "
          f"{len(runs['kept'])} timed cases each, in 2 alternating fresh processes per setting:")
    medians = {}
    for name, cases in runs.items():
        medians[name] = statistics.median(c["seconds"] for c in cases)
        stages = {k: statistics.median(c["timings"].get(k, 0.0) for c in cases) for k in cases[0]["timings"]}
        spread = (min(c["seconds"] for c in cases), max(c["seconds"] for c in cases))
        print(f"  freed memory {name:10}: case {medians[name]:.2f} s (range {spread[0]:.2f}-{spread[1]:.2f}), "
              f"minor page faults per case {statistics.median(c['minor_faults'] for c in cases):,.0f}; "
              f"case / network {statistics.median(c['seconds'] / c['timings']['inference'] for c in cases):.2f}")
        print("    median stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items() if v >= 0.005))
    print(f"  kept / given back: {medians['given back'] / medians['kept']:.2f}x faster")


def _freed_memory_case(folder: Path, repeats: int) -> None:
    """Child of :func:`bench_freed_memory`: JSON list of each timed case's seconds, stages and minor faults."""
    import json
    import resource

    from medcnncad.inference.machine_policy import build_segmenter
    from medcnncad.models.registry import DEFAULT_MODEL, load_model
    from medcnncad.pipeline.case import process_case

    paths = {p.name[:-len(".nii.gz")]: str(p) for p in sorted(folder.glob("*.nii.gz"))}
    segmenter = build_segmenter(load_model(DEFAULT_MODEL), "cpu", "measured")
    process_case(segmenter, paths, folder / "warm")
    cases = []
    for index in range(repeats):
        time.sleep(3.0)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        report = process_case(segmenter, paths, folder / f"out-{index}")
        cases.append({"seconds": time.perf_counter() - t0, "timings": report["timings_s"],
                      "minor_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults})
    print(json.dumps(cases))


def _descriptors_and_write(result, model, folder: Path, repeats: int) -> tuple[float, float]:
    """Median times of the descriptors followed by writing every output, and of the writer computing the
    descriptors itself while its threads compress the volumes (what ``process_case`` does)."""
    from medcnncad.reporting.case_outputs import write_case_outputs
    from medcnncad.retrieval.descriptors import case_descriptors

    def after() -> None:
        write_case_outputs(result, folder / "after", descriptors=case_descriptors(result, model, "cpu"))

    def during() -> None:
        write_case_outputs(result, folder / "during", descriptors=lambda: case_descriptors(result, model, "cpu"))

    return _median_time(after, repeats)[0], _median_time(during, repeats)[0]


def _descriptors_with_the_decoder(result, model, repeats: int) -> float:
    """Median time of the descriptors when each lesion's window runs through the whole network (the
    descriptors' forward pass normally stops after the encoder)."""
    import medcnncad.retrieval.descriptors as descriptors

    stop = descriptors._stop_forward
    descriptors._stop_forward = lambda *_: None
    try:
        return _median_time(lambda: descriptors.case_descriptors(result, model, "cpu"), repeats)[0]
    finally:
        descriptors._stop_forward = stop


def bench_mixture(repeats: int) -> None:
    """The core refinement's mixture fit: scikit-learn's ``GaussianMixture`` (fit + ``predict_proba``) against
    ``inference.gaussian_mixture`` (same algorithm, component-major arrays), alternating, on the features the
    shipped default model's refinement clusters on the BraTS-size sample case, and on 200,000 voxels (the
    manifest's fitting cap) of four correlated features; and the largest posterior difference."""
    from sklearn.mixture import GaussianMixture

    import medcnncad.inference.refine as refine
    from medcnncad.inference.gaussian_mixture import fit_full_mixture, posterior
    from medcnncad.inference.segmenter import Segmenter
    from medcnncad.io.sample_case import load_sample_case
    from medcnncad.models.registry import DEFAULT_MODEL, load_model

    seen: list[np.ndarray] = []
    clustering = refine.cluster_vote
    refine.cluster_vote = lambda features, *rest: seen.append(features) or clustering(features, *rest)
    try:
        Segmenter(load_model(DEFAULT_MODEL), "cpu").run(load_sample_case(brats_size=True))
    finally:
        refine.cluster_vote = clustering
    rng = np.random.default_rng(0)
    cap = rng.normal(size=(200_000, 4)) @ rng.normal(size=(4, 4)) + np.repeat(rng.normal(0, 2, (4, 4)), 50_000, 0)
    print(f"core refinement's mixture fit (4 components, full covariances), median of {repeats} alternating runs:")
    for name, features in (("BraTS-size sample case", seen[0] if seen else None), ("200,000 voxels", cap)):
        if features is None:
            print(f"  {name}: the refinement did not run")
            continue
        times: dict[str, list[float]] = {"scikit-learn": [], "engine": []}
        for _ in range(repeats):
            t0 = time.perf_counter()
            mixture = GaussianMixture(4, covariance_type="full", reg_covar=1e-3, random_state=0).fit(features)
            reference = mixture.predict_proba(features)
            t1 = time.perf_counter()
            ours = posterior(fit_full_mixture(features, 4, reg_covar=1e-3, seed=0), features)
            times["scikit-learn"].append(t1 - t0)
            times["engine"].append(time.perf_counter() - t1)
        t = {k: statistics.median(v) for k, v in times.items()}
        print(f"  {name} ({len(features)} x {features.shape[1]}, {mixture.n_iter_} EM iterations): scikit-learn "
              f"{t['scikit-learn']:.3f} s, engine {t['engine']:.3f} s ({t['scikit-learn'] / t['engine']:.2f}x); "
              f"largest posterior difference {np.abs(ours.T - reference).max():.1e}")


def bench_resident(repeats: int) -> None:
    """The GPU-resident case against the host-held one (demo model, BraTS-size sample case) on this machine's
    device (CUDA when present, else the CPU), per stage; and the resampling back alone, torch vs SimpleITK."""
    from medcnncad.inference.resample import to_input_grid, to_input_grid_torch
    from medcnncad.inference.segmenter import Segmenter, resolve_device
    from medcnncad.io.sample_case import load_sample_case
    from medcnncad.models.preprocessing import to_metatensor
    from medcnncad.models.registry import load_model

    device = resolve_device("auto")
    images = load_sample_case(brats_size=True)
    model = load_model("brats-demo-unet")
    stages = {}
    for resident in (False, True):
        engine = Segmenter(model, str(device), resident=resident)
        engine.run(images)  # warm-up
        runs = [engine.run(images).timings for _ in range(repeats)]
        stages[resident] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    for resident, label in ((False, "held on the host"), (True, "resident")):
        print(f"{device}, {label}: " + ", ".join(f"{k} {v:.3f}" for k, v in stages[resident].items()) +
              f"; total {sum(stages[resident].values()):.3f} s")
    engine = Segmenter(model, str(device))
    pre = engine.model.preprocess(to_metatensor([images[c.name] for c in engine.manifest.inputs]))
    probs = engine._infer(pre.as_tensor().to(device), lambda s, f: None, [])
    affine = torch.as_tensor(pre.affine, dtype=torch.float64)
    reference = images[engine.manifest.inputs[0].name]
    t_itk, expected = _median_time(lambda: to_input_grid(engine.manifest, probs.cpu(), affine, reference), repeats)
    on = probs.to(device)

    def torch_back() -> np.ndarray:
        return to_input_grid_torch(engine.manifest, on, affine, reference).cpu().numpy()

    t_torch, got = _median_time(torch_back, repeats)
    print(f"resampling back {tuple(probs.shape)} -> {reference.GetSize()}: SimpleITK (CPU) {t_itk:.3f} s, torch on "
          f"{device} {t_torch:.3f} s ({t_itk / t_torch:.2f}x); max |difference| {np.abs(got - expected).max():.2e}")


def _registration_pairs() -> list[tuple[str, sitk.Image, sitk.Image]]:
    """(name, fixed, moving): the BraTS-size sample case's T2 re-acquired as 5 mm slices through a 3 deg / 4 mm motion,
    onto its T1; and, where ../shared/realdata is present, the clinical scan ReMIND-022's T2 SPACE onto its T1c."""
    from medcnncad.data.acquisition import reacquire
    from medcnncad.io.images import read_volume
    from medcnncad.io.sample_case import load_sample_case

    images = load_sample_case(brats_size=True)
    pairs = [("sample case, T2 at 5 mm onto T1", images["T1"],
              reacquire(images["T2"], 5.0, 1.0, (0.0, 2.0, 3.0), (4.0, -2.0, 1.0)))]
    remind = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "ReMIND-022"
    if remind.is_dir():
        pairs.append(("ReMIND-022 (clinical, skull on), T2 SPACE onto T1c",
                      read_volume(str(remind / "3DAXT1postcontrast_MRI")),
                      read_volume(str(remind / "3DAXT2SPACE_MRI"))))
    return pairs


def _euler_parameters(transform: sitk.Transform) -> np.ndarray:
    """The rigid parameters of a registration's transform (a composite's first transform)."""
    inner = transform.GetNthTransform(0) if hasattr(transform, "GetNthTransform") else transform
    return np.array(inner.GetParameters())


def bench_registration(repeats: int) -> None:
    """The clinical chain's registration of one sequence when every try runs (the first one weak, as on the clinical
    scan ReMIND-022): the tries one after another, each making its own mask, edges and figures (as before), against
    ``register_sequence`` (the figures made once per pair, the other tries side by side on this process's cores);
    the chosen transform must be the same to the bit."""
    from medcnncad.preprocessing import chain
    from medcnncad.preprocessing.registration import register_rigid

    plan = [("identity", "mattes"), *chain.REGISTRATION_TRIES]
    chain.GRADIENT_TRY_MIN_QUALITY = 1.0  # no try reaches it: every try runs and competes, on every pair
    print(f"registration, every try run ({len(plan)} tries), {chain.registration_workers()} cores, "
          f"median of {repeats} alternating runs:")
    for name, fixed, moving in _registration_pairs():
        times: dict[str, list[float]] = {"before": [], "now": []}
        for _ in range(repeats):
            t0 = time.perf_counter()
            alone = [register_rigid(fixed, moving, initialiser=s, metric=m, min_gradient_correlation=-2.0)
                     for s, m in plan]
            times["before"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            chosen, how = chain.register_sequence(fixed, moving, 0.25)
            times["now"].append(time.perf_counter() - t0)
        same = any(np.array_equal(_euler_parameters(chosen.transform), _euler_parameters(r.transform))
                   and r.gradient_correlation_after == chosen.gradient_correlation_after for r in alone)
        before, now = statistics.median(times["before"]), statistics.median(times["now"])
        print(f"  {name}: one after another {before:.1f} s, register_sequence {now:.1f} s ({before / now:.2f}x); "
              f"chosen: {how}, quality {chosen.gradient_correlation_after:.3f}, the same transform as its try alone: "
              f"{same}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["metrics", "case", "segresnet", "bundle", "policy", "memory", "worker", "all",
                                         "lesion-filter", "retrieval", "segresnet-template", "default-case", "resident",
                                         "default-policy", "freed-memory", "forward", "mixture", "registration",
                                         "_freed-memory-case",
                                         "_memory-engine", "_memory-engine-ref", "_memory-monai"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="segresnet-template: where to write the training template")
    parser.add_argument("--weights", type=Path, help="bundle: a trained zoo-size SegResNet model folder "
                        "(medcnncad train segmentation) instead of random weights")
    args = parser.parse_args()
    if not args.what.startswith("_memory-"):  # as the medcnncad command does; the peak-memory children compare
        from medcnncad.inference.freed_memory import keep_freed_memory  # glibc's default, like for like

        keep_freed_memory()
    if args.what == "_freed-memory-case":
        _freed_memory_case(args.folder, args.repeats)
        return
    if args.what.startswith("_memory-"):  # child processes of bench_memory
        if args.what == "_memory-monai":
            _memory_monai(args.folder)
        else:
            _memory_engine(args.folder, with_reference=args.what.endswith("-ref"))
        return
    if args.what == "segresnet-template":
        write_segresnet_template(args.out)
        return
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"Python {platform.python_version()}")
    if args.what in ("metrics", "all"):
        bench_metrics(args.repeats)
    if args.what in ("case", "all"):
        bench_case(max(1, args.repeats // 2 + 1))
    if args.what in ("lesion-filter", "all"):
        bench_lesion_filter(args.repeats)
    if args.what in ("policy", "all"):
        bench_policy()
    if args.what in ("worker", "all"):
        bench_worker(max(1, args.repeats // 2 + 1))
    if args.what in ("memory", "all"):
        bench_memory()
    if args.what in ("retrieval", "all"):
        bench_retrieval(args.repeats)
    if args.what in ("segresnet", "all"):
        bench_segresnet(max(1, args.repeats // 2))
    if args.what in ("default-case", "all"):
        bench_default_case(max(1, args.repeats // 2))
    if args.what in ("default-policy", "all"):
        bench_default_policy(max(1, args.repeats // 2))
    if args.what in ("freed-memory", "all"):
        bench_freed_memory(max(1, args.repeats // 2))
    if args.what in ("resident", "all"):
        bench_resident(max(1, args.repeats // 2))
    if args.what in ("bundle", "all"):
        bench_bundle(max(1, args.repeats // 2), args.weights)
    if args.what in ("mixture", "all"):
        bench_mixture(args.repeats)
    if args.what in ("registration", "all"):
        bench_registration(max(1, args.repeats // 2))
    if args.what in ("forward", "all"):
        bench_forward(max(3, args.repeats // 2))  # fewer single passes have given 0.7x where three gave 1.7x


if __name__ == "__main__":
    main()
