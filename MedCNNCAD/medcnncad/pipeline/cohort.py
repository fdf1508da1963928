"""Cohort evaluation: many cases, resumable, on dask.distributed, with a statistical summary.

Input is a CSV with a ``case_id`` column, one column per model input channel (a file or a
DICOM folder; relative paths are relative to the CSV), optional ``<channel>_series`` columns
(DICOM series selector; for a 4D file such as the Decathlon's, the channel's 0-based volume), an optional
``reference`` (label map) with an optional ``reference_labels`` (its label convention: ``brats2023``, ``msd``
or ``SOURCE=TARGET`` pairs, see :func:`medcnncad.metrics.label_conventions.parse_label_map`), an optional ``label``
(1 = abnormal, 0 = normal) and, for a model that extracts the brain, an optional ``brain_mask`` (the case's own mask
file) or ``brain_mask_from`` (the sequence to extract it from;
:func:`medcnncad.preprocessing.brain_mask.brain_mask_choice`). Every case gets the outputs of ``medcnncad segment`` in
``OUT/cases/<case_id>/``; a case whose ``report.json`` exists is skipped (resume). A failed
case is recorded in ``failures.csv`` and the cohort goes on.

Cohort outputs: ``cohort.csv`` (one row per case and label/region), ``summary.json`` and
``summary.md`` (mean, median and bootstrap 95 % confidence intervals of every metric; lesion-wise
sensitivity and false positives per case; case-level AUC with its CI and calibration when labels
are given).
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from medcnncad.errors import InputError, MedCNNCADError
from medcnncad.inference.machine_policy import cached_segmenter, decide_policy_once, default_precision
from medcnncad.io.images import atomic_path
from medcnncad.metrics.calibration import expected_calibration_error
from medcnncad.metrics.label_conventions import parse_label_map
from medcnncad.metrics.segmentation import pooled_detection
from medcnncad.models.manifest import channel_term
from medcnncad.pipeline.case import process_case

__all__ = ["CohortCase", "read_cases", "run_cohort", "summarize", "bootstrap_ci", "expected_calibration_error"]

METRICS = ("dice", "jaccard", "precision", "recall", "specificity", "accuracy", "f1", "hd95_mm", "assd_mm",
           "volume_diff_ml")


@dataclass
class CohortCase:
    case_id: str
    inputs: dict[str, str]
    series: dict[str, str] = field(default_factory=dict)
    reference: str | None = None
    label: int | None = None
    reference_labels: dict[int, int] | None = None
    brain_mask: str | None = None
    brain_mask_from: str | None = None


def read_csv_rows(csv_path: Path, channels: Sequence[str] = ()) -> list[tuple[int, dict[str, str]]]:
    """The rows of a cases CSV (cohort or library) as (line number in the file, row) pairs, blank lines skipped; a
    UTF-8 byte-order mark (a spreadsheet's export) is read past. A column named as one of ``channels`` in another
    case or with separators (``flair``, ``T1-c`` for ``T1c``; :func:`~medcnncad.models.manifest.channel_term`), and its
    ``<channel>_series`` column, is renamed to the channel's own name. Unreadable, empty, or two columns for one
    channel is one clear error naming the file."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{csv_path}: cannot be read as CSV ({exc})") from None
    if not rows:
        raise InputError(f"{csv_path}: no cases")
    renames = _channel_columns(csv_path, list(rows[0][1]), channels)
    return [(line, {renames.get(k, k): v for k, v in row.items()}) for line, row in rows]


def _channel_columns(csv_path: Path, headers: Sequence[str | None], channels: Sequence[str]) -> dict[str, str]:
    """Header -> the channel (or ``<channel>_series``) it names, for headers not spelled as the channel is."""
    by_term = {channel_term(channel): channel for channel in channels}
    named: dict[str, list[str]] = {}  # channel or <channel>_series -> the headers that name it
    for header in headers:
        if not header or not header.strip():
            continue
        base, suffix = (header.removesuffix("_series"), "_series") if header.endswith("_series") else (header, "")
        channel = by_term.get(channel_term(base))
        if channel is not None:
            named.setdefault(channel + suffix, []).append(header)
    for target, columns in named.items():
        if len(columns) > 1:
            raise InputError(f"{csv_path}: columns {columns} all name channel {target}; keep one")
    return {columns[0]: target for target, columns in named.items() if columns[0] != target}


