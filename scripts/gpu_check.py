"""Every GPU check in one run (called by Testing/gpu/check.sh): agreement, speed, throughput, memory.

On a CUDA machine: the demo model segments the shipped held-out sample phantom resampled to
BraTS size (4 x 240 x 240 x 155, 1 mm) on the CPU (fp32, the reference) and on the GPU (the
engine's execution policy: fp16 autocast, stitching on the GPU); per-label Dice between the two
label maps must be >= 0.99. Then the GPU's per-case time (in memory and end to end with files),
cases per second over a batch in one process, peak GPU memory, and the network time of a model-
zoo-size SegResNet (init_filters 16, blocks_down 1,2,2,4; random weights: speed only) eager vs
channels-last vs torch.compile. Per-stage times (median over the repeats, each stage timed after
``torch.cuda.synchronize``) of the GPU-resident case (the default on CUDA: preprocessing, stitching and
resampling back on the GPU; ``medcnncad.inference.resident``) and of the same engine with the case held on
the host between stages, with their agreement. The shipped model (brats-robust-unet, manifest defaults: flip TTA,
core refinement) gets the same agreement check and its per-case time. Prints one line per check and
writes ``gpu_check.json`` to ``--out`` after each check, so a run stopped by its time limit still
leaves what it measured.

``--device cpu`` runs the same code on the CPU (a dry run that keeps this script working
where no GPU is present; its numbers are not GPU numbers).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from medcnncad.io.sample_case import load_sample_case
from medcnncad.metrics.segmentation import dice_per_label


def _agreement(name: str, images: dict, device: str) -> tuple[dict, object]:
    """Model ``name`` on ``images`` (its manifest's defaults, test-time augmentation included): CPU fp32
    (the reference) vs ``device`` with the engine's execution policy. Returns the agreement record and
    the device's Segmenter."""
    from medcnncad.inference.segmenter import Segmenter
    from medcnncad.models.registry import load_model

    start = time.perf_counter()
    reference = Segmenter(load_model(name), "cpu", precision="fp32").run(images)
    cpu_s = time.perf_counter() - start
    engine = Segmenter(load_model(name), device)
    result = engine.run(images)
    dice = dice_per_label(reference.label_map, result.label_map, (1, 2, 4))
    diff = max(float(np.abs(result.probabilities[k].astype(np.float32) - reference.probabilities[k]).max())
               for k in result.probabilities)
    record = {"model": f"{name} {engine.manifest.version}", "dice_vs_cpu_fp32": dice, "min_dice": min(dice.values()),
              "max_probability_difference": diff, "precision": engine.precision, "tta_passes": result.tta_passes,
              "cpu_fp32_reference_s": cpu_s, "passes": min(dice.values()) >= 0.99,
              "meets_target_0999": min(dice.values()) >= 0.999,
              "labels_differing": int(np.count_nonzero(reference.label_map != result.label_map))}
    print(f"agreement {name} {device} vs CPU fp32 ({result.tta_passes} pass(es)): Dice {dice} "
          f"(min {min(dice.values()):.4f}), max |dP| {diff:.4f}, {record['labels_differing']} voxels labelled "
          f"differently -> {'PASS' if record['passes'] else 'FAIL'} (gate 0.99); performance issue target 0.999 "
          f"{'met' if record['meets_target_0999'] else 'MISSED'}")
    return record, engine


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: str, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _stage_times(engine, images: dict, device: str, repeats: int) -> tuple[dict[str, float], float]:
    """Median seconds per stage (the result's timings) and per case over ``repeats`` in-memory runs."""
    runs: list[dict[str, float]] = []
    totals = _timed(lambda: runs.append(engine.run(images).timings), device, repeats)
    return {k: statistics.median(r.get(k, 0.0) for r in runs) for k in runs[0]}, statistics.median(totals)


def _resident_vs_host(name: str, images: dict, device: str, repeats: int) -> dict:
    """The resident case against the host-held one: stage times, case time, agreement (labels, probabilities)."""
    from medcnncad.inference.segmenter import Segmenter
    from medcnncad.models.registry import load_model

    model = load_model(name)
    record: dict = {}
    results = {}
    for key, resident in (("resident", True), ("host", False)):
        engine = Segmenter(model, device, resident=resident)
        results[key] = engine.run(images)  # also the warm-up
        record[f"stages_{key}_s"], record[f"per_case_{key}_s"] = _stage_times(engine, images, device, repeats)
    dice = dice_per_label(results["host"].label_map, results["resident"].label_map, (1, 2, 4))
    record["resident_vs_host_min_dice"] = min(dice.values())
    record["resident_vs_host_max_probability_difference"] = max(
        float(np.abs(results["resident"].probabilities[k].astype(np.float32) -
                     results["host"].probabilities[k].astype(np.float32)).max()) for k in results["host"].probabilities)
    record["resident_warnings"] = [w for w in results["resident"].warnings if "out of memory" in w]
    print(f"{name} per stage, resident: {_rounded(record['stages_resident_s'])}, case "
          f"{record['per_case_resident_s']:.3f} s; held on the host: {_rounded(record['stages_host_s'])}, case "
          f"{record['per_case_host_s']:.3f} s; agreement min Dice {record['resident_vs_host_min_dice']:.4f}, max |dP| "
          f"{record['resident_vs_host_max_probability_difference']:.4f}")
    return record


def _preprocessing_steps(name: str, images: dict, device: str) -> list[dict]:
    """The model's preprocessing step by step on the host and on ``device`` (the resident case's input): the
    largest difference after each step, and in how many voxels one side is exactly 0 and the other is not (a
    ``nonzero`` normalisation counts any non-zero value, interpolation residue included, as foreground)."""
    import torch

    from medcnncad.models.preprocessing import build_preprocessing_dict, to_metatensor
    from medcnncad.models.registry import load_model

    manifest = load_model(name).manifest
    ordered = [images[c.name] for c in manifest.inputs]
    host, on_device = to_metatensor(ordered), to_metatensor(ordered, torch.device(device))
    rows = []
    for step in build_preprocessing_dict(manifest.preprocessing).transforms:
        host, on_device = step({"image": host})["image"], step({"image": on_device})["image"]
        a, b = host.as_tensor(), on_device.as_tensor().cpu()
        if a.shape != b.shape:  # e.g. a foreground crop that chose another box: nothing to subtract, and later steps
            rows.append({"step": type(step).__name__, "shapes_differ": [list(a.shape), list(b.shape)]})
            break
        rows.append({"step": type(step).__name__, "max_abs_difference": float((a - b).abs().max()),
                     "zero_on_one_side_only": int(((a == 0) != (b == 0)).sum()), "voxels": a.numel()})
    print(f"{name} preprocessing, host vs {device}: " + ", ".join(
        f"{r['step']} shapes differ {r['shapes_differ']}" if "shapes_differ" in r else
        f"{r['step']} max |d| {r['max_abs_difference']:.2g} ({r['zero_on_one_side_only']} voxels zero on one side)"
        for r in rows))
    return rows


def _rounded(stages: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in stages.items()}


def _segresnet_times(device: str, repeats: int) -> dict[str, float | str]:
    """Median forward time of a model-zoo-size SegResNet on one 4 x 240 x 240 x 160 input."""
    import torch
    from monai.networks.nets import SegResNet

    net = SegResNet(spatial_dims=3, in_channels=4, out_channels=3, init_filters=16, blocks_down=(1, 2, 2, 4),
                    blocks_up=(1, 1, 1)).to(device).eval()
    x = torch.randn(1, 4, 240, 240, 160, device=device)
    dtype = torch.float16 if device == "cuda" else torch.bfloat16
    out: dict[str, float | str] = {}
    with torch.inference_mode():
        out["fp32_s"] = statistics.median(_timed(lambda: net(x), device, repeats))
        with torch.autocast(device, dtype=dtype):
            out["amp_s"] = statistics.median(_timed(lambda: net(x), device, repeats))
            cl_net = net.to(memory_format=torch.channels_last_3d)
            xc = x.contiguous(memory_format=torch.channels_last_3d)
            out["amp_channels_last_s"] = statistics.median(_timed(lambda: cl_net(xc), device, repeats))
    if device == "cuda":
        try:
            compiled = torch.compile(net)
            with torch.inference_mode(), torch.autocast(device, dtype=dtype):
                compiled(x)  # compile once
                out["amp_compiled_s"] = statistics.median(_timed(lambda: compiled(x), device, repeats))
        except Exception as exc:  # noqa: BLE001 - compile support varies; report, do not fail the check
            out["amp_compiled_s"] = f"failed: {type(exc).__name__}: {str(exc)[:120]}"
    return out


def _measured_policy(model, device: str, out: Path) -> dict:
    """The calibration a user's first default run does on this machine (fresh cache under ``out``): what it
    chose, how long it took, and each candidate's seconds and agreement with fp32."""
    import torch

    from medcnncad.inference.machine_policy import measured_policy

    cache = out / "policy-cache.json"
    cache.unlink(missing_ok=True)  # measured now, not read back from an earlier check into the same folder
    start = time.perf_counter()
    decision = measured_policy(model, torch.device(device), cache)
    return {"seconds": round(time.perf_counter() - start, 2), "precision": decision.precision,
            "channels_last": decision.channels_last, "crop": decision.crop, "cached": decision.cached,
            "runs": list(decision.runs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--out", default="gpu_check_out")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8, help="cases in the throughput run")
    parser.add_argument("--skip-segresnet", action="store_true")
    parser.add_argument("--skip-shipped", action="store_true", help="skip the shipped robust model's check")
    args = parser.parse_args(argv)
    from medcnncad.inference.freed_memory import keep_freed_memory

    kept = keep_freed_memory()  # as the medcnncad command's case commands do, before any thread starts
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine (use --device cpu for a dry run)", file=sys.stderr)
        return 3
    from medcnncad.io.images import write_image
    from medcnncad.pipeline.case import process_case

    report: dict = {"device": args.device, "python": platform.python_version(), "torch": torch.__version__,
                    "freed_memory_kept": kept}
    if args.device == "cuda":
        report["card"] = torch.cuda.get_device_name(0)
        report["cuda"] = torch.version.cuda
        torch.cuda.reset_peak_memory_stats()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")

    images = load_sample_case(brats_size=True)
    report["agreement"], engine = _agreement("brats-demo-unet", images, args.device)
    save()
    in_memory = _timed(lambda: engine.run(images), args.device, args.repeats)
    report["per_case_in_memory_s"] = statistics.median(in_memory)
    report["resident_case"] = _resident_vs_host("brats-demo-unet", images, args.device, args.repeats)
    report["resident_case"]["preprocessing_steps"] = _preprocessing_steps("brats-demo-unet", images, args.device)
    save()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {n: str(write_image(img, Path(tmp) / f"{n}.nii.gz")) for n, img in images.items()}
        files = _timed(lambda: process_case(engine, paths, Path(tmp) / "out"), args.device, args.repeats)
        report["per_case_end_to_end_s"] = statistics.median(files)
        start = time.perf_counter()
        for n in range(args.batch):
            process_case(engine, paths, Path(tmp) / f"batch{n}")
        report["batch_cases_per_s"] = args.batch / (time.perf_counter() - start)
    if args.device == "cuda":
        report["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(f"per case: {report['per_case_in_memory_s']:.3f} s in memory, {report['per_case_end_to_end_s']:.3f} s "
          f"end to end with files; batch of {args.batch}: {report['batch_cases_per_s']:.2f} cases/s; peak GPU memory "
          f"{report.get('peak_gpu_memory_gib', float('nan')):.2f} GiB")
    save()
    if not args.skip_shipped:
        shipped, robust = _agreement("brats-robust-unet", images, args.device)
        shipped["stages_s"], shipped["per_case_in_memory_s"] = _stage_times(robust, images, args.device,
                                                                             args.repeats)
        report["shipped_model"] = shipped
        print(f"shipped model per case (manifest defaults, {shipped['tta_passes']} passes + refinement): "
              f"{shipped['per_case_in_memory_s']:.3f} s in memory ({_rounded(shipped['stages_s'])}); CPU fp32 "
              f"reference {shipped['cpu_fp32_reference_s']:.1f} s")
        save()
        shipped["measured_policy"] = chosen = _measured_policy(robust.model, args.device, out)
        save()
        print(f"the default precision's calibration here: {chosen['seconds']:.1f} s, chose {chosen['precision']} "
              f"(channels_last {chosen['channels_last']}); runs: "
              + ", ".join(f"{r['precision']}{'+cl' if r['channels_last'] else ''} "
                          f"{'n/a' if r['seconds'] is None else format(r['seconds'], '.2f')} s "
                          f"{'ok' if r['ok'] else 'rejected'}" for r in chosen["runs"]))
    if not args.skip_segresnet:
        report["segresnet_forward"] = _segresnet_times(args.device, max(2, args.repeats // 2))
        print(f"SegResNet (model-zoo size) forward on 4x240x240x160: {report['segresnet_forward']}")
    save()
    print(f"written {out / 'gpu_check.json'}")
    passes = report["agreement"]["passes"] and report.get("shipped_model", {}).get("passes", True)
    return 0 if passes else 1


if __name__ == "__main__":
    sys.exit(main())
