"""The engine's architecture, checked: layers flow one way (import-linter contracts in pyproject.toml),
no import cycle between any two modules, and no import inside a function unless listed below with its
reason (docs/architecture.md keeps the same table)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

ENGINE = ROOT / "MedCNNCAD" / "medcnncad"

# (module, imported module prefix) -> why it is imported inside a function
LAZY_ALLOWED = {
    ("medcnncad.cli.cohort", "medcnncad.slicer.screenshots"): "slicer-core is optional outside Slicer",
    ("medcnncad.data.phantom", "nilearn"): "only phantom generation needs it (~2 s, pandas)",
    ("medcnncad.metrics.calibration", "matplotlib"): "the Agg backend is chosen before pyplot loads",
    ("medcnncad.reporting.case_outputs", "matplotlib"): "the Agg backend is chosen before pyplot loads",
    ("medcnncad.reporting.html", "matplotlib"): "the Agg backend is chosen before pyplot loads",
    ("medcnncad.slicer.render", "matplotlib"): "only the PNG writer needs it",
    ("medcnncad.reporting.case_outputs", "medcnncad.reporting.dicom_seg"):
        "highdicom/pydicom: ~1 s, only --dicom-seg needs them, Slicer's run path must not require them",
    ("medcnncad.reporting.case_outputs", "medcnncad.reporting.dicom_sr"): "as the DICOM SEG writer (highdicom)",
    ("medcnncad.pipeline.cohort", "dask"): "only non-serial cohort runs need dask.distributed",
    ("medcnncad.preprocessing.brain_mask", "deepbet"):
        "only brain extraction needs it (pandas, fill_voids); a clear error names it when missing",
    ("medcnncad.slicer.logic", "medcnncad"): "loads at Slicer start, before torch/MONAI are installed",
    ("medcnncad.slicer.logic", "torch"): "loads at Slicer start, before torch is installed",
    ("medcnncad.slicer.logic", "SimpleITK"): "loads at Slicer start; only the worker path needs it",
    ("medcnncad.slicer.logic", "PyTorchUtils"): "a Slicer extension, present only inside Slicer",
    ("medcnncad.models.nnunet", "nnunetv2"):
        "optional (pip install nnunetv2), slow to import; only nnU-Net model folders need it",
    ("medcnncad.slicer.logic", "DICOMLib"): "Slicer's DICOM module, present only inside Slicer",
    ("medcnncad.slicer.sample_data", "SampleData"): "Slicer's Sample Data module, present only inside Slicer",
    ("medcnncad.slicer.dicom_export", "medcnncad.reporting"):
        "highdicom/pydicom 3: only the export process imports them, from its private folder",
    ("medcnncad.slicer.worker", "psutil"): "optional: without it the process group / taskkill ends the tree",
    ("medcnncad.io.dicom_series", "pydicom"):
        "only a single DICOM file (an enhanced multi-frame object's frame positions) needs it; ~0.3 s to import",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ENGINE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _function_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom) and sub.module:
                    found.add(sub.module)
                elif isinstance(sub, ast.Import):
                    found.update(alias.name for alias in sub.names)
    return found


def test_imports_inside_functions_are_only_the_listed_ones():
    unexplained = []
    for path in sorted(ENGINE.rglob("*.py")):
        module = _module_name(path)
        for imported in _function_imports(path):
            if not any(module == m and (imported == p or imported.startswith(p + ".")) for m, p in LAZY_ALLOWED):
                unexplained.append(f"{module} imports {imported} inside a function")
    assert not unexplained, unexplained


def test_no_import_cycles_between_engine_modules():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("medcnncad", cache_dir=None)
    modules = sorted(m for m in graph.modules if m.startswith("medcnncad"))
    edges = {m: {d for d in graph.find_modules_directly_imported_by(m) if d.startswith("medcnncad")} for m in modules}
    # Tarjan's strongly connected components: a cycle is a component of more than one module
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for m in modules:
        if m not in index:
            visit(m)
    assert not cycles, cycles


def test_import_contracts_hold():
    """import-linter's layer and Slicer contracts (pyproject.toml [tool.importlinter])."""
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.skip("import-linter is not installed (make venv installs it)")
    done = subprocess.run([str(exe), "--no-cache", str(ROOT / "pyproject.toml")], cwd=ROOT / "MedCNNCAD",
                          capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_the_module_file_only_wires_the_logic():
    """MedCNNCAD.py imports the engine only through the Logic facade (and the default model id)."""
    tree = ast.parse((ROOT / "MedCNNCAD" / "MedCNNCAD.py").read_text(encoding="utf-8"))
    engine = sorted({node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                     and node.module and node.module.startswith("medcnncad")})
    assert engine == ["medcnncad.models.defaults", "medcnncad.slicer.logic"]
