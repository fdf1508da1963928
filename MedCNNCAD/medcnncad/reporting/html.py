"""Self-contained HTML reports (and PDF through headless Chromium) for a case and a cohort.

A case report shows the model's intended-use statement and training data (its banner, with the package's
second-reader statement), the model's provenance (id, version, SHA-256,
device), the case-level probability, the run's warnings (notes), slice screenshots of the image
with the AI segmentation and the reference (rendered by a caller-given ``screenshots`` function,
e.g. Slicer's slice pipeline from :mod:`medcnncad.slicer.screenshots`, and the matplotlib
overlay), the lesion table and the metric table (with the BraTS 2023 lesion-wise Dice). A cohort
report adds Dice box plots, ROC, reliability diagram and a Bland-Altman plot of volumes.
Images are embedded as data URIs, so one file is the whole report.
"""

from __future__ import annotations

import base64
import html
import io
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_curve

from medcnncad import INTENDED_USE
from medcnncad.inference.scoring import calibration_words
from medcnncad.io.images import atomic_path
from medcnncad.io.json_files import read_json_object
from medcnncad.reporting.case_outputs import brain_mask_caption, model_statement, overlay_caption
from medcnncad.reporting.input_files import unchanged_inputs

__all__ = ["case_report", "cohort_report", "html_to_pdf", "find_chromium", "Screenshots"]

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
.banner{background:#fff3cd;border:1px solid #e0b400;padding:.6em 1em;font-weight:600}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:.3em 0}
.small{color:#666;font-size:.85em}"""

_ONLOAD = """<script>window.addEventListener('load',function(){var i=document.images,n=0;
for(var k=0;k<i.length;k++){if(i[k].complete&&i[k].naturalWidth>0){n++;}}
document.body.setAttribute('data-images-total',i.length);document.body.setAttribute('data-images-loaded',n);});
</script>"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    fmt = lambda v: "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else html.escape(str(v)))  # noqa
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _banner(report: Mapping[str, Any] | None) -> str:
    """The intended-use banner: the model's own text and what it was trained on (from a case's report.json), then
    the package's statement; the package's alone without a report."""
    if report is None:
        return f"<p class='banner'>{html.escape(INTENDED_USE)}</p>"
    lines = model_statement(report.get("intended_use") or "", report["model"].get("trained_on") or "")
    lines += [INTENDED_USE] if INTENDED_USE not in lines else []
    return "<p class='banner'>" + "<br>".join(html.escape(line) for line in lines) + "</p>"


def _page(title: str, body: str, report: Mapping[str, Any] | None = None) -> str:
    """A whole HTML page; ``report``: the case report.json whose model the banner names."""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style>{_ONLOAD}</head><body><h1>{html.escape(title)}</h1>"
            f"{_banner(report)}{body}</body></html>")


def _classification_section(report: dict) -> list[str]:
    """Lesion classes (calibrated), the case rule and the uncertainty note, when present."""
    out = []
    c = report.get("classification")
    if c:
        positive = c["positive_class"]
        out += [f"<h2>Lesion classification ({html.escape(c['model']['id'])} {html.escape(c['model']['version'])}, "
                f"trained on: {html.escape(c['model']['trained_on'])})</h2>",
                _table(["structure", "lesion", *[f"P({k})" for k in c["classes"]], "predicted", "uncertainty (TTA)"],
                       [(c["structure"], les["lesion_id"], *[les["probabilities"][k] for k in c["classes"]],
                         les["predicted"], les["uncertainty"]) for les in c["lesions"]]),
                _table([f"case P({positive})", "case prediction", "rule"],
                       [(c["case"][f"probability_{positive}"], c["case"]["predicted"], c["case"]["rule"])]),
                f"<p class='small'>calibration: {html.escape(str(c['calibration']))}; operating point "
                f"{html.escape(str(c['operating_point']))}</p>"]
    if report.get("uncertainty"):
        u = report["uncertainty"]
        out.append(f"<p class='small'>uncertainty map: {html.escape(u['method'])}; {html.escape(u['map'])}; "
                   f"cost {html.escape(u['cost'])}</p>")
    return out


def _calibration_cell(case: dict) -> str:
    """Whether the case probability is calibrated, with what it was fitted on (its share of tumor
    cases matters to the reader) or why there is none."""
    detail = case.get("calibration_fitted_on") or case.get("calibration_note", "")
    return calibration_words(case) + (f" ({detail})" if detail else "")


def _brain_mask_file_rows(report: dict) -> list[tuple[str, str]]:
    """The reader's brain mask file of the run (``--brain-mask``), with its SHA-256 where it is a file: which mask
    bounded the result, as the weights' row says which model made it; none for a run without one."""
    given = report.get("brain_mask_file")
    if not isinstance(given, dict) or "path" not in given:
        return []
    sha = given.get("sha256")
    return [("brain mask given", str(given["path"]) + (f" (SHA-256 {sha})" if sha else " (a DICOM folder)"))]


def _notes_section(warnings: list[str] | None) -> list[str]:
    """The run's warnings (absent sequences, labels the post-processing moved, ...), as the command line
    prints them; nothing when there are none."""
    if not warnings:
        return []
    items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    return [f"<h2>Notes on this run</h2><ul>{items}</ul>"]


Screenshots = Callable[[Path, dict], list[tuple[str, bytes]]]
"""``(case folder, report.json as a dict) -> [(title, PNG bytes)]``; raises FileNotFoundError when it cannot render."""


def _screenshots(case_dir: Path, report: dict,
                 screenshots: Screenshots | None) -> tuple[list[tuple[str, bytes]], list[str]]:
    """The rendered views of the input files that are as the run read them (:func:`unchanged_inputs`: typed relative
    paths, moved or rewritten files are left out), and one note per file left out."""
    if screenshots is None:
        return [], []
    checked, skipped = unchanged_inputs(report)
    try:
        return screenshots(case_dir, checked), skipped
    except FileNotFoundError:
        return [], skipped


def case_report(case_dir: str | Path, screenshots: Screenshots | None = None,
                similar: Sequence[Mapping[str, Any]] | None = None) -> Path:
    """Write ``report.html`` for a case folder written by ``medcnncad segment``; returns its path.

    Args:
        case_dir: the case's output folder (``report.json``, ``overlay.png``, ``labels.seg.nrrd``).
        screenshots: renders slice views for the report, e.g.
            :func:`medcnncad.slicer.screenshots.case_screenshots` (Slicer's own slice pipeline, needs
            ``slicer-core``); ``None`` or a FileNotFoundError from it: the matplotlib overlay only. It is given
            the report with only the input files (and reference) still as the run read them, and the report notes
            each one left out (:func:`medcnncad.reporting.input_files.unchanged_inputs`).
        similar: the nearest library cases, one row each, or lesions
            (:meth:`medcnncad.retrieval.library.Neighbour.to_json`: rank, distance, case_id, lesion_id, volume_ml,
            metadata, thumbnail path) for a "Similar cases" section.

    Returns:
        The path of ``report.html`` inside ``case_dir`` (written atomically).
    """
    case_dir = Path(case_dir)
    report = read_json_object(case_dir / "report.json", "a MedCNNCAD case report.json", ("model",))
    model = report["model"]
    shots, skipped = _screenshots(case_dir, report, screenshots)
    shots.append((overlay_caption(report.get("reference") is not None), (case_dir / "overlay.png").read_bytes()))
    mask_step = next((s for s in report.get("clinical_preprocessing") or () if s.get("step") == "brain_mask"
                      and s.get("applied")), None)
    if mask_step is not None and (case_dir / "brain_mask.png").is_file():  # the mask the model was shown
        shots.append((brain_mask_caption(mask_step), (case_dir / "brain_mask.png").read_bytes()))
    body = [f"<p class='small'>case folder {html.escape(str(case_dir))}; created {html.escape(report['created'])}</p>",
            "<h2>Model</h2>", _table(["field", "value"], [
                ("model", f"{model['name']} ({model['id']} {model['version']})"),
                ("weights SHA-256", model["weights_sha256"]), ("trained on", model["trained_on"]),
                ("format and weights", model.get("source", "MedCNNCAD manifest")),
                ("device", report["device"]), *_brain_mask_file_rows(report),
                ("total time (s)", f"{sum(report['timings_s'].values()):.2f}")]),
            "<h2>Case</h2>", _table(["abnormality probability", "calibration", "rule"],
                                    [(report["case"]["abnormality_probability"], _calibration_cell(report["case"]),
                                      report["case"]["rule"])])]
    body += _notes_section(report.get("warnings"))
    body += ["<h2>Images</h2>"] + [f"<p class='small'>Slicer views: {html.escape(note)}</p>" for note in skipped]
    body += [f"<h3>{html.escape(t)}</h3>{_img(png, t)}" for t, png in shots]
    body += ["<h2>Lesions</h2>", _table(
        ["structure", "id", "volume mL", "longest diameter mm", "mean P", "max P", "R", "A", "S"],
        [(les["structure"], les["id"], les["volume_ml"], les["longest_diameter_mm"], les["mean_probability"],
          les["max_probability"], *les["centroid_ras_mm"]) for les in report["lesions"]])]
    if "lesion_filter" in report:
        body.append(f"<p class='small'>{html.escape(_filter_text(report['lesion_filter']))}</p>")
    body += _removed_section(report.get("removed_candidates"))
    body += _classification_section(report)
    body += _similar_section(case_dir, report, similar)
    if "metrics" in report:
        keys = ["dice", "jaccard", "precision", "recall", "specificity", "hd95_mm", "assd_mm", "volume_diff_ml"]
        body += ["<h2>Agreement with the reference</h2>",
                 _table(["structure", *keys, "lesion-wise Dice (BraTS 2023)"],
                        [(name, *[m[k] for k in keys], (m.get("lesions_brats2023") or {}).get("lesionwise_dice"))
                         for name, m in report["metrics"].items()]),
                 f"<p class='small'>{html.escape(report['lesion_detection_rule'])}</p>"]
        if "lesion_detection_rule_brats2023" in report:
            body.append(f"<p class='small'>Also in report.json (lesions_brats2023): "
                        f"{html.escape(report['lesion_detection_rule_brats2023'])}</p>")
    path = case_dir / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text(_page(f"MedCNNCAD case report - {model['id']}", "".join(body), report), encoding="utf-8")
    return path


def _thumb(path: str | Path | None, alt: str) -> str:
    return _img(Path(path).read_bytes(), alt) if path and Path(path).is_file() else "n/a"


def _similar_section(case_dir: Path, report: dict, similar: Sequence[Mapping[str, Any]] | None) -> list[str]:
    """The k nearest library cases (or lesions): thumbnail, distance, case, metadata (empty without a library)."""
    if not similar:
        return []
    keys = sorted({k for n in similar for k in n["metadata"]})
    query = max(report.get("retrieval", {}).get("lesions", []), key=lambda les: les["volume_ml"], default=None)
    head = ""
    if query is not None:
        thumb = _thumb(case_dir / "lesion_{}.png".format(query["lesion_id"]), "query lesion")
        head = (f"<p>query: {html.escape(report['retrieval']['structure'])} lesion {query['lesion_id']} "
                f"({query['volume_ml']:.2f} mL) {thumb}</p>")
    noted = any(n.get("inputs_note") for n in similar)
    rows = "".join("<tr>" + "".join(f"<td>{v}</td>" for v in (
        n["rank"], f"{n['distance']:.3f}", html.escape(n["case_id"]), n["lesion_id"], f"{n['volume_ml']:.2f}",
        *(html.escape(str(n["metadata"].get(k, ""))) for k in keys), _thumb(n["thumbnail"], n["case_id"]),
        *([html.escape(n.get("inputs_note") or "")] if noted else []))) + "</tr>"
        for n in similar)
    names = ["rank", "distance", "case", "lesion", "volume mL", *keys, "thumbnail", *(["note"] if noted else [])]
    header = "".join(f"<th>{html.escape(h)}</th>" for h in names)
    return ["<h2>Similar cases</h2>", head, f"<table><tr>{header}</tr>{rows}</table>",
            f"<p class='small'>{_similar_rows_text(similar)} by the retrieval descriptors "
            "(docs/retrieval.md); similar appearance, not a diagnosis.</p>", *_inputs_caveat(noted)]


def _inputs_caveat(noted: bool) -> list[str]:
    """Why a note on other input sequences matters (nothing when no row has one)."""
    if not noted:
        return []
    return ["<p class='small'>A case segmented from other input sequences is not compared on equal terms: an absent "
            "sequence gives zeros in the intensity descriptors and changes the segmentation that is described.</p>"]


def _similar_rows_text(similar: Sequence[Mapping[str, Any]]) -> str:
    """What the rows of a "Similar cases" table are: one per library case, or lesions of fewer cases."""
    cases = len({n["case_id"] for n in similar})
    if cases == len(similar):
        return "The nearest cases of the case library, one row each (its lesion nearest to the query),"
    return f"The nearest lesions of the case library ({len(similar)} lesions of {cases} cases)"


def _figure_png(draw) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    draw(ax)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _cohort_plots(reports: dict[str, dict], labels: dict[str, int | None]) -> list[tuple[str, bytes]]:
    structures = sorted({s for r in reports.values() for s in r.get("metrics", {})})
    plots = []
    if structures:
        data = [[r["metrics"][s]["dice"] for r in reports.values() if s in r.get("metrics", {})] for s in structures]
        plots.append(("Dice per structure", _figure_png(lambda ax: (ax.boxplot(data, tick_labels=structures),
                                                                     ax.set_ylabel("Dice")))))
        region = "WT" if "WT" in structures else structures[0]
        pred = np.array([r["metrics"][region]["predicted_volume_ml"] for r in reports.values()
                         if region in r.get("metrics", {})])
        ref = np.array([r["metrics"][region]["reference_volume_ml"] for r in reports.values()
                        if region in r.get("metrics", {})])

        def bland_altman(ax):
            mean, diff = (pred + ref) / 2, pred - ref
            ax.scatter(mean, diff, s=12)
            for y in (diff.mean(), diff.mean() + 1.96 * diff.std(), diff.mean() - 1.96 * diff.std()):
                ax.axhline(y, linestyle="--", linewidth=0.8, color="grey")
            ax.set_xlabel(f"mean {region} volume (mL)")
            ax.set_ylabel("AI - reference (mL)")

        plots.append((f"Bland-Altman, {region} volume", _figure_png(bland_altman)))
    pairs = [(reports[c]["case"]["abnormality_probability"], y) for c, y in labels.items()
             if y is not None and c in reports]
    if len({y for _, y in pairs}) == 2:
        p, y = np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
        fpr, tpr, _ = roc_curve(y, p)
        plots.append(("ROC, case abnormality", _figure_png(lambda ax: (ax.plot(fpr, tpr), ax.plot([0, 1], [0, 1], ":"),
                                                                        ax.set_xlabel("1 - specificity"),
                                                                        ax.set_ylabel("sensitivity")))))
        edges = np.linspace(0, 1, 11)
        index = np.clip(np.digitize(p, edges[1:-1], right=True), 0, 9)
        centers = [p[index == b].mean() for b in range(10) if (index == b).any()]
        observed = [y[index == b].mean() for b in range(10) if (index == b).any()]
        plots.append(("Reliability diagram", _figure_png(lambda ax: (ax.plot([0, 1], [0, 1], ":"),
                                                                      ax.plot(centers, observed, "o-"),
                                                                      ax.set_xlabel("predicted probability"),
                                                                      ax.set_ylabel("observed frequency")))))
    return plots


def cohort_report(out_dir: str | Path, labels: dict[str, int | None] | None = None) -> Path:
    """Write ``report.html`` for a cohort folder written by ``medcnncad batch``."""
    out_dir = Path(out_dir)
    summary = read_json_object(out_dir / "summary.json", "a MedCNNCAD cohort summary.json", ("structures",))
    reports = {p.parent.name: read_json_object(p, "a MedCNNCAD case report.json", ("model",))
               for p in sorted((out_dir / "cases").glob("*/report.json"))}
    first = next(iter(reports.values()), None)
    body = []
    if first:
        m = first["model"]
        body.append(_table(["model", "version", "weights SHA-256", "trained on"],
                           [(m["id"], m["version"], m["weights_sha256"], m["trained_on"])]))
    body.append(f"<p>{summary['completed']} of {summary['cases']} cases completed; failed: "
                f"{html.escape(', '.join(summary.get('failed_cases', [])) or 'none')}</p>")
    rows = []
    for name, s in summary["structures"].items():
        ci = s["dice"]["ci95"] or [None, None]
        rows.append((name, s["dice"]["mean"], ci[0], ci[1], s["dice"]["median"], s["hd95_mm"]["median"],
                     s["hd95_mm"].get("undefined"), s["lesion_sensitivity"], s["false_positive_lesions_per_case"]))
    body.append(_table(["structure", "Dice mean", "CI low", "CI high", "Dice median", "HD95 median mm",
                        "HD95 undefined (one side empty)", "lesion sensitivity", "FP lesions/case"], rows))
    c = summary.get("classification")
    if c:
        body.append(_table(["cases", "AUC", "AUC CI", "Brier", "ECE"],
                           [(c["cases"], c["auc"], str(c["auc_ci95"]), c["brier"], c["ece_10_bins"])]))
    body += [f"<h2>{html.escape(t)}</h2>{_img(png, t)}" for t, png in _cohort_plots(reports, labels or {})]
    path = out_dir / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text(_page("MedCNNCAD cohort report", "".join(body), first), encoding="utf-8")
    return path


def find_chromium() -> str | None:
    """A headless-capable Chromium/Chrome on PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def html_to_pdf(html_path: str | Path, pdf_path: str | Path | None = None, timeout: float = 120) -> Path:
    """Print a report to PDF with headless Chromium (raises FileNotFoundError without Chromium)."""
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("Chromium is not installed: the PDF needs it (the HTML report is complete)")
    html_path = Path(html_path)
    pdf_path = Path(pdf_path) if pdf_path else html_path.with_suffix(".pdf")
    with tempfile.TemporaryDirectory() as profile, atomic_path(pdf_path) as tmp:
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--no-pdf-header-footer",
                        f"--print-to-pdf={tmp}", html_path.resolve().as_uri()],
                       check=True, capture_output=True, timeout=timeout)
    return pdf_path


def _filter_text(lesion_filter: dict) -> str:
    """One sentence on which components the model's post-processing removed."""
    classifier = lesion_filter.get("classifier")
    second = (f" and that the lesion filter (a second-stage logistic model) scores at least "
              f"{classifier['min_probability']:g}"
              if classifier else "")
    mode = ", chosen with test-time augmentation" if lesion_filter.get("chosen_with_test_time_augmentation") else ""
    return (f"Shown: components of at least {lesion_filter['min_volume_ml']:g} mL whose largest foreground "
            f"probability is at least {lesion_filter['min_max_probability']:g}{second} (model post-processing"
            f"{mode}); "
            "smaller or less certain ones remain visible in the probability maps." + _vessel_text(lesion_filter)
            + _floors_text(lesion_filter)
            + _refinement_text(lesion_filter.get("core_refinement")))


def _refinement_text(spec: dict | None) -> str:
    """One sentence on the model's tumor core refinement (none: empty)."""
    if not spec:
        return ""
    fixed = f", when {' and '.join(spec['fixed_labels'])} is under {spec['max_fixed_share']:g} of the core" \
        if spec["fixed_labels"] else ""
    return (f" With {', '.join(spec['required_inputs'])} present{fixed}, the {spec['core_label']} / "
            f"{spec['shell_label']} boundary is re-read in the case's own contrast (clusters of the smoothed "
            "inputs voting with the network; the probability maps are the network's).")


def _removed_section(removed: dict | None) -> list[str]:
    """A sentence and a table on the candidates post-processing removed (nothing when none were)."""
    if not removed or not removed["count"]:
        return []
    stages = ", ".join(f"{n} by {stage}" for stage, n in removed["by_stage"].items())
    shown = len(removed["largest"])
    rows = [(c["stage"], c["volume_ml"], c["max_probability"], c["classifier_probability"], *c["centroid_ras_mm"])
            for c in removed["largest"]]
    return [f"<h3>Candidates removed by post-processing</h3><p class='small'>{removed['count']} candidate "
            f"component(s) removed ({html.escape(stages)}); the {shown} largest are listed. They remain visible in "
            "the probability maps: look there before ruling a finding out.</p>",
            _table(["removed by", "volume mL", "max P", "classifier P", "R", "A", "S"], rows)]


def _vessel_text(lesion_filter: dict) -> str:
    """One sentence on the model's vessel filter (none: empty)."""
    spec = lesion_filter.get("vessel_filter")
    if not spec:
        return ""
    return (f" Components of at least {spec['min_ml']:g} mL that are thin (largest inscribed radius at most "
            f"{spec['max_radius_mm']:g} mm), long (at least {spec['min_length_mm']:g} mm), solid and mostly "
            f"{'/'.join(spec['enhancing_labels'])} are removed as dural sinus or vessel mimics.")


def _floors_text(lesion_filter: dict) -> str:
    """One sentence per label volume floor of the model (none: empty)."""
    return "".join(f" {f['name']} is relabelled {f['replace_with_name']} when its total volume is below "
                   f"{f['min_ml']:g} mL." for f in lesion_filter.get("label_volume_floors", []))
