"""Lesion descriptors for similar-case retrieval: the segmentation network's own deep features pooled
inside each lesion, and interpretable radiomics-style features (SimpleITK).

A *retrieval lesion* is a connected component of the manifest's widest region (the whole tumor, ``WT``,
for the BraTS models; the first label when a model has no region), numbered as in the report's lesion
table (:func:`medcnncad.lesions.components.find_lesions`).

Deep features (:func:`deep_features`): the case's inputs after the clinical chain go through the
model's own preprocessing (orientation, spacing, z-score); a window of the manifest's ``roi_size``
centred on the lesion runs through the network once; forward hooks catch two encoder activations (the
second down-sampling block, 1/4 resolution, and the bottom block, 1/8 resolution); each is pooled inside
the lesion: a mean weighted by the share of each feature voxel the lesion covers, and a max over the
feature voxels the lesion touches. For MONAI's ``UNet`` with channels (16, 32, 64, 128): 2 x (32 + 128)
= 320 values. Models whose network is not a MONAI ``UNet`` get no deep block (``None``).

Radiomics features (:func:`radiomics_features`, names in :func:`radiomics_names`): shape
(``LabelShapeStatisticsImageFilter``), the share of each label inside the lesion (sub-regions) and,
per input sequence z-scored over its non-zero voxels (the manifest normalisation of the BraTS models),
intensity statistics inside the lesion (``LabelIntensityStatisticsImageFilter``) and the mean and
standard deviation of the gradient magnitude (mm^-1, a texture proxy). The median is numpy's (exact; ITK's is
a histogram estimate that depends on the image's range). Absent sequences give zeros.

Arrays are (K, J, I) = (z, y, x) on the result's reference grid; volumes in mL, lengths in mm.
Everything is deterministic: the same input gives the same vectors (tested).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from medcnncad.inference.inputs import in_manifest_order
from medcnncad.inference.result import SegmentationResult
from medcnncad.inference.scoring import given_inputs
from medcnncad.io.itk_threads import itk_threads
from medcnncad.lesions.components import boxed_components, components, mask_from_box, nonzero_box
from medcnncad.models.channels import display_channel
from medcnncad.models.loaded import LoadedModel
from medcnncad.models.manifest import Manifest
from medcnncad.models.preprocessing import lps_to_ras, to_metatensor
from medcnncad.retrieval.versions import DESCRIPTOR_VERSION

__all__ = ["DESCRIPTOR_VERSION", "MAX_DESCRIBED_LESIONS", "LesionDescriptor", "retrieval_structure", "lesion_masks",
           "described_lesions", "radiomics_names",
           "radiomics_features", "deep_features", "encoder_layers", "thumbnail", "case_descriptors",
           "descriptors_json", "retrieval_report"]


_INTENSITY_STATS = ("mean", "std", "median", "skewness", "kurtosis")
_TEXTURE_STATS = ("gradient_mean", "gradient_std")
_SHAPE = ("log_volume_ml", "elongation", "flatness", "roundness", "feret_diameter_mm",
          "equivalent_spherical_radius_mm", "surface_to_volume_per_mm")
THUMBNAIL_SIZE = 96


@dataclass
class LesionDescriptor:
    """The descriptors of one retrieval lesion.

    Attributes:
        lesion_id: the lesion's id in the report's lesion table (structure :attr:`structure`).
        structure: the region or label the lesion is a component of (e.g. ``WT``).
        volume_ml: its volume (mL).
        radiomics: feature name -> value (:func:`radiomics_names` order).
        deep: the pooled encoder activations (float32), or ``None`` when the network has no known encoder.
        thumbnail: uint8 (THUMBNAIL_SIZE, THUMBNAIL_SIZE) axial view through the lesion, outline at 255.
    """

    lesion_id: int
    structure: str
    volume_ml: float
    radiomics: dict[str, float]
    deep: np.ndarray | None
    thumbnail: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((1, 1), np.uint8))

    def to_json(self) -> dict[str, Any]:
        """JSON form (report.json ``retrieval.lesions``; floats rounded to 6 decimals)."""
        return {"lesion_id": self.lesion_id, "structure": self.structure, "volume_ml": round(self.volume_ml, 6),
                "radiomics": {k: round(float(v), 6) for k, v in self.radiomics.items()},
                "deep": None if self.deep is None else [round(float(v), 6) for v in self.deep]}


def retrieval_structure(manifest: Manifest) -> str:
    """The structure whose components are retrieval lesions: the region with the most labels, else the first label."""
    if manifest.regions:
        return max(manifest.regions, key=lambda r: len(r.labels)).name
    return manifest.labels[0].name


def lesion_masks(label_map: np.ndarray, manifest: Manifest) -> tuple[str, list[np.ndarray]]:
    """(structure, boolean (K, J, I) masks of its components, numbered as in the lesion table: mask ``i`` is
    lesion id ``i + 1``)."""
    name = retrieval_structure(manifest)
    values = manifest.structures()[name]
    labelled, count = components(np.isin(label_map, values))
    return name, [labelled == index for index in range(1, count + 1)]


MAX_DESCRIBED_LESIONS = 16  # the largest lesions of a case get descriptors (one network window each)


def described_lesions(label_map: np.ndarray, manifest: Manifest,
                      limit: int = MAX_DESCRIBED_LESIONS) -> tuple[str, list[tuple[int, np.ndarray]]]:
    """(structure, [(lesion id, boolean (K, J, I) mask)]) of the ``limit`` largest retrieval lesions, in id
    order. A scattered label map (an untrained network, a noisy case) thus costs at most ``limit``
    network windows and masks, not one per speck."""
    name = retrieval_structure(manifest)
    found = boxed_components(np.isin(label_map, manifest.structures()[name]))
    if found is None:
        return name, []
    box, labelled, count = found  # labelled inside the structure's box only: the same ids as on the whole grid
    sizes = np.bincount(labelled.ravel(), minlength=count + 1)[1:]
    chosen = sorted(int(i) + 1 for i in np.argsort(-sizes, kind="stable")[:limit])
    return name, [(index, mask_from_box(label_map.shape, box, labelled == index)) for index in chosen]


def radiomics_names(manifest: Manifest) -> list[str]:
    """Radiomics feature names of ``manifest``'s models, in vector order."""
    names = list(_SHAPE) + [f"fraction_{x.name}" for x in manifest.labels]
    for channel in manifest.inputs:
        names += [f"{channel.name}_{s}" for s in (*_INTENSITY_STATS, *_TEXTURE_STATS)]
    return names


