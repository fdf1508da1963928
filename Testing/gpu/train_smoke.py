"""The real trainer on a GPU: a smoke test and its step rate against the same machine's CPU.

Runs ``medcnncad train segmentation`` (the shipped model's template, robust augmentation,
channel dropout) on the shipped sample case (one training copy, one validation copy: speed, not
learning) for a short and a long epoch per configuration; the difference of the two wall times
over the difference of their steps is the time per optimiser step without the fixed costs (case
preparation, validation, start-up). Configurations: CUDA with augmentation in the training process,
CUDA with DataLoader workers, and the CPU. Writes ``train_smoke.json`` to ``--out``.

    source Testing/gpu/env.sh && "$RUN" Testing/gpu/train_smoke.py --out "$OUT"
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = (("cuda", 0), ("cuda", 8), ("cpu", 0))


def _cases_csv(folder: Path) -> Path:
    """A CSV naming the sample phantom twice: one training case, one validation case."""
    stem = ROOT / "Resources" / "SampleData" / "MedCNNCADPhantom"
    files = [f"{stem}_{n}.nrrd" for n in ("T1", "T1c", "T2", "FLAIR")] + [f"{stem}_reference.seg.nrrd"]
    rows = ["case,T1,T1c,T2,FLAIR,label,split"] + [",".join([c, *files, split])
                                                    for c, split in (("a", "train"), ("b", "val"))]
    path = folder / "cases.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _train(csv: Path, out: Path, device: str, workers: int, steps: int) -> float:
    """Wall seconds of one training run of one epoch of ``steps`` steps."""
    argv = ["train", "segmentation", "--template", str(ROOT / "Resources" / "ModelTemplates" /
                                                        "brats-robust-unet.json"),
            "--data", str(csv), "--epochs", "1", "--steps-per-epoch", str(steps), "--augmentation", "robust",
            "--channel-drop", "0.5", "--device", device, "--loader-workers", str(workers), "--out", str(out)]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", "import sys; from medcnncad.cli import main; "
                           "sys.exit(main(sys.argv[1:]))", *argv], capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"train_smoke: {device} workers {workers} steps {steps} failed:\n{done.stderr[-2000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="train_smoke_out")
    parser.add_argument("--short", type=int, default=30)
    parser.add_argument("--long", type=int, default=330)
    parser.add_argument("--configs", nargs="+", default=[f"{d}:{w}" for d, w in CONFIGS],
                        help="device:loader_workers, e.g. cuda:8")
    args = parser.parse_args(argv)
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"torch": torch.__version__, "card": torch.cuda.get_device_name(0) if torch.cuda.is_available()
                    else None, "cpu_threads": torch.get_num_threads(), "steps": [args.short, args.long], "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        csv = _cases_csv(Path(tmp))
        for config in args.configs:
            device, workers = config.split(":")
            short, long = (_train(csv, Path(tmp) / f"{device}{workers}_{n}", device, int(workers), n)
                           for n in (args.short, args.long))
            per_step = (long - short) / (args.long - args.short)
            report["runs"][config] = {"short_s": short, "long_s": long, "seconds_per_step": per_step,
                                      "steps_per_s": 1 / per_step}
            print(f"{device}, {workers} loader workers: {per_step * 1000:.1f} ms per step ({1 / per_step:.1f} "
                  f"steps/s); runs of {args.short} / {args.long} steps took {short:.1f} / {long:.1f} s", flush=True)
            (out / "train_smoke.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
