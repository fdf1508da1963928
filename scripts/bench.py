"""Benchmarks (not tests): each comparison runs side by side in one process, repeated; medians and
ratios are printed. ``make bench`` runs all; results are tabled in docs/performance.md.

    python scripts/bench.py metrics [--repeats 5]
    python scripts/bench.py case [--repeats 3]
    python scripts/bench.py segresnet [--repeats 3]
    python scripts/bench.py policy
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MedCNNCAD"))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402


def _median_time(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def _brats_size_labels() -> tuple[np.ndarray, np.ndarray]:
    """A held-out phantom's label map on a 240 x 240 x 155 grid, and a plausible 'prediction'."""
    from scipy import ndimage

    from medcnncad.phantom import make_phantom

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

    from medcnncad.metrics import compute_metrics

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
    from medcnncad.inference import Segmenter
    from medcnncad.models import load_model
    from medcnncad.phantom import make_phantom, write_phantom

    folder = Path(tempfile.mkdtemp(prefix="medcnncad-bench-"))
    case = make_phantom(900_000)
    paths = write_phantom(case, folder / "case")
    args = ["segment", "--model", "demo", "--device", "cpu", "--out", str(folder / "out"),
            "--reference", str(paths["label"])]
    for name in case.images:
        args += ["--input", f"{name}={paths[name]}"]
    segmenter = Segmenter(load_model("demo"), "cpu")
    pre = segmenter.model.preprocess(__import__("medcnncad.preprocess", fromlist=["x"]).to_metatensor(
        [case.images[c.name] for c in segmenter.manifest.inputs]))
    warnings: list[str] = []
    t_net, _ = _median_time(lambda: segmenter._infer(pre.as_tensor(), lambda s, f: None, warnings), repeats)
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

    from medcnncad.manifest import sha256_file
    from medcnncad.models import build_network

    raw = json.loads((ROOT / "Resources" / "ModelTemplates" / "brats-demo-unet.json").read_text())
    raw.update(id=f"segresnet-speed-{fit_roi}", aliases=[], trained_on="nothing: random weights, for timing only")
    raw["network"] = {"class": "monai.networks.nets.SegResNet", "kwargs": SEGRESNET_KWARGS}
    raw["preprocessing"]["spacing_mm"] = [1.0, 1.0, 1.0]
    raw["preprocessing"]["crop_foreground"] = {"enabled": True, "margin_vox": 0}
    raw["inference"] = {"roi_size": [240, 240, 160], "overlap": 0.5, "blend_mode": "constant", "fit_roi": fit_roi}
    raw["postprocessing"] = {"activation": "sigmoid", "channels": [{"name": "WT", "value": 2},
                                                                   {"name": "TC", "value": 1},
                                                                   {"name": "ET", "value": 4}]}
    raw["regions"] = []
    out = folder / raw["id"]
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(build_network(raw["network"]["class"], SEGRESNET_KWARGS).state_dict(), out / "model.pt")
    raw["weights"] = {"file": "model.pt", "sha256": sha256_file(out / "model.pt")}
    (out / "manifest.json").write_text(json.dumps(raw))
    return out


def _monai_bundle_default(paths: dict[str, str], out: Path, network: torch.nn.Module) -> None:
    """The model-zoo bundle's own pipeline: fp32, one 240x240x160 window, overlap 0.5, then save."""
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import (Activations, AsDiscrete, Compose, ConcatItemsd, EnsureChannelFirstd, LoadImaged,
                                  NormalizeIntensityd, Orientationd, SaveImage, Spacingd)

    keys = list(paths)
    pre = Compose([LoadImaged(keys), EnsureChannelFirstd(keys), ConcatItemsd(keys, "image"),
                   Orientationd("image", "RAS"), Spacingd("image", (1.0, 1.0, 1.0)),
                   NormalizeIntensityd("image", nonzero=True, channel_wise=True)])
    data = pre(dict(paths))
    inferer = SlidingWindowInferer(roi_size=(240, 240, 160), sw_batch_size=1, overlap=0.5)
    with torch.inference_mode():
        logits = inferer(data["image"][None], network)[0]
    pred = AsDiscrete(threshold=0.5)(Activations(sigmoid=True)(logits))
    SaveImage(output_dir=str(out), output_postfix="seg", separate_folder=False, print_log=False)(pred)