def _zscore_stats(image: sitk.Image) -> tuple[float, float]:
    """Mean and standard deviation (at least 1e-6) of ``image``'s non-zero voxels, as float32 values;
    (0, 1) when every voxel is zero."""
    array = sitk.GetArrayViewFromImage(image)
    values = array[array != 0].astype(np.float32, copy=False)
    if values.size == 0:
        return 0.0, 1.0
    return float(values.mean(dtype=np.float64)), max(float(values.std(dtype=np.float64)), 1e-6)


def _zscored(image: sitk.Image, stats: tuple[float, float] | None = None) -> sitk.Image:
    """``image`` (as float32) z-scored with ``stats`` (default: its own :func:`_zscore_stats`); zero stays
    zero. Given the whole image's statistics, a box of it comes out as that box of the z-scored image."""
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    inside = array != 0
    if inside.any():
        mean, std = stats if stats is not None else _zscore_stats(image)
        array[inside] = (array[inside] - np.float64(mean)) / std
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def _finite(value: float) -> float:
    return float(value) if math.isfinite(value) else 0.0


def _shape(mask: sitk.Image) -> dict[str, float]:
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.ComputeFeretDiameterOn()
    shape.ComputePerimeterOn()
    shape.Execute(mask)
    volume_mm3 = shape.GetPhysicalSize(1)
    return {"log_volume_ml": math.log1p(volume_mm3 / 1000.0), "elongation": _finite(shape.GetElongation(1)),
            "flatness": _finite(shape.GetFlatness(1)), "roundness": _finite(shape.GetRoundness(1)),
            "feret_diameter_mm": _finite(shape.GetFeretDiameter(1)),
            "equivalent_spherical_radius_mm": _finite(shape.GetEquivalentSphericalRadius(1)),
            "surface_to_volume_per_mm": _finite(shape.GetPerimeter(1) / max(volume_mm3, 1e-6))}


