"""The module's .ui in real Qt (PySide6, offscreen), with stand-ins for Slicer's and CTK's widget classes.

What this proves: the .ui file loads in Qt; every ``self.ui.<name>`` the Widget uses exists, with the class
the Widget treats it as; every ``SlicerParameterName`` names a field of the parameter node (and each bound
field has one widget); every signal/slot connection written in the .ui resolves in Qt except the
``mrmlSceneChanged(vtkMRMLScene*)`` ones, whose C++ argument type a Python stand-in cannot declare.

What the stand-ins cannot prove (checked only by the self-test inside Slicer): PythonQt's attribute-style
property access (``label.text = ...``) the Widget uses, the MRML behaviour of ``qMRMLNodeComboBox`` and
``qMRMLTableView``, and ``parameterNodeWrapper``'s GUI binding itself.
"""

from __future__ import annotations

import ast
import os
import re

import pytest
from conftest import ROOT

QtWidgets = pytest.importorskip("PySide6.QtWidgets", reason="PySide6-Essentials is not installed (make venv does)")
QtCore = pytest.importorskip("PySide6.QtCore")
QtUiTools = pytest.importorskip("PySide6.QtUiTools")

MODULE = ROOT / "MedCNNCAD" / "MedCNNCAD.py"
UI = ROOT / "MedCNNCAD" / "Resources" / "UI" / "MedCNNCAD.ui"


# -- stand-ins keeping the real class names, and the properties and signals the .ui and the Widget use ------
class ctkCollapsibleButton(QtWidgets.QPushButton):  # noqa: N801 - Slicer's class names
    def __init__(self, parent=None):
        super().__init__(parent)
        self._collapsed = False

    def getCollapsed(self) -> bool:
        return self._collapsed

    def setCollapsed(self, value: bool) -> None:
        self._collapsed = bool(value)

    collapsed = QtCore.Property(bool, getCollapsed, setCollapsed)


class ctkSliderWidget(QtWidgets.QWidget):  # noqa: N801
    valueChanged = QtCore.Signal(float)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._values = {"value": 0.0, "minimum": 0.0, "maximum": 99.0, "singleStep": 1.0}

    def _getter(name):  # noqa: N805 - property factory
        return lambda self: self._values[name]

    def _setter(name):  # noqa: N805
        def set_(self, v: float) -> None:
            self._values[name] = float(v)
            if name == "value":
                self.valueChanged.emit(float(v))
        return set_

    value = QtCore.Property(float, _getter("value"), _setter("value"))
    minimum = QtCore.Property(float, _getter("minimum"), _setter("minimum"))
    maximum = QtCore.Property(float, _getter("maximum"), _setter("maximum"))
    singleStep = QtCore.Property(float, _getter("singleStep"), _setter("singleStep"))


class qMRMLNodeComboBox(QtWidgets.QWidget):  # noqa: N801
    currentNodeChanged = QtCore.Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._props: dict[str, object] = {}

    @QtCore.Slot(object)
    def setMRMLScene(self, scene: object) -> None:  # noqa: N802
        self.scene = scene


class qMRMLTableView(QtWidgets.QTableView):  # noqa: N801
    @QtCore.Slot(object)
    def setMRMLScene(self, scene: object) -> None:  # noqa: N802
        self.scene = scene


class qMRMLWidget(QtWidgets.QWidget):  # noqa: N801
    mrmlSceneChanged = QtCore.Signal(object)


STAND_INS = (ctkCollapsibleButton, ctkSliderWidget, qMRMLNodeComboBox, qMRMLTableView, qMRMLWidget)


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


def test_the_threshold_slider_emits_what_the_widget_listens_to(loaded):
    _, widget, _ = loaded
    slider = _children(widget)["probabilityThresholdSlider"]
    seen: list[float] = []
    slider.valueChanged.connect(seen.append)
    slider.setProperty("value", 0.7)
    assert seen == [pytest.approx(0.7)]