def read_cases(csv_path: str | Path, channels: Sequence[str]) -> list[CohortCase]:
    """Parse and validate the cohort CSV (errors name the row and column)."""
    csv_path = Path(csv_path)
    rows = read_csv_rows(csv_path, channels)
    columns = set(rows[0][1])
    if "case_id" not in columns or not (set(channels) & columns):
        raise InputError(f"{csv_path}: needs a case_id column and channel columns {list(channels)}")
    resolve = lambda value: str((csv_path.parent / value).resolve()) if value else ""  # noqa: E731
    cases, seen = [], set()
    for line, row in rows:
        case_id = (row.get("case_id") or "").strip()
        if not case_id or case_id in seen or "/" in case_id or case_id.startswith("."):
            raise InputError(f"{csv_path}: line {line}: case_id {case_id!r} is empty, repeated or not a folder name")
        seen.add(case_id)
        label = (row.get("label") or "").strip()
        if label not in ("", "0", "1"):
            raise InputError(f"{csv_path}: line {line}: label {label!r} must be 0, 1 or empty")
        convention = (row.get("reference_labels") or "").strip()
        if convention and not (row.get("reference") or "").strip():
            raise InputError(f"{csv_path}: line {line}: reference_labels {convention!r} without a reference")
        try:
            mapping = parse_label_map(convention) if convention else None
        except InputError as exc:
            raise InputError(f"{csv_path}: line {line}: column reference_labels: {exc}") from None
        cases.append(CohortCase(
            case_id, {c: resolve(row[c].strip()) for c in channels if (row.get(c) or "").strip()},
            {c: row[f"{c}_series"].strip() for c in channels if (row.get(f"{c}_series") or "").strip()},
            resolve((row.get("reference") or "").strip()) or None, int(label) if label else None, mapping,
            *_brain_mask_columns(csv_path, line, row, resolve)))
    return cases


def _brain_mask_columns(csv_path: Path, line: int, row: Mapping[str, str | None],
                        resolve: Callable[[str], str]) -> tuple[str | None, str | None]:
    """A row's ``brain_mask`` (resolved path) and ``brain_mask_from``; both in one row is refused."""
    path = (row.get("brain_mask") or "").strip()
    source = (row.get("brain_mask_from") or "").strip()
    if path and source:
        raise InputError(f"{csv_path}: line {line}: brain_mask and brain_mask_from both given; give one")
    return resolve(path) or None, source or None


# -- running ---------------------------------------------------------------------------------------

def _case_report(out_dir: str | Path, case_id: str) -> Path:
    """``OUT/cases/<case_id>/report.json``: written last, so a case that has it is done (and skipped on resume)."""
    return Path(out_dir) / "cases" / case_id / "report.json"