def _intensity(image: sitk.Image, mask: sitk.Image) -> dict[str, float]:
    stats = sitk.LabelIntensityStatisticsImageFilter()
    stats.Execute(mask, image)
    gradient = sitk.LabelIntensityStatisticsImageFilter()
    gradient.Execute(mask, sitk.GradientMagnitude(image))
    return {"mean": _finite(stats.GetMean(1)), "std": _finite(stats.GetStandardDeviation(1)),
            "median": float(np.median(sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(mask) > 0])),
            "skewness": _finite(stats.GetSkewness(1)),
            "kurtosis": _finite(stats.GetKurtosis(1)), "gradient_mean": _finite(gradient.GetMean(1)),
            "gradient_std": _finite(gradient.GetStandardDeviation(1))}


def radiomics_features(mask: np.ndarray, label_map: np.ndarray, reference: sitk.Image,
                       images: dict[str, sitk.Image], manifest: Manifest,
                       zscore_stats: dict[str, tuple[float, float]] | None = None,
                       margin: int | None = 2) -> dict[str, float]:
    """Interpretable features of one lesion.

    Args:
        mask: boolean (K, J, I) lesion mask on ``reference``'s grid (at least one voxel).
        label_map: the (K, J, I) label map (for the sub-region fractions).
        reference: the grid (spacing, origin, direction; LPS mm).
        images: channel name -> image on ``reference``'s grid (absent channels give zeros).
        manifest: labels and input channels (feature order).
        zscore_stats: each image's z-score statistics over its whole grid (:func:`_zscore_stats`), to share
            the work between lesions; only the lesion's box is then z-scored.
        margin: computed on the lesion's box plus this many voxels (``None``: the whole grid); from 1 voxel
            on the values are those of the whole grid (the gradient's central differences inside the lesion
            see only voxels of the box), at a fraction of the work on a whole head.

    Returns:
        Feature name -> value, in :func:`radiomics_names` order; volumes in mL, lengths in mm.
    """
    stats = zscore_stats if zscore_stats is not None else {n: _zscore_stats(img) for n, img in images.items()}
    if margin is None:
        (k0, j0, i0), (k1, j1, i1) = (0, 0, 0), mask.shape
    else:
        box_of_mask = nonzero_box(mask)  # projections, not every voxel's index: a body-sized lesion stays cheap
        if box_of_mask is None:
            raise ValueError("radiomics_features: the lesion mask is empty")
        (k0, j0, i0) = [max(b.start - margin, 0) for b in box_of_mask]
        (k1, j1, i1) = [b.stop + margin for b in box_of_mask]
    box = mask[k0:k1, j0:j1, i0:i1]
    mask_image = sitk.GetImageFromArray(box.astype(np.uint8))
    mask_image.CopyInformation(reference[int(i0):int(i1), int(j0):int(j1), int(k0):int(k1)])
    with itk_threads(1):  # ITK's label statistics merge threads' sums in the order they finish: one fixed order
        return _box_features(mask, box, mask_image, (k0, j0, i0, k1, j1, i1), label_map, images, manifest, stats)


