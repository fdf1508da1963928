"""Training-step throughput of the shipped segmentation network and two larger candidates.

The candidates are what a longer training would use and still ship in the repository (about 19 MB
of fp32 weights each): a UNet with twice the channels and a model-zoo-size SegResNet.

Answers "how long would a longer training take" with measured numbers: for each network, the
median time of one optimiser step (forward, MONAI DiceCE loss, backward, Adam) on random
4-channel patches, batch 2, at the training patch (64^3, what the shipped model was trained with)
and at 128^3 (the usual BraTS patch), plus the CPU time of the robust augmentation pipeline per
training sample (the data side: on a GPU it, not the network, can set the pace). On CUDA the step
runs under bf16 autocast; on the CPU in fp32 (this machine has no native bf16). Random data and
random weights: speed only. Prints one line per measurement and writes ``train_throughput.json``.

    python scripts/train_throughput.py --device cpu --out OUT
    python scripts/train_throughput.py --device cuda --out OUT     # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _template():
    """The shipped model's training template (manifest without weights)."""
    import tempfile

    from medcnncad.models.manifest import parse_manifest

    path = ROOT / "Resources" / "ModelTemplates" / "brats-robust-unet.json"
    return parse_manifest(json.loads(path.read_text()), Path(tempfile.gettempdir()), where=str(path))


def _networks() -> dict:
    """Name -> (builder, parameter note). The shipped one is built from its training template."""
    from monai.networks.nets import SegResNet, UNet

    from medcnncad.models.weights import build_network

    template = _template()
    return {
        "shipped UNet 16-128 (brats-robust-unet)":
            lambda: build_network(template.network_class, template.network_kwargs),
        "UNet 32-256, 2 residual units":
            lambda: UNet(3, 4, 4, channels=(32, 64, 128, 256), strides=(2, 2, 2), num_res_units=2, norm="instance"),
        "SegResNet init 16 (model-zoo BraTS size)":
            lambda: SegResNet(spatial_dims=3, in_channels=4, out_channels=4, init_filters=16,
                              blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1)),
    }


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def step_time(build, device: str, patch: int, batch: int, steps: int, warmup: int) -> dict:
    """Median seconds per optimiser step of network ``build()`` on random (batch, 4, patch^3) input."""
    import torch
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    net = build().to(device).train()
    params = sum(p.numel() for p in net.parameters())
    optimiser = torch.optim.Adam(net.parameters(), 1e-4)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    x = torch.randn(batch, 4, patch, patch, patch, device=device)
    y = torch.randint(0, 4, (batch, 1, patch, patch, patch), device=device)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        start = time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = loss_fn(net(x), y)
        loss.backward()
        optimiser.step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    out = {"parameters": params, "weights_mb_fp32": params * 4 / 1e6, "patch": patch, "batch": batch,
           "step_s": statistics.median(times), "steps_timed": steps}
    if device == "cuda":
        out["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    del net, optimiser
    return out


def augmentation_time(samples: int) -> dict:
    """CPU seconds per training sample of the robust augmentation on a random BraTS-like case."""
    import torch

    from medcnncad.data.augment import segmentation_transforms

    rng = np.random.default_rng(0)
    case = {"image": torch.from_numpy(rng.normal(size=(4, 160, 192, 160)).astype(np.float32)),
            "label": torch.from_numpy(rng.integers(0, 4, size=(1, 160, 192, 160)).astype(np.int64))}
    transforms = segmentation_transforms((64, 64, 64), 1, "robust", 0.5)
    transforms.set_random_state(0)
    transforms(dict(case))  # warm-up
    start = time.perf_counter()
    for _ in range(samples):
        transforms(dict(case))
    return {"samples": samples, "seconds_per_sample": (time.perf_counter() - start) / samples}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", default="train_throughput_out")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--patches", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--skip-augmentation", action="store_true")
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("train_throughput: no CUDA device on this machine", file=sys.stderr)
        return 3
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "card": torch.cuda.get_device_name(0) if args.device == "cuda" else None, "networks": {}}
    for name, build in _networks().items():
        for patch in args.patches:
            r = step_time(build, args.device, patch, 2, args.steps, warmup=2)
            report["networks"].setdefault(name, []).append(r)
            print(f"{name}: {r['parameters'] / 1e6:.2f} M parameters, patch {patch}^3 batch 2: "
                  f"{r['step_s']:.3f} s/step ({1 / r['step_s']:.1f} steps/s)", flush=True)
            (out / "train_throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    if not args.skip_augmentation:
        report["augmentation"] = augmentation_time(5)
        print(f"robust augmentation: {report['augmentation']['seconds_per_sample']:.3f} CPU s per 64^3 sample "
              "(one core's worth; the trainer's DataLoader runs it in the main process)")
    (out / "train_throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