def bench_segresnet(repeats: int) -> None:
    """Engine vs MONAI's bundle-default pipeline for a BraTS-size case and the model-zoo SegResNet size."""
    import contextlib
    import io
    import json

    from medcnncad.cli import main
    from medcnncad.inference import Segmenter
    from medcnncad.models import load_model
    from medcnncad.preprocess import to_metatensor

    sys.path.insert(0, str(ROOT / "scripts"))
    from gpu_check import _brats_size_case

    folder = Path(tempfile.mkdtemp(prefix="medcnncad-bench-"))
    images = _brats_size_case()
    paths = {}
    for name, img in images.items():
        paths[name] = str(folder / f"{name}.nii.gz")
        sitk.WriteImage(img, paths[name])
    model = _segresnet_model(folder, fit_roi=8)
    args = ["segment", "--model", str(model), "--device", "cpu", "--out", str(folder / "out")]
    for name in images:
        args += ["--input", f"{name}={paths[name]}"]
    segmenter = Segmenter(load_model(str(model)), "cpu")
    pre = segmenter.model.preprocess(to_metatensor([images[c.name] for c in segmenter.manifest.inputs]))
    t_net, _ = _median_time(lambda: segmenter._infer(pre.as_tensor(), lambda s, f: None, []), repeats)
    with contextlib.redirect_stdout(io.StringIO()):
        t_case, _ = _median_time(lambda: main(args), repeats)
    stages = json.loads((folder / "out" / "report.json").read_text())["timings_s"]
    network = load_model(str(model)).network
    t_monai, _ = _median_time(lambda: _monai_bundle_default(paths, folder / "monai", network), repeats)
    print(f"BraTS-size case (4 x 240x240x155 NIfTI), SegResNet init_filters 16, blocks_down 1,2,2,4 "
          f"(random weights), CPU fp32, median of {repeats}:")
    print(f"  MONAI bundle-default pipeline (load, one 240x240x160 window, overlap 0.5, save): {t_monai:.2f} s")
    print(f"  medcnncad segment end to end (brain box {tuple(pre.shape[1:])}, window fitted to it): {t_case:.2f} s")
    print(f"  the engine's network alone on the same window: {t_net:.2f} s")
    print(f"  speed-up vs MONAI: {t_monai / t_case:.2f}x; case / network: {t_case / t_net:.2f}")
    print("  stages of the last run (s): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))


def bench_policy() -> None:
    """fp32 vs channels-last vs bf16 autocast for the demo UNet, with the accuracy gate."""
    sys.path.insert(0, str(ROOT / "Testing"))
    from helpers import small_phantom

    from medcnncad.models import load_model
    from medcnncad.policy import choose_policy

    images, _ = small_phantom()
    report = choose_policy(load_model("brats-demo-unet"), images)
    print("execution policy, demo UNet on a cropped held-out phantom (one run each, same process):")
    for r in report["runs"]:
        print(f"  {r['precision']:>5} channels_last={r['channels_last']!s:<5} {r['seconds']:.2f} s  "
              f"min Dice vs fp32 {r['dice_min']:.4f}  max |dP| {r['max_probability_difference']:.4f}  "
              f"{'ok' if r['ok'] else 'REJECTED'}")
    print(f"  chosen: {report['chosen']}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["metrics", "case", "segresnet", "policy", "all"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"Python {platform.python_version()}")
    if args.what in ("metrics", "all"):
        bench_metrics(args.repeats)
    if args.what in ("case", "all"):
        bench_case(max(1, args.repeats // 2 + 1))
    if args.what in ("policy", "all"):
        bench_policy()
    if args.what in ("segresnet", "all"):
        bench_segresnet(max(1, args.repeats // 2))


if __name__ == "__main__":
    main()