def _box_features(mask: np.ndarray, box: np.ndarray, mask_image: sitk.Image, bounds: tuple[int, ...],
                  label_map: np.ndarray, images: dict[str, sitk.Image], manifest: Manifest,
                  stats: dict[str, tuple[float, float]]) -> dict[str, float]:
    """:func:`radiomics_features` on the lesion's box ``bounds`` (k0, j0, i0, k1, j1, i1) and its mask image."""
    k0, j0, i0, k1, j1, i1 = bounds
    features = _shape(mask_image)
    count = max(int(np.count_nonzero(mask)), 1)
    inside = label_map[k0:k1, j0:j1, i0:i1][box]
    for x in manifest.labels:
        features[f"fraction_{x.name}"] = float(np.count_nonzero(inside == x.value)) / count
    for channel in manifest.inputs:
        values = (_intensity(_zscored(images[channel.name][int(i0):int(i1), int(j0):int(j1), int(k0):int(k1)],
                                      stats[channel.name]), mask_image)
                  if channel.name in images else dict.fromkeys((*_INTENSITY_STATS, *_TEXTURE_STATS), 0.0))
        features.update({f"{channel.name}_{k}": v for k, v in values.items()})
    return {name: features[name] for name in radiomics_names(manifest)}


def encoder_layers(network: torch.nn.Module) -> list[torch.nn.Module]:
    """The encoder blocks of a MONAI ``UNet``, finest first, the bottom block last (empty for other networks)."""
    layers: list[torch.nn.Module] = []
    node = getattr(network, "model", None)
    while isinstance(node, torch.nn.Sequential) and len(node) == 3 and hasattr(node[1], "submodule"):
        layers.append(node[0])
        node = node[1].submodule
    if layers and node is not None:
        layers.append(node)
    return layers


def _pre_grid(affine_ras: np.ndarray, size_ijk: Sequence[int]) -> sitk.Image:
    """An empty SimpleITK image on the grid of a preprocessed tensor (RAS affine, (I, J, K) size)."""
    lps = lps_to_ras(np.asarray(affine_ras, dtype=np.float64))
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    grid = sitk.Image([int(s) for s in size_ijk], sitk.sitkUInt8)
    grid.SetSpacing([float(s) for s in spacing])
    grid.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    grid.SetOrigin([float(v) for v in lps[:3, 3]])
    return grid


def _window(tensor: torch.Tensor, centre: Sequence[int], roi: Sequence[int]) -> torch.Tensor:
    """The (C, *roi) window of a (C, I, J, K) tensor centred on ``centre``, zero-padded outside."""
    out = torch.zeros((tensor.shape[0], *roi), dtype=tensor.dtype)
    src, dst = [], []
    for c, r, n in zip(centre, roi, tensor.shape[1:]):
        lo = int(c) - r // 2
        a, b = max(lo, 0), min(lo + r, int(n))
        src.append(slice(a, max(a, b)))
        dst.append(slice(a - lo, a - lo + max(b - a, 0)))
    out[(slice(None),) + tuple(dst)] = tensor[(slice(None),) + tuple(src)]
    return out


def _pool(feature: torch.Tensor, weight: torch.Tensor) -> np.ndarray:
    """Masked mean (weighted by lesion share) and max of a (C, i, j, k) feature map; weight (i, j, k)."""
    total = float(weight.sum())
    if total <= 0:
        return np.zeros(2 * feature.shape[0], np.float32)
    mean = (feature * weight).flatten(1).sum(1) / total
    peak = feature[:, weight > 0].max(1).values
    return torch.cat([mean, peak]).numpy().astype(np.float32)


