"""The extension as CMake installs it, without the repository (issue #23: "an installed extension lists no models").

The file lists and install rules are read from ``MedCNNCAD/CMakeLists.txt`` (not restated here):
the module script, the GLOB_RECURSE'd engine scripts and resources and the listed resources go to
``qt-scripted-modules/<relative path>`` (ctkMacroCompilePythonScript keeps relative paths), the
``foreach(resource_dir ...)`` folders to ``qt-scripted-modules/Resources/<dir>``. A subprocess with
that tree first on ``sys.path`` and the repository removed from it lists, describes and loads every
shipped model, runs every segmentation model on the sample case, and runs ``python -m medcnncad models``.

Not shown: byte-compilation, Slicer's own launcher paths, the PyTorch extension.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

MODULE_DIR = ROOT / "MedCNNCAD"
CMAKE = (MODULE_DIR / "CMakeLists.txt").read_text()


def _variables() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {"MODULE_NAME": re.findall(r"set\(MODULE_NAME (\w+)\)", CMAKE)}
    for var, pattern in re.findall(r"file\(GLOB_RECURSE (\w+) RELATIVE \$\{CMAKE_CURRENT_SOURCE_DIR\} (\S+)\)", CMAKE):
        folder, mask = pattern.split("/", 1)[0], pattern.rsplit("/", 1)[-1]
        values[var] = sorted(str(p.relative_to(MODULE_DIR)) for p in (MODULE_DIR / folder).rglob("*")
                             if p.is_file() and fnmatch.fnmatch(p.name, mask))
    for var, body in re.findall(r"set\((MODULE_PYTHON_\w+)\s+(.*?)\)\n", CMAKE, re.S):
        items: list[str] = []
        for token in body.split():
            expanded = [token]
            for name, vals in values.items():
                if f"${{{name}}}" in token:
                    expanded = vals if token == f"${{{name}}}" else [token.replace(f"${{{name}}}", vals[0])]
            items += expanded
        values[var] = items
    return values


def _install(tree: Path) -> Path:
    modules = tree / "lib" / "Slicer-5.10" / "qt-scripted-modules"
    v = _variables()
    files = v["MODULE_PYTHON_SCRIPTS"] + v["MODULE_PYTHON_RESOURCES"]
    assert "MedCNNCAD.py" in files and "medcnncad/models/schemas/manifest.schema.json" in files
    for rel in files:
        (modules / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(MODULE_DIR / rel, modules / rel)
    loop = re.search(r"foreach\(resource_dir ([\w ]+)\)(.*?)endforeach", CMAKE, re.S)
    assert loop and "DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/Resources" in loop.group(2)
    for name in loop.group(1).split():
        shutil.copytree(ROOT / "Resources" / name, modules / "Resources" / name)
    return modules


def test_every_engine_file_is_installed(tmp_path):
    modules = _install(tmp_path)
    for source in (MODULE_DIR / "medcnncad").rglob("*"):
        if source.is_file() and "__pycache__" not in source.parts:
            assert (modules / source.relative_to(MODULE_DIR)).is_file(), source


SCRIPT = r"""
import json, subprocess, sys
from pathlib import Path
tree, repo = Path(sys.argv[1]), Path(sys.argv[2])
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() not in (repo, repo / "MedCNNCAD")]  # editable .pth
sys.path.insert(0, str(tree))
import medcnncad
assert Path(medcnncad.__file__).resolve().is_relative_to(tree), medcnncad.__file__
from medcnncad.io.resources import resource_dir
from medcnncad.models.registry import describe_model, list_models, load_model
from medcnncad.classification.grade import cached_classifier
from medcnncad.inference.segmenter import Segmenter
import SimpleITK as sitk
sample = resource_dir("SampleData")
assert sample is not None and sample.resolve().is_relative_to(tree)
index = json.loads((sample / "MedCNNCADPhantom.json").read_text())["files"]
images = {n: sitk.ReadImage(str(sample / index[n]["file"])) for n in ("T1", "T1c", "T2", "FLAIR")}
report = {}
for folder in list_models():
    assert folder.resolve().is_relative_to(tree), folder
    m = describe_model(folder)
    if m.task == "segmentation":
        result = Segmenter(load_model(folder), "cpu").run(images)
        report[m.id] = int((result.label_map > 0).sum())
    else:
        cached_classifier(str(folder))
        report[m.id] = "loaded"
print(json.dumps(report))
"""


@pytest.mark.slow
def test_installed_tree_lists_loads_and_runs_every_shipped_model(tmp_path):
    modules = _install(tmp_path / "install")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MEDCNNCAD_MODEL_PATH")}
    env["HOME"] = str(tmp_path)  # no ~/.medcnncad/models of the developer
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(modules), str(ROOT)], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    shipped = {json.loads((p / "manifest.json").read_text())["id"] for p in (ROOT / "Resources" / "Models").iterdir()}
    assert set(report) == shipped, report
    assert all(v == "loaded" or v > 0 for v in report.values()), report  # every segmentation model finds the tumor
    listing = subprocess.run([sys.executable, "-c", "import runpy, sys; from pathlib import Path; "
                              f"sys.path[:] = [p for p in sys.path if Path(p or '.').resolve() not in "
                              f"(Path({str(ROOT)!r}), Path({str(MODULE_DIR)!r}))]; "
                              f"sys.path.insert(0, {str(modules)!r}); "
                              "sys.argv = ['medcnncad', 'models']; runpy.run_module('medcnncad', run_name='__main__')"],
                             capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert listing.returncode == 0, listing.stderr[-2000:]
    for model_id in shipped:
        assert model_id in listing.stdout