def process_cohort_case(case: CohortCase, model: str, device: str, out_dir: str,
                        dicom: tuple[bool, bool] = (False, False), precision: str | None = None) -> dict[str, Any]:
    """Run one case (in any process); returns a status record, never raises for bad input.

    ``dicom``: (write the DICOM SEG, write the DICOM SR) for cases whose first input is a DICOM series;
    ``precision``: the execution policy (None: measured once per machine and model).
    """
    report = _case_report(out_dir, case.case_id)
    folder = report.parent
    if report.is_file():
        return {"case_id": case.case_id, "status": "skipped"}
    t0 = time.perf_counter()
    try:
        segmenter = cached_segmenter(model, device, precision=precision)
        process_case(segmenter, case.inputs, folder, case.reference, case.series, dicom_seg=dicom[0], dicom_sr=dicom[1],
                     reference_labels=case.reference_labels, brain_mask=case.brain_mask,
                     brain_mask_from=case.brain_mask_from)
    except MedCNNCADError as exc:
        return {"case_id": case.case_id, "status": "failed", "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - one broken case must not stop the cohort
        return {"case_id": case.case_id, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    return {"case_id": case.case_id, "status": "done", "seconds": round(time.perf_counter() - t0, 3)}


def _run_serial(cases: Sequence[CohortCase], model: str, device: str, out_dir: str, bar,
                dicom: tuple[bool, bool], precision: str | None) -> list[dict]:
    statuses = []
    for case in cases:
        statuses.append(process_cohort_case(case, model, device, out_dir, dicom, precision))
        bar.update(1)
    return statuses


def local_cluster(workers: int) -> Any:
    """The local Dask cluster a cohort runs on: ``workers`` processes, one case at a time each. Dask's nanny gives each
    process a thread budget of 1 (``OMP_NUM_THREADS``), which torch and the clinical chain's registrations
    (:func:`medcnncad.preprocessing.chain.registration_workers`) keep to."""
    from dask.distributed import LocalCluster

    return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)


def _run_dask(cases: Sequence[CohortCase], model: str, device: str, out_dir: str, bar,
              scheduler: str | None, workers: int, dicom: tuple[bool, bool], precision: str | None) -> list[dict]:
    from dask.distributed import Client, as_completed

    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        # a local cluster's processes read this machine's policy cache: decide it here, once, before they
        # start, so that no worker calibrates while the others run cases on the same cores
        if any(not _case_report(out_dir, case.case_id).is_file() for case in cases):
            try:
                decide_policy_once(model, device, precision)
            except Exception as exc:  # noqa: BLE001 - the cases then fail (or calibrate) one by one, as serially
                print(f"execution policy not decided before the workers start: {exc}", file=sys.stderr)
        cluster = local_cluster(workers)
        client = Client(cluster)
    try:
        futures = [client.submit(process_cohort_case, case, model, device, out_dir, dicom, precision,
                                 key=f"case-{case.case_id}", pure=False) for case in cases]
        statuses = []
        for future in as_completed(futures):
            statuses.append(future.result())
            bar.update(1)
        return statuses
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_cohort(cases: Sequence[CohortCase], model: str, out_dir: str | Path, device: str = "auto",
               scheduler: str | None = None, workers: int = 2, serial: bool = False,
               dicom_seg: bool = False, dicom_sr: bool = False, precision: str | None = None) -> dict[str, Any]:
    """Run every case (skipping finished ones), then write cohort.csv, failures.csv and the summary.

    ``serial`` runs in this process; otherwise on dask.distributed: the scheduler at
    ``scheduler`` (``tcp://host:port``), or a local cluster of ``workers`` processes. ``dicom_seg`` /
    ``dicom_sr`` add each case's DICOM SEG / SR (TID 1500) where its first input is a DICOM series;
    ``precision``: the execution policy (None: measured once per machine and model; ``MEDCNNCAD_PRECISION``).
    """
    dicom = (dicom_seg or dicom_sr, dicom_sr)
    precision = precision or default_precision()  # here, so that every worker runs the caller's (a bad one: exit 2)
    out = Path(out_dir)
    (out / "cases").mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(cases), desc="cases", unit="case") as bar:
        if serial:
            statuses = _run_serial(cases, model, device, str(out), bar, dicom, precision)
        else:
            statuses = _run_dask(cases, model, device, str(out), bar, scheduler, workers, dicom, precision)
    by_id = {s["case_id"]: s for s in statuses}
    failures = [by_id[c.case_id] for c in cases if by_id[c.case_id]["status"] == "failed"]
    _write_csv(out / "failures.csv", ["case_id", "error"], ([f["case_id"], f["error"]] for f in failures))
    reports = {c.case_id: json.loads(_case_report(out, c.case_id).read_text())
               for c in cases if _case_report(out, c.case_id).is_file()}
    rows = cohort_rows(cases, reports)
    _write_csv(out / "cohort.csv", list(rows[0]) if rows else ["case_id"], (list(r.values()) for r in rows))
    summary = summarize(cases, reports)
    summary["failed_cases"] = [f["case_id"] for f in failures]
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(summary_markdown(summary))
    return summary


