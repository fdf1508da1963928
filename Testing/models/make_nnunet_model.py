"""Build a small real nnU-Net v2 model with nnunetv2's own tools (run as a script by the tests).

``python make_nnunet_model.py OUT`` writes six two-channel phantom cases (a sphere: label 1,
its core: label 2) as an nnU-Net raw dataset, runs nnU-Net's fingerprint extraction, planner
and preprocessor, trains fold 0 for one epoch of two iterations with ``nnUNetTrainer`` on the
CPU, and then makes fold 1 from fold 0 with perturbed weights (two different weight sets for
the ensemble, without a second training run). With ``--regions`` the dataset is BraTS-style
region-based (labels as lists + ``regions_class_order``). The trained-model folder is
``OUT/res/Dataset90x_Phantom/nnUNetTrainer__nnUNetPlans__3d_fullres``; its path is printed last.

It runs in its own process because nnU-Net reads its folders from environment variables
when it is first imported, and its planner starts worker processes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SHAPE = (32, 40, 36)  # (z, y, x)
SPACING = (1.0, 1.0, 1.2)  # (x, y, z) mm


def phantom(rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """Two channels and a label map (K, J, I): a sphere (label 1) with a core (label 2)."""
    zz, yy, xx = np.indices(SHAPE)
    centre = rng.uniform([12, 14, 12], [20, 26, 24])
    radius = rng.uniform(5, 8)
    distance = np.sqrt((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2)
    label = np.zeros(SHAPE, np.uint8)
    label[distance < radius] = 1
    label[distance < radius * 0.5] = 2
    channels = [100 + 10 * rng.standard_normal(SHAPE) + 60 * (label > 0) - 20 * (label == 2),
                100 + 10 * rng.standard_normal(SHAPE) + 30 * (label > 0) + 40 * (label == 2)]
    return [c.astype(np.float32) for c in channels], label


def write(array: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    sitk.WriteImage(image, str(path))


def raw_dataset(root: Path, dataset_id: int, regions: bool) -> str:
    name = f"Dataset{dataset_id}_Phantom"
    folder = root / "raw" / name
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(dataset_id)
    for case in range(6):
        channels, label = phantom(rng)
        for index, channel in enumerate(channels):
            write(channel, folder / "imagesTr" / f"ph_{case:03d}_{index:04d}.nii.gz")
        write(label, folder / "labelsTr" / f"ph_{case:03d}.nii.gz")
    labels: dict = ({"background": 0, "whole tumor": [1, 2], "tumor core": [2]} if regions else
                    {"background": 0, "tumor": 1, "core": 2})
    dataset = {"channel_names": {"0": "T1c", "1": "FLAIR"}, "labels": labels, "numTraining": 6,
               "file_ending": ".nii.gz", "description": "test phantoms (spheres), not a clinical model"}
    if regions:
        dataset["regions_class_order"] = [1, 2]
    (folder / "dataset.json").write_text(json.dumps(dataset))
    return name


def main(out: Path, regions: bool) -> None:
    for sub in ("raw", "pre", "res"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    os.environ.update(nnUNet_raw=str(out / "raw"), nnUNet_preprocessed=str(out / "pre"),
                      nnUNet_results=str(out / "res"), nnUNet_n_proc_DA="1", nnUNet_compile="false")
    dataset_id = 902 if regions else 901
    name = raw_dataset(out, dataset_id, regions)
    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )
    from nnunetv2.run.run_training import get_trainer_from_args

    extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=True)
    plan_experiments([dataset_id])
    preprocess([dataset_id], configurations=("3d_fullres",), num_processes=(1,))
    os.environ["nnUNet_n_proc_DA"] = "0"  # single-threaded augmentation while training
    torch.manual_seed(0)
    trainer = get_trainer_from_args(str(dataset_id), "3d_fullres", 0, "nnUNetTrainer", "nnUNetPlans",
                                    device=torch.device("cpu"))
    trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 1, 2, 1
    trainer.run_training()
    model = out / "res" / name / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    checkpoint = torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    generator = torch.Generator().manual_seed(1)
    checkpoint["network_weights"] = {k: v + 0.05 * v.std().nan_to_num() * torch.randn(v.shape, generator=generator)
                                     if v.is_floating_point() and v.numel() > 1 else v
                                     for k, v in checkpoint["network_weights"].items()}
    checkpoint["init_args"]["fold"] = 1
    (model / "fold_1").mkdir(exist_ok=True)
    torch.save(checkpoint, model / "fold_1" / "checkpoint_final.pth")
    print(model)


if __name__ == "__main__":
    main(Path(sys.argv[1]), "--regions" in sys.argv[2:])
