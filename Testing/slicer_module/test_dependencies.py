"""What Slicer must install = what the Slicer run path imports (issue #23, item 3).

The run path: ``medcnncad.slicer.logic`` (the module's Logic), the worker and the adaptor, and every
engine module they import, at the top or inside functions (lazy imports included; ``TYPE_CHECKING``
blocks excluded). Derived twice: from the source (all branches) and from a real run in a subprocess
(what is really imported, by engine modules directly).
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import subprocess
import sys

from conftest import ROOT
from packaging.requirements import Requirement
from packaging.version import Version

from medcnncad.slicer.dependencies import (
    BRAIN_EXTRACTION_REQUIREMENTS,
    PIP_REQUIREMENTS,
    SLICER_SHIPPED,
    TORCH_VERSION,
    pip_install_arguments,
)

ENGINE = ROOT / "MedCNNCAD" / "medcnncad"
RUN_PATH = ("medcnncad.slicer.logic", "medcnncad.slicer.worker", "medcnncad.slicer.adaptor",
            "medcnncad.slicer.dependencies")
PROVIDED = {"torch"} | set(SLICER_SHIPPED) | {"PyTorchUtils", "SampleData", "DICOMLib"}  # extensions, Slicer modules
# engine modules that Slicer's Python never runs: they run in a child process with their own packages
OWN_PROCESS = {"medcnncad.slicer.dicom_export": "DICOM SEG/SR export: highdicom + pydicom 3 from a private folder"}
# imported inside functions of run-path modules that the run path never calls (the real-run test checks)
NOT_CALLED = {"matplotlib": "metrics.calibration.reliability_diagram: training/evaluation plots",
              "nnunetv2": "models.nnunet: only nnU-Net model folders; optional, a one-line error names it"}


def _file(module: str):
    path = ENGINE.parent.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _imports(module: str) -> set[str]:
    tree = ast.parse(_file(module).read_text(encoding="utf-8"))
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for child in node.body for n in ast.walk(child)}
    # optional imports (try: import x / except ImportError: a fallback, no raise), e.g. psutil in the worker client
    skip |= {id(n) for node in ast.walk(tree) if isinstance(node, ast.Try)
             and any("ImportError" in ast.unparse(h.type or ast.Name("")) and
                     not any(isinstance(r, ast.Raise) for r in ast.walk(h)) for h in node.handlers)
             for child in node.body for n in ast.walk(child)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}  # submodules imported by name
    return names


def _closure() -> tuple[set[str], set[str]]:
    """(engine modules reached, third-party top-level names they import)."""
    seen: set[str] = set()
    third: set[str] = set()
    todo = list(RUN_PATH)
    while todo:
        module = todo.pop()
        if module in seen or module in OWN_PROCESS or not _file(module).is_file():
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # package __init__ files run too
        for name in _imports(module):
            top = name.split(".")[0]
            if top == "medcnncad":
                todo.append(name)
            elif top not in sys.stdlib_module_names and top != "__future__":
                third.add(top)
    return seen, third


def test_requirements_are_exactly_the_run_paths_imports():
    modules, third = _closure()
    assert "medcnncad.inference.segmenter" in modules and "medcnncad.preprocessing.brain_mask" in modules
    assert "medcnncad.classification.grade" in modules
    needed = third - PROVIDED - set(NOT_CALLED)
    declared = set(PIP_REQUIREMENTS) | set(BRAIN_EXTRACTION_REQUIREMENTS)
    assert needed == declared, f"imported but not installed: {needed - declared}; installed but unused: " \
                               f"{declared - needed}"
    for unused in ("highdicom", "nilearn", "matplotlib", "tqdm", "dask", "SimpleITK", "numpy", "pydicom"):
        assert unused not in PIP_REQUIREMENTS, unused
    assert not any(m.startswith(("medcnncad.reporting", "medcnncad.training", "medcnncad.pipeline"))
                   for m in modules), sorted(modules)


def test_a_real_run_imports_nothing_else(tmp_path):
    import SimpleITK as sitk
    from helpers import small_phantom

    images, _ = small_phantom()
    paths = {}
    for name, image in images.items():  # written here: the subprocess only runs the worker's path
        paths[name] = str(tmp_path / f"{name}.nrrd")
        sitk.WriteImage(image, paths[name])
    code = f"""
import builtins, json, sys
direct = set()
real = builtins.__import__
def record(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and (globals or {{}}).get("__name__", "").startswith("medcnncad"):
        direct.add(name.split(".")[0])
    return real(name, globals, locals, fromlist, level)
builtins.__import__ = record
import importlib
for m in {RUN_PATH!r}:
    importlib.import_module(m)
from medcnncad.slicer.worker import _Server
import io, pathlib
out = pathlib.Path({str(tmp_path)!r})
paths = {paths!r}
server = _Server(io.StringIO())
server.segment({{"id": 1, "model": "demo", "device": "cpu", "classifier": "brats-grade-densenet",
                "inputs": paths, "out": str(out / "o")}})
assert (out / "o" / "result.json").is_file()
print(json.dumps(sorted(direct - set(sys.stdlib_module_names) - {{"medcnncad", "__future__"}})))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", errors="replace",
                          cwd=ROOT,
                          env={**__import__("os").environ, "PYTHONPATH": str(ENGINE.parent)})
    assert done.returncode == 0, done.stderr[-3000:]
    imported = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert "torch" in imported and "monai" in imported
    assert imported - PROVIDED <= set(PIP_REQUIREMENTS) | set(BRAIN_EXTRACTION_REQUIREMENTS), imported - PROVIDED
    assert not imported & set(NOT_CALLED)


def test_torch_requirement_is_monais():
    monai = [Requirement(r) for r in importlib.metadata.requires("monai") or []]
    torch = next(r for r in monai if r.name == "torch" and not r.marker)
    ours = Requirement("torch" + TORCH_VERSION)
    assert ours.specifier == torch.specifier, (ours, torch)
    assert Version(importlib.metadata.version("monai")) in Requirement(PIP_REQUIREMENTS["monai"]).specifier


def test_install_never_upgrades_what_slicer_ships():
    args = pip_install_arguments(["monai>=1.4,<1.7"])
    assert args[:3] == ["monai>=1.4,<1.7", "--upgrade-strategy", "only-if-needed"] and args[3] == "-c"
    pins = open(args[4]).read().split()
    assert f"numpy=={importlib.metadata.version('numpy')}" in pins
    assert f"SimpleITK=={importlib.metadata.version('SimpleITK')}" in pins
    assert f"torch=={importlib.metadata.version('torch')}" in pins  # PyTorchUtils' CUDA build stays


def test_deepbet_only_when_a_model_asks(monkeypatch, tmp_path):
    from medcnncad.models.registry import model_search_paths
    from medcnncad.slicer import dependencies

    monkeypatch.setenv("MEDCNNCAD_MODEL_PATH", str(tmp_path))
    roots = {f.parent for f in dependencies.model_folders()}
    assert roots <= set(model_search_paths())  # the same search paths as the registry
    assert dependencies.brain_extraction_requested()  # brats-robust-unet: clinical_preprocessing.brain_mask auto
    monkeypatch.setattr(dependencies, "model_folders", lambda: [ROOT / "Resources" / "Models" / "brats-demo-unet"])
    assert not dependencies.brain_extraction_requested()