def deep_features(model: LoadedModel, images: Sequence[sitk.Image], masks: Sequence[np.ndarray],
                  device: torch.device | str = "cpu", layers: Sequence[int] = (1, -1),
                  network_input: tuple[np.ndarray, np.ndarray] | None = None) -> list[np.ndarray] | None:
    """The network's encoder activations pooled inside each lesion.

    Args:
        model: the segmentation model (its network and preprocessing).
        images: the inputs in manifest order on one grid (absent ones as zeros), as the network saw them
            before the model's preprocessing (after the clinical chain).
        masks: boolean (K, J, I) lesion masks on that grid.
        device: where the network runs (float32).
        layers: which :func:`encoder_layers` to pool (default the 1/4-resolution block and the bottom).
        network_input: the model's preprocessing of ``images`` already done (float32 (C, I, J, K) and its
            RAS affine: ``SegmentationResult.network_input``); default: preprocess here.

    Returns:
        One float32 vector per mask: for each layer, the masked mean then the masked max over its channels;
        ``None`` when the network is not a MONAI ``UNet``.
    """
    blocks = encoder_layers(model.network)
    if len(blocks) < 3 or not masks:
        return None if len(blocks) < 3 else []
    if network_input is not None:
        data, affine = torch.from_numpy(network_input[0]), np.asarray(network_input[1], dtype=np.float64)
    else:
        pre = model.preprocess(to_metatensor(images))
        affine = np.asarray(pre.affine, dtype=np.float64)
        data = torch.as_tensor(pre.as_tensor() if hasattr(pre, "as_tensor") else pre, dtype=torch.float32).cpu()
    grid = _pre_grid(affine, data.shape[1:])
    roi = list(model.manifest.inference.roi_size)
    caught: dict[int, torch.Tensor] = {}
    chosen = [blocks[i] for i in layers]
    hooks = [b.register_forward_hook(lambda _m, _i, out, n=n: caught.__setitem__(n, out.detach()))
             for n, b in enumerate(chosen)]
    hooks.append(blocks[max(i % len(blocks) for i in layers)].register_forward_hook(_stop_forward))
    network = model.network.eval()
    vectors = []
    try:
        for mask in masks:
            mask_image = sitk.GetImageFromArray(mask.astype(np.float32))
            mask_image.CopyInformation(images[0])
            share = sitk.Resample(mask_image, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            share_ijk = torch.from_numpy(sitk.GetArrayFromImage(share).transpose(2, 1, 0).copy())
            if float(share_ijk.sum()) <= 0:  # outside the preprocessed crop: nothing the network saw
                vectors.append(np.zeros(2 * sum(_channels(b) for b in chosen), np.float32))
                continue
            where = torch.nonzero(share_ijk > 0).float()
            centre = [int(round(float(v))) for v in (where.min(0).values + where.max(0).values) / 2]
            window = _window(data, centre, roi)[None].to(device)
            weight = _window(share_ijk[None], centre, roi)[None]
            with torch.no_grad():
                _encoder_pass(network, window)
            parts = []
            for n in range(len(chosen)):
                feature = caught[n][0].float().cpu()
                i, j, k = (int(n) for n in feature.shape[1:])
                w = F.adaptive_avg_pool3d(weight, (i, j, k))[0, 0]
                parts.append(_pool(feature, w))
            vectors.append(np.concatenate(parts))
    finally:
        for hook in hooks:
            hook.remove()
    return vectors


class _EncoderDone(Exception):
    """Raised by the hook of the deepest pooled encoder block: the decoder's output is not needed."""


def _stop_forward(_module: torch.nn.Module, _inputs: Any, _output: Any) -> None:
    raise _EncoderDone


def _encoder_pass(network: torch.nn.Module, window: torch.Tensor) -> None:
    """Run ``network`` on ``window`` until the deepest pooled encoder block has run (its hook raises
    :class:`_EncoderDone`): MONAI's UNet runs every encoder block before any decoder block, so the
    caught activations equal a full pass's and the decoder (most of a full pass's cost) is skipped."""
    try:
        network(window)
    except _EncoderDone:
        pass


def _channels(block: torch.nn.Module) -> int:
    """Output channels of an encoder block (its last convolution's)."""
    convs = [m for m in block.modules() if isinstance(m, torch.nn.Conv3d)]
    return int(convs[-1].out_channels) if convs else 0


def thumbnail(image: sitk.Image, mask: np.ndarray, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """A uint8 (size, size) axial view of ``image`` through the lesion's largest slice, cropped to the lesion
    plus a margin, lesion outline drawn at 255 (array rows = J, columns = I)."""
    array = sitk.GetArrayViewFromImage(image)
    k = int(np.argmax(mask.sum(axis=(1, 2))))
    rows, cols = np.nonzero(mask[k])
    centre = ((rows.min() + rows.max()) // 2, (cols.min() + cols.max()) // 2)
    half = max(int(rows.max() - rows.min()), int(cols.max() - cols.min()), 16) * 3 // 4 + 4
    r = np.clip(np.linspace(centre[0] - half, centre[0] + half, size).round().astype(int), 0, mask.shape[1] - 1)
    c = np.clip(np.linspace(centre[1] - half, centre[1] + half, size).round().astype(int), 0, mask.shape[2] - 1)
    view = np.asarray(array[k], dtype=np.float32)[np.ix_(r, c)]
    lo, hi = np.percentile(view, [1, 99]) if view.any() else (0.0, 1.0)
    out = np.clip((view - lo) / max(float(hi - lo), 1e-6) * 230, 0, 230).astype(np.uint8)
    local = mask[k][np.ix_(r, c)]
    edge = local & ~(np.roll(local, 1, 0) & np.roll(local, -1, 0) & np.roll(local, 1, 1) & np.roll(local, -1, 1))
    out[edge] = 255
    return out


def case_descriptors(result: SegmentationResult, model: LoadedModel | None = None,
                     device: torch.device | str = "cpu") -> list[LesionDescriptor]:
    """Descriptors of the retrieval lesions of a segmentation result (the :data:`MAX_DESCRIBED_LESIONS` largest).

    Args:
        result: the segmentation (its label map, the inputs after the clinical chain, the manifest).
        model: the loaded segmentation model for the deep block (``None``: radiomics only).
        device: where the network runs.

    Returns:
        One :class:`LesionDescriptor` per lesion, in lesion id order (empty when nothing was found).
    """
    manifest = result.manifest
    structure, chosen = described_lesions(result.label_map, manifest)
    if not chosen:
        return []
    ids, masks = [i for i, _ in chosen], [m for _, m in chosen]
    given = result.images or {manifest.inputs[0].name: result.reference}
    stats = {name: _zscore_stats(img) for name, img in given.items()}
    deep = None
    if model is not None:
        ordered, _ = in_manifest_order(manifest, given)
        deep = deep_features(model, ordered, masks, device, network_input=result.network_input)
    shown = given[display_channel(list(given)) or next(iter(given))]
    voxel_ml = float(np.prod(result.reference.GetSpacing())) / 1000.0
    return [LesionDescriptor(ids[index], structure, float(np.count_nonzero(mask)) * voxel_ml,
                             radiomics_features(mask, result.label_map, result.reference, given, manifest, stats),
                             None if deep is None else deep[index], thumbnail(shown, mask))
            for index, mask in enumerate(masks)]


def descriptors_json(descriptors: Sequence[LesionDescriptor], result: SegmentationResult) -> dict[str, Any]:
    """report.json ``retrieval``: descriptor version, the input sequences the run was given (``given_inputs``:
    descriptors of runs given other sequences are not comparable alike), how each block is made, and the lesions'
    vectors."""
    return {"descriptor_version": DESCRIPTOR_VERSION, "structure": retrieval_structure(result.manifest),
            "given_inputs": given_inputs(result),
            "radiomics_names": radiomics_names(result.manifest),
            "deep": "MONAI UNet encoder activations (1/4-resolution block, bottom block): masked mean then masked "
                    "max per channel, window of the manifest roi_size centred on the lesion",
            "lesions": [d.to_json() for d in descriptors]}


def retrieval_report(descriptors: Sequence[LesionDescriptor], result: SegmentationResult) -> dict[str, Any]:
    """The part of a report.json a library query reads: ``model`` (id, version, weights sha256) and ``retrieval``
    (for runs that write no report, e.g. Slicer's)."""
    m = result.manifest
    return {"model": {"id": m.id, "version": m.version, "weights_sha256": m.weights_sha256},
            "retrieval": descriptors_json(descriptors, result)}
