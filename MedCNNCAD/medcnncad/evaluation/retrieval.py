"""How well similar-case retrieval finds cases of the same grade / tumor type: held-out phantoms and real
patients (leave one patient out), for the deep, radiomics and combined descriptors.

Each case contributes its largest retrieval lesion (what ``library query`` uses by default). Every lesion
queries all lesions of the *other* cases; precision@k and mAP@k (:mod:`medcnncad.retrieval.evaluate`) of
"same label" are reported next to chance (the expected precision of a random ranking: the share of the
other cases that share the query's label, averaged over queries). On real patients, a second check:
each patient's single-sequence runs (post-contrast T1 alone, FLAIR alone) query a library of every
patient's all-sequence run; the rank of the same patient says how stable the descriptors are when the
inputs change.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from medcnncad.data.phantom import crop_around_tumor, make_phantom, preset
from medcnncad.data.real_cases import discover_real_cases
from medcnncad.errors import InputError
from medcnncad.evaluation.real import variant_channels
from medcnncad.inference.segmenter import Segmenter
from medcnncad.models.registry import load_model
from medcnncad.retrieval.descriptors import LesionDescriptor, case_descriptors
from medcnncad.retrieval.evaluate import leave_one_out
from medcnncad.retrieval.index import ExactIndex, standardise_blocks
from medcnncad.retrieval.library import FEATURES

__all__ = ["KS", "phantom_records", "real_records", "retrieval_scores", "self_retrieval", "evaluate_retrieval",
           "format_retrieval_table"]

KS = (1, 3, 5)
PHANTOM_BOX_MM = (128.0, 128.0, 112.0)


def _record(descriptors: list[LesionDescriptor], **labels: Any) -> dict[str, Any] | None:
    if not descriptors:
        return None
    largest = max(descriptors, key=lambda d: d.volume_ml)
    return {**labels, "volume_ml": largest.volume_ml, "radiomics": np.array(list(largest.radiomics.values())),
            "deep": largest.deep}


def phantom_records(segmenter: Segmenter, n: int, seed_base: int, preset_name: str = "graded",
                    tta: bool = False) -> list[dict[str, Any]]:
    """Segment ``n`` held-out phantoms (cropped to :data:`PHANTOM_BOX_MM` around the tumor) and describe their
    largest lesion; records carry ``group`` (the seed), ``grade`` and the descriptor blocks."""
    config = preset(preset_name)
    records = []
    for seed in range(seed_base, seed_base + n):
        case = make_phantom(seed, config)
        if case.grade == "none":
            continue
        images, _ = crop_around_tumor(case, PHANTOM_BOX_MM)
        result = segmenter.run(images, tta=tta)
        record = _record(case_descriptors(result, segmenter.model, segmenter.device), group=str(seed),
                         grade=case.grade, type="glioma", variant="all")
        if record is not None:
            records.append(record)
    return records


def real_records(segmenter: Segmenter, root: str, variants: Sequence[str] = ("all", "T1c", "FLAIR"),
                 tta: bool = False) -> list[dict[str, Any]]:
    """Segment every real case of ``root`` (labelled or not: no reference is used) with each input variant
    and describe its largest lesion; ``grade`` is the source's (HGG/LGG, else None), ``type`` the source's
    (glioma, metastasis or meningioma; None when the source does not say)."""
    records = []
    for case in discover_real_cases(root):
        kind = case.tumor_type
        sources = case.input_sources()  # a 4D file's volumes read once for every variant, as evaluate-real does
        for variant in variants:
            channels = variant_channels(case, variant)
            if channels is None:
                continue
            start = time.perf_counter()
            result = segmenter.run({name: sources[name] for name in channels}, tta=tta)
            record = _record(case_descriptors(result, segmenter.model, segmenter.device), group=case.case_id,
                             grade=case.grade, type=kind, variant=variant)
            if record is not None:
                record["seconds"] = time.perf_counter() - start
                records.append(record)
    return records


def _blocks(records: Sequence[dict[str, Any]], features: str) -> list[np.ndarray]:
    radiomics = np.stack([r["radiomics"] for r in records])
    if features == "radiomics":
        return [radiomics]
    deep = np.stack([r["deep"] for r in records])
    return [deep] if features == "deep" else [radiomics, deep]


def _chance(labels: np.ndarray, groups: np.ndarray) -> float:
    shares = [float(np.mean(labels[groups != groups[q]] == labels[q])) for q in range(len(labels))
              if (groups != groups[q]).any()]
    return float(np.mean(shares)) if shares else float("nan")


def retrieval_scores(records: Sequence[dict[str, Any]], label: str, ks: Sequence[int] = KS) -> dict[str, Any]:
    """Leave-one-case-out precision@k / mAP@k of "same ``label``" for each feature space (records whose label is
    None are left out); ``chance`` is a random ranking's expected precision."""
    kept = [r for r in records if r.get(label) is not None and r["variant"] == "all"]
    if len({r[label] for r in kept}) < 2:
        return {"queries": len(kept), "note": f"fewer than two {label} values: nothing to measure"}
    labels, groups = np.array([r[label] for r in kept]), np.array([r["group"] for r in kept])
    out: dict[str, Any] = {"queries": len(kept), "chance": _chance(labels, groups),
                           "counts": {str(v): int((labels == v).sum()) for v in sorted(set(labels))}}
    has_deep = all(r["deep"] is not None for r in kept)
    for features in FEATURES:
        if features != "radiomics" and not has_deep:
            continue
        out[features] = {str(k): leave_one_out(_blocks(kept, features), labels.tolist(), groups.tolist(), k)
                         for k in ks}
    return out


