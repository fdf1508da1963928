"""The module's .ui in real Qt (PySide6, offscreen), with stand-ins for Slicer's and CTK's widget classes.

What this proves: the .ui file loads in Qt; every ``self.ui.<name>`` the Widget uses exists, with the class
the Widget treats it as; every ``SlicerParameterName`` names a field of the parameter node (and each bound
field has one widget); every signal/slot connection written in the .ui resolves in Qt except the
``mrmlSceneChanged(vtkMRMLScene*)`` ones, whose C++ argument type a Python stand-in cannot declare.

The Widget itself is driven in ``test_widget_driven.py``; what the stand-ins cannot prove is listed in
``slicer_qt_harness.py``.
"""

from __future__ import annotations

import ast
import os
import re
import xml.etree.ElementTree as ET

import pytest
from conftest import ROOT
from slicer_qt_harness import (  # noqa: E402 - the stand-ins, shared with the driven Widget tests
    STAND_INS,
    QtCore,
    QtUiTools,
    QtWidgets,
    ctkSliderWidget,
    qMRMLTableView,
)

MODULE = ROOT / "MedCNNCAD" / "MedCNNCAD.py"
UI = ROOT / "MedCNNCAD" / "Resources" / "UI" / "MedCNNCAD.ui"


@pytest.fixture(scope="module")
def loaded():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    messages: list[str] = []
    previous = QtCore.qInstallMessageHandler(lambda mode, context, text: messages.append(text))
    try:
        loader = QtUiTools.QUiLoader()
        for cls in STAND_INS:
            loader.registerCustomWidget(cls)
        file = QtCore.QFile(str(UI))
        assert file.open(QtCore.QFile.ReadOnly)
        widget = loader.load(file)
        file.close()
    finally:
        QtCore.qInstallMessageHandler(previous)
    assert widget is not None, loader.errorString()
    yield app, widget, messages
    widget.deleteLater()


def _children(widget) -> dict[str, object]:
    return {w.objectName(): w for w in widget.findChildren(QtCore.QObject) if w.objectName()}


def test_the_ui_loads_in_real_qt_and_every_widget_the_module_uses_exists_with_its_class(loaded):
    _, widget, _ = loaded
    children = _children(widget)
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE.read_text(encoding="utf-8")))
    assert used and not sorted(used - set(children)), sorted(used - set(children))
    expected = {"applyButton": QtWidgets.QPushButton, "modelComboBox": QtWidgets.QComboBox,
                "probabilityThresholdSlider": ctkSliderWidget, "lesionTableView": qMRMLTableView,
                "discordanceTableView": qMRMLTableView, "progressBar": QtWidgets.QProgressBar}
    for name, cls in expected.items():
        if name in used:
            assert isinstance(children[name], cls), (name, type(children[name]))


def _parameter_fields() -> set[str]:
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "MedCNNCADParameterNode")
    return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}


def test_every_slicer_parameter_name_is_a_parameter_node_field_bound_once(loaded):
    _, widget, _ = loaded
    bound = [w.property("SlicerParameterName") for w in widget.findChildren(QtWidgets.QWidget)
             if w.property("SlicerParameterName")]
    fields = _parameter_fields()
    assert bound and set(bound) <= fields, sorted(set(bound) - fields)
    assert len(bound) == len(set(bound)), bound  # one widget per field
    # the fields the Widget reads from the parameter node for a run all have a widget
    assert {"inputVolume0", "inputVolume1", "inputVolume2", "inputVolume3", "probabilityThreshold",
            "referenceSegmentation", "device", "trust", "classifyLesions", "testTimeAugmentation"} <= set(bound)


def test_every_connection_in_the_ui_resolves_but_the_mrml_scene_ones(loaded):
    _, _, messages = loaded
    failed = [m for m in messages if "No such signal" in m or "No such slot" in m]
    assert any("mrmlSceneChanged(vtkMRMLScene*)" in m for m in failed), messages  # Qt's checks were captured
    assert all("mrmlSceneChanged(vtkMRMLScene*)" in m for m in failed), failed



def test_every_node_selector_gets_the_scene_from_the_module():
    """A node selector or table view the .ui does not connect to ``mrmlSceneChanged`` has no scene in Slicer: it
    lists no node (the Brain mask selector offered nothing to choose; the similar-cases table had no connection)."""
    tree = ET.parse(UI)
    mrml = {w.get("name") for w in tree.iter("widget") if w.get("class") in ("qMRMLNodeComboBox", "qMRMLTableView")}
    given = {c.findtext("receiver") for c in tree.iter("connection")
             if c.findtext("sender") == "MedCNNCAD" and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
             and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert "brainMaskSelector" in mrml and "inputVolume0Selector" in mrml
    assert sorted(mrml - given) == []


def test_the_threshold_slider_emits_what_the_widget_listens_to(loaded):
    _, widget, _ = loaded
    slider = _children(widget)["probabilityThresholdSlider"]
    seen: list[float] = []
    slider.valueChanged.connect(seen.append)
    slider.setProperty("value", 0.7)
    assert seen == [pytest.approx(0.7)]