def _write_csv(path: Path, header: list[str], rows: Iterable[list[Any]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)


# -- statistics --------------------------------------------------------------------------------------

def cohort_rows(cases: Sequence[CohortCase], reports: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per case and structure: metrics, lesion counts, case probability and label."""
    rows = []
    for case in cases:
        report = reports.get(case.case_id)
        if report is None:
            continue
        for structure, m in (report.get("metrics") or {"(no reference)": {}}).items():
            lesions = m.get("lesions") or {}
            rows.append({"case_id": case.case_id, "structure": structure, **{k: m.get(k) for k in METRICS},
                         "reference_lesions": lesions.get("reference_lesions"),
                         "detected_lesions": lesions.get("true_positive"),
                         "false_positive_lesions": lesions.get("false_positive"),
                         "abnormality_probability": report["case"]["abnormality_probability"],
                         "label": case.label})
    return rows


def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, seed: int = 0,
                 statistic=np.mean) -> tuple[float, float] | None:
    """Percentile bootstrap 95 % CI of ``statistic`` over cases (None for fewer than 2 values)."""
    data = np.asarray([v for v in values if v is not None], dtype=float)
    if len(data) < 2:
        return None
    rng = np.random.default_rng(seed)
    samples = statistic(data[rng.integers(0, len(data), size=(n_boot, len(data)))], axis=1)
    low, high = np.percentile(samples, [2.5, 97.5])
    return float(low), float(high)


def _classification(cases: Sequence[CohortCase], reports: dict[str, dict]) -> dict[str, Any] | None:
    pairs = [(reports[c.case_id]["case"]["abnormality_probability"], c.label) for c in cases
             if c.label is not None and c.case_id in reports]
    if not pairs or len({y for _, y in pairs}) < 2:
        return None

    p = np.array([x for x, _ in pairs])
    y = np.array([t for _, t in pairs])
    rng = np.random.default_rng(0)
    aucs = []
    for _ in range(2000):
        idx = rng.integers(0, len(y), len(y))
        if len(set(y[idx])) == 2:
            aucs.append(roc_auc_score(y[idx], p[idx]))
    return {"cases": len(y), "auc": float(roc_auc_score(y, p)),
            "auc_ci95": [float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5))] if aucs else None,
            "brier": float(np.mean((p - y) ** 2)), "ece_10_bins": expected_calibration_error(p, y),
            "score": "case abnormality probability (report.json 'case')"}


def summarize(cases: Sequence[CohortCase], reports: dict[str, dict]) -> dict[str, Any]:
    """Per structure and metric: n, mean, median, bootstrap 95 % CI over the cases where it is defined, and how many
    it is not (``undefined``: a distance with one side empty, i.e. a structure missed or predicted where the
    reference has none; both empty count as 0 mm, as in BraTS); lesion detection; classification."""
    structures: dict[str, dict[str, Any]] = {}
    per_structure: dict[str, list[dict]] = {}
    for case in cases:
        for name, m in (reports.get(case.case_id, {}).get("metrics") or {}).items():
            per_structure.setdefault(name, []).append(m)
    for name, items in per_structure.items():
        entry: dict[str, Any] = {}
        for metric in METRICS:
            values = [m[metric] for m in items if m.get(metric) is not None]
            entry[metric] = {"n": len(values), "undefined": len(items) - len(values),
                             "mean": float(np.mean(values)) if values else None,
                             "median": float(np.median(values)) if values else None,
                             "ci95": bootstrap_ci(values)}
        entry.update(pooled_detection([m["lesions"] for m in items if m.get("lesions")]))
        entry.update(pooled_detection([m["lesions_brats2023"] for m in items if m.get("lesions_brats2023")],
                                      "_brats2023"))
        structures[name] = entry
    return {"cases": len(cases), "completed": len(reports), "structures": structures,
            "classification": _classification(cases, reports)}


def _undefined(metric: dict[str, Any]) -> str:
    """" (k of N cases undefined: one side empty)" for a summary metric left out of some cases, else ""."""
    k = metric.get("undefined") or 0
    return f" ({k} of {k + metric['n']} undefined: one side empty)" if k else ""


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown tables."""
    f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"# Cohort summary\n\n{summary['completed']} of {summary['cases']} cases completed; failed: "
             f"{', '.join(summary.get('failed_cases', [])) or 'none'}.\n",
             "| structure | Dice mean [95 % CI] | Dice median | HD95 median (mm) | lesion sensitivity "
             "| FP lesions / case | BraTS 2023 sensitivity | BraTS 2023 FP / case | BraTS 2023 lesion-wise Dice |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, s in summary["structures"].items():
        ci = s["dice"]["ci95"]
        lines.append(f"| {name} | {f(s['dice']['mean'])} [{f(ci[0]) if ci else 'n/a'}, {f(ci[1]) if ci else 'n/a'}] "
                     f"| {f(s['dice']['median'])} | {f(s['hd95_mm']['median'])}{_undefined(s['hd95_mm'])} | "
                     f"{f(s['lesion_sensitivity'])} | "
                     f"{f(s['false_positive_lesions_per_case'])} | {f(s.get('lesion_sensitivity_brats2023'))} | "
                     f"{f(s.get('false_positive_lesions_per_case_brats2023'))} | "
                     f"{f(s.get('lesionwise_dice_mean_brats2023'))} |")
    c = summary.get("classification")
    if c:
        lines += ["", f"Case-level abnormality ({c['cases']} labelled cases): AUC {c['auc']:.3f} "
                  f"[{f(c['auc_ci95'][0]) if c['auc_ci95'] else 'n/a'}, "
                  f"{f(c['auc_ci95'][1]) if c['auc_ci95'] else 'n/a'}], Brier {c['brier']:.3f}, "
                  f"ECE {c['ece_10_bins']:.3f}"]
    return "\n".join(lines) + "\n"