def self_retrieval(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Each single-sequence run queries the library of all-sequence runs (one per patient): the rank (1 = best)
    of the same patient, per feature space."""
    library = [r for r in records if r["variant"] == "all"]
    queries = [r for r in records if r["variant"] != "all" and any(x["group"] == r["group"] for x in library)]
    if not queries or len(library) < 2:
        return {"queries": 0}
    out: dict[str, Any] = {"queries": len(queries), "library": len(library)}
    for features in FEATURES:
        if features != "radiomics" and any(r["deep"] is None for r in [*library, *queries]):
            continue
        lib, q = standardise_blocks(_blocks(library, features), _blocks(queries, features))
        _, rows = ExactIndex(lib).search(q, len(library))
        ranks = [int(np.flatnonzero(np.array([library[i]["group"] for i in row]) == query["group"])[0]) + 1
                 for row, query in zip(rows, queries)]
        out[features] = {"top1": float(np.mean([r == 1 for r in ranks])), "mean_rank": float(np.mean(ranks)),
                         "ranks": {f"{x['group']}/{x['variant']}": r for x, r in zip(queries, ranks)}}
    return out


def evaluate_retrieval(model_id: str, n: int = 40, seed_base: int = 900_000, preset_name: str = "graded",
                       data: str | None = None, device: str = "auto", ks: Sequence[int] = KS) -> dict[str, Any]:
    """Retrieval quality on held-out phantoms (``n`` > 0) and on the real cases of ``data`` (when given).

    Args:
        model_id: the segmentation model (its encoder gives the deep descriptors).
        n: held-out phantoms (0: none).
        seed_base: first phantom seed (900000+: never used in training).
        preset_name: phantom preset with grade as a hidden variable (``graded``, ``heldout``, ...).
        data: a realdata folder (``../shared/realdata``), or None.
        device: where the network runs.
        ks: the k of precision@k / mAP@k.

    Returns:
        ``{"model", "phantoms": {"grade": scores}, "real": {"grade", "type", "self_retrieval"}}``.
    """
    if n <= 0 and data is None:
        raise InputError("evaluate-retrieval: give --n > 0 phantoms and/or --data with real cases")
    segmenter = Segmenter(load_model(model_id), device=device)
    m = segmenter.manifest
    out: dict[str, Any] = {"model": m.id, "version": m.version, "trained_on": m.trained_on,
                           "test_time_augmentation": False}
    if n > 0:
        records = phantom_records(segmenter, n, seed_base, preset_name)
        out["phantoms"] = {"preset": preset_name, "seeds": [seed_base, seed_base + n - 1],
                           "grade": retrieval_scores(records, "grade", ks)}
    if data is not None:
        records = real_records(segmenter, data)
        out["real"] = {"cases": sorted({r["group"] for r in records}),
                       "grade": retrieval_scores(records, "grade", ks), "type": retrieval_scores(records, "type", ks),
                       "self_retrieval": self_retrieval(records)}
    return out


def format_retrieval_table(report: dict[str, Any]) -> str:
    """Markdown tables: precision@k / mAP@k per feature space and label, and the self-retrieval ranks."""
    lines = [f"{report['model']} {report['version']} (trained on: {report['trained_on']})"]
    blocks = [("phantoms", "grade")] + [("real", label) for label in ("grade", "type")]
    for where, label in blocks:
        scores = report.get(where, {}).get(label)
        if scores is None:
            continue
        lines += ["", f"{where}, same {label}: {scores['queries']} queries {scores.get('counts', '')}"]
        if "chance" not in scores:
            lines.append(scores.get("note", ""))
            continue
        ks = list(scores[next(f for f in FEATURES if f in scores)])
        lines += ["| features | " + " | ".join(f"P@{k} | mAP@{k}" for k in ks) + " |",
                  "|---|" + "---|---|" * len(ks)]
        for features in FEATURES:
            if features in scores:
                lines.append(f"| {features} | " + " | ".join(
                    f"{scores[features][k]['precision_at_k']:.3f} | {scores[features][k]['map_at_k']:.3f}"
                    for k in ks) + " |")
        lines.append(f"| chance | {scores['chance']:.3f} |" + " |" * (2 * len(ks) - 1))
    selfr = report.get("real", {}).get("self_retrieval")
    if selfr and selfr.get("queries"):
        lines += ["", f"real, same patient from a single-sequence run ({selfr['queries']} queries, library of "
                      f"{selfr['library']} all-sequence runs; chance top-1 {1 / selfr['library']:.3f})",
                  "| features | top-1 | mean rank |", "|---|---|---|"]
        lines += [f"| {f} | {selfr[f]['top1']:.3f} | {selfr[f]['mean_rank']:.2f} |" for f in FEATURES if f in selfr]
    return "\n".join(lines)
