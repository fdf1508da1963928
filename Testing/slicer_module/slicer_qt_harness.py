"""Run the module file's Widget in real Qt (PySide6, offscreen) on a real MRML scene (slicer-core).

Slicer's GUI is PythonQt over Qt, CTK and Slicer's own widget libraries; none of these can be installed
from PyPI. This harness keeps everything real that can be real and stands in for the rest:

real
    Qt (PySide6): the .ui is loaded by QUiLoader, signals are Qt signals, the poll timer is a QTimer
    running in a Qt event loop; MRML (slicer-core): scene, volumes, segmentations, tables, slice views;
    Slicer's own ``slicer.util`` functions (``loadUI``, ``childWidgetVariables``, ``tryWithErrorDisplay``,
    ``findChildren``), which run unchanged against the stand-in ``qt`` module below; the worker process.
stand-ins
    * ``qt``: PySide6 classes, with every QObject handed to Slicer code wrapped in :class:`PythonQtObject`,
      which gives PythonQt's attribute-style access (a Qt property name reads/writes the property:
      ``label.text = "..."``; ``name`` is the object name; anything else is the Qt method or signal).
    * the CTK and Slicer widget classes of the .ui (``ctkCollapsibleButton``, ``ctkSliderWidget``,
      ``qMRMLNodeComboBox``, ``qMRMLTableView``, ``qMRMLWidget``), keeping the property, signal and
      method names Slicer code uses; the .ui's ``mrmlSceneChanged(vtkMRMLScene*)`` connections (whose C++
      argument type a Python class cannot declare) are made here, as Qt makes them in Slicer.
    * ``slicer.parameterNodeWrapper``: typed fields stored in the real ``vtkMRMLScriptedModuleNode``,
      validated by ``Choice``/``WithinRange``, and ``connectGui``/``disconnectGui`` binding by the
      ``SlicerParameterName`` dynamic property with the widget -> type rules of Slicer's
      ``guiConnectors.py`` (exact widget class; a ``Choice`` combo box is cleared and refilled).
    * ``slicer.ScriptedLoadableModule`` base classes (parent widget + layout, ``resourcePath``, the
      singleton parameter node, ``delayDisplay``), ``SampleData`` (the shipped sample files, read from
      disk), ``slicer.modules.medcnncad`` and ``slicer.util.selectModule``, the message boxes (recorded).

What it cannot prove: PythonQt's own conversions (QVariant <-> VTK objects), the C++ widgets'
behaviour (node lists in the combo boxes, table rendering), Slicer's real ``parameterNodeWrapper``, the
application's event loop and module panel. The self-test inside Slicer covers those.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import types
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin, get_type_hints

import pytest

QtWidgets = pytest.importorskip("PySide6.QtWidgets", reason="PySide6-Essentials is not installed (make venv does)")
QtCore = pytest.importorskip("PySide6.QtCore")
QtUiTools = pytest.importorskip("PySide6.QtUiTools")
QtGui = pytest.importorskip("PySide6.QtGui")

ROOT = Path(__file__).resolve().parents[2]
MODULE_FILE = ROOT / "MedCNNCAD" / "MedCNNCAD.py"
UI_FILE = ROOT / "MedCNNCAD" / "Resources" / "UI" / "MedCNNCAD.ui"
SAMPLE = ROOT / "Resources" / "SampleData"


# -- PythonQt-style access -------------------------------------------------------------------------------
def unwrap(value: Any) -> Any:
    return object.__getattribute__(value, "_obj") if isinstance(value, PythonQtObject) else value


def wrap(value: Any) -> Any:
    if isinstance(value, QtCore.QObject) and not isinstance(value, PythonQtObject):
        return PythonQtObject(value)
    if isinstance(value, list):
        return [wrap(v) for v in value]
    return value


def _is_property(obj: Any, name: str) -> bool:
    meta = obj.metaObject()
    return meta.indexOfProperty(name) >= 0 or name.encode() in [bytes(n) for n in obj.dynamicPropertyNames()]


class PythonQtObject:
    """A QObject as PythonQt shows it to Python: Qt properties as attributes, methods and signals as is."""

    def __init__(self, obj: Any) -> None:
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_extra", {})

    def __getattr__(self, name: str) -> Any:
        obj, extra = object.__getattribute__(self, "_obj"), object.__getattribute__(self, "_extra")
        if name in extra:
            return extra[name]
        if name == "name":
            return obj.objectName()
        if _is_property(obj, name) and not isinstance(getattr(type(obj), name, None), QtCore.Signal):
            return wrap(obj.property(name))
        attribute = getattr(obj, name)
        if callable(attribute) and not isinstance(attribute, QtCore.SignalInstance):
            return lambda *args, **kwargs: wrap(attribute(*[unwrap(a) for a in args], **kwargs))
        return attribute

    def __setattr__(self, name: str, value: Any) -> None:
        obj = object.__getattribute__(self, "_obj")
        if _is_property(obj, name):
            assert obj.setProperty(name, unwrap(value)) or obj.metaObject().indexOfProperty(name) < 0, name
        else:  # PythonQt keeps other attributes on the wrapper
            object.__getattribute__(self, "_extra")[name] = value

    def __eq__(self, other: object) -> bool:
        return unwrap(self) is unwrap(other)

    def __hash__(self) -> int:
        return id(unwrap(self))

    def __bool__(self) -> bool:
        return True


# -- stand-ins keeping the real class names, and the properties and signals the .ui and the Widget use ------
class ctkCollapsibleButton(QtWidgets.QGroupBox):  # noqa: N801 - Slicer's class names
    """A titled box laying out its contents (drawn expanded); ``text`` and ``collapsed`` as CTK's."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._collapsed = False

    def getCollapsed(self) -> bool:
        return self._collapsed

    def setCollapsed(self, value: bool) -> None:
        self._collapsed = bool(value)

    def getText(self) -> str:
        return self.title()

    collapsed = QtCore.Property(bool, getCollapsed, setCollapsed)
    text = QtCore.Property(str, getText, QtWidgets.QGroupBox.setTitle)


class ctkSliderWidget(QtWidgets.QWidget):  # noqa: N801
    valueChanged = QtCore.Signal(float)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._values = {"value": 0.0, "minimum": 0.0, "maximum": 99.0, "singleStep": 1.0}
        self._shown = QtWidgets.QDoubleSpinBox(self)  # drawn only (screenshots); the value lives above
        self._shown.setReadOnly(True)
        QtWidgets.QHBoxLayout(self).addWidget(self._shown)
        self.layout().setContentsMargins(0, 0, 0, 0)

    def _getter(name):  # noqa: N805 - property factory
        return lambda self: self._values[name]

    def _setter(name):  # noqa: N805
        def set_(self, v: float) -> None:
            if name == "value":  # ctkSliderWidget clamps to its range and emits only on a change
                v = min(max(float(v), self._values["minimum"]), self._values["maximum"])
                if v == self._values["value"]:
                    return
            self._values[name] = float(v)
            self._shown.setRange(self._values["minimum"], self._values["maximum"])
            self._shown.setValue(self._values["value"])
            if name == "value":
                self.valueChanged.emit(float(v))
        return set_

    value = QtCore.Property(float, _getter("value"), _setter("value"))
    minimum = QtCore.Property(float, _getter("minimum"), _setter("minimum"))
    maximum = QtCore.Property(float, _getter("maximum"), _setter("maximum"))
    singleStep = QtCore.Property(float, _getter("singleStep"), _setter("singleStep"))


class qMRMLNodeComboBox(QtWidgets.QWidget):  # noqa: N801
    """Holds the current node; accepts only nodes of its scene and its ``nodeTypes`` (the real one shows
    no others)."""

    currentNodeChanged = QtCore.Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.scene = None
        self._node = None
        self._shown = QtWidgets.QComboBox(self)  # drawn only (screenshots): the current node's name
        QtWidgets.QHBoxLayout(self).addWidget(self._shown)
        self.layout().setContentsMargins(0, 0, 0, 0)
        self._shown.addItem("None")

    @QtCore.Slot(object)
    def setMRMLScene(self, scene: object) -> None:  # noqa: N802
        self.scene = scene

    def currentNode(self):  # noqa: N802
        return self._node

    def addAttribute(self, node_type: str, name: str, value: str) -> None:  # noqa: N802
        """The real one then lists only nodes of ``node_type`` whose attribute ``name`` is ``value``."""
        self._attributes = [*getattr(self, "_attributes", []), (node_type, name, value)]

    def setCurrentNode(self, node) -> None:  # noqa: N802
        if node is not None:
            types_ = list(self.property("nodeTypes") or [])
            assert self.scene is not None, f"{self.objectName()}: no MRML scene (setMRMLScene was never called)"
            assert self.scene.IsNodePresent(node), f"{self.objectName()}: {node.GetID()} is not in the scene"
            assert any(node.IsA(t) for t in types_), f"{self.objectName()}: {node.GetClassName()} not in {types_}"
            for node_type, name, value in getattr(self, "_attributes", []):
                assert not node.IsA(node_type) or node.GetAttribute(name) == value, \
                    f"{self.objectName()}: {node.GetName()} has {name}={node.GetAttribute(name)!r}, not {value!r}"
        if node is not self._node:
            self._node = node
            self._shown.setItemText(0, node.GetName() if node is not None else "None")
            self.currentNodeChanged.emit(node)


class qMRMLTableView(QtWidgets.QTableView):  # noqa: N801
    def __init__(self, parent=None):
        super().__init__(parent)
        self.scene = None
        self._table = None

    @QtCore.Slot(object)
    def setMRMLScene(self, scene: object) -> None:  # noqa: N802
        self.scene = scene

    def setMRMLTableNode(self, node) -> None:  # noqa: N802
        """Shows the table's cells (as text), so that rows can be clicked: ``clicked(QModelIndex)``."""
        assert node is None or node.IsA("vtkMRMLTableNode"), node
        self._table = node
        model = QtGui.QStandardItemModel(self)
        table = node.GetTable() if node is not None else None
        for column in range(table.GetNumberOfColumns() if table is not None else 0):
            model.setHorizontalHeaderItem(column, QtGui.QStandardItem(table.GetColumnName(column)))
            for row in range(table.GetNumberOfRows()):
                model.setItem(row, column, QtGui.QStandardItem(table.GetValue(row, column).ToString()))
        self.setModel(model)

    def mrmlTableNode(self):  # noqa: N802
        return self._table


class qMRMLWidget(QtWidgets.QWidget):  # noqa: N801
    mrmlSceneChanged = QtCore.Signal(object)

    @QtCore.Slot(object)
    def setMRMLScene(self, scene: object) -> None:  # noqa: N802
        self.mrmlSceneChanged.emit(scene)


STAND_INS = (ctkCollapsibleButton, ctkSliderWidget, qMRMLNodeComboBox, qMRMLTableView, qMRMLWidget)


class QUiLoader:
    """``qt.QUiLoader``: PySide6's loader with the stand-ins registered; makes the .ui's
    ``mrmlSceneChanged(vtkMRMLScene*)`` connections; returns the root as PythonQt shows it."""

    messages: list[str] = []

    def load(self, qfile) -> PythonQtObject | None:
        loader = QtUiTools.QUiLoader()
        for cls in STAND_INS:
            loader.registerCustomWidget(cls)
        previous = QtCore.qInstallMessageHandler(lambda mode, context, text: QUiLoader.messages.append(text))
        try:
            root = loader.load(unwrap(qfile))
        finally:
            QtCore.qInstallMessageHandler(previous)
        if root is None:
            return None
        found = {w.objectName(): w for w in root.findChildren(QtCore.QObject)} | {root.objectName(): root}
        for c in ET.parse(unwrap(qfile).fileName()).getroot().iter("connection"):
            sender, signal, receiver, slot = (c.findtext(k) for k in ("sender", "signal", "receiver", "slot"))
            if "vtkMRMLScene*" in signal:
                getattr(found[sender], signal.split("(")[0]).connect(getattr(found[receiver], slot.split("(")[0]))
        return PythonQtObject(root)


def make_qt_module() -> types.ModuleType:
    qt = types.ModuleType("qt")
    for source in (QtCore, QtGui, QtWidgets):
        for name in dir(source):
            if name.startswith("Q") or name == "Qt":
                setattr(qt, name, getattr(source, name))
    qt.QUiLoader = QUiLoader
    qt.QFileDialog = types.SimpleNamespace(getExistingDirectory=lambda *a, **k: MESSAGES.folder_to_choose,
                                           getOpenFileName=lambda *a, **k: MESSAGES.file_to_choose)
    return qt


# -- recorded message boxes -------------------------------------------------------------------------------
class Messages:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.confirmations: list[str] = []
        self.confirm_answer = True
        self.folder_to_choose = ""
        self.file_to_choose = ""  # what getOpenFileName returns (PythonQt: the path alone)

    def error(self, text, *args, **kwargs) -> None:
        self.errors.append(str(text))

    def confirm(self, text, *args, **kwargs) -> bool:
        self.confirmations.append(str(text))
        return self.confirm_answer


MESSAGES = Messages()


# -- parameterNodeWrapper --------------------------------------------------------------------------------
class Choice:
    def __init__(self, choices) -> None:
        self.choices = list(choices)


class WithinRange:
    def __init__(self, minimum, maximum) -> None:
        self.minimum, self.maximum = minimum, maximum


def _split(annotation) -> tuple[type, list]:
    if get_origin(annotation) is Annotated:
        base, *extras = get_args(annotation)
        return base, extras
    return annotation, []


def _is_node(base: type) -> bool:
    return isinstance(base, type) and hasattr(base, "IsA") and base.__name__.startswith("vtkMRML")


class _Connector:
    """One widget bound to one field, as Slicer's guiConnectors.py does it (exact widget class)."""

    def __init__(self, widget, base: type, extras: list) -> None:
        self.widget, self.base = widget, base
        choice = next((e for e in extras if isinstance(e, Choice)), None)
        bounds = next((e for e in extras if isinstance(e, WithinRange)), None)
        kind = type(widget)
        if kind is QtWidgets.QCheckBox and base is bool:
            self.signal, self.get, self.set = widget.stateChanged, widget.isChecked, widget.setChecked
        elif kind is QtWidgets.QComboBox and choice is not None:
            widget.clear()
            for c in choice.choices:
                widget.addItem(str(c))
            self.signal = widget.currentIndexChanged
            self.get = lambda: choice.choices[widget.currentIndex()]
            self.set = lambda v: widget.setCurrentIndex(choice.choices.index(v))
        elif kind is ctkSliderWidget and base is float and bounds is not None:
            widget.setProperty("minimum", bounds.minimum)
            widget.setProperty("maximum", bounds.maximum)
            self.signal, self.get = widget.valueChanged, lambda: widget.property("value")
            self.set = lambda v: widget.setProperty("value", v)
        elif kind is QtWidgets.QSpinBox and base is int:
            if bounds is not None:
                widget.setRange(bounds.minimum, bounds.maximum)
            self.signal, self.get, self.set = widget.valueChanged, widget.value, widget.setValue
        elif kind is QtWidgets.QLineEdit and base is str:
            self.signal, self.get, self.set = widget.textChanged, widget.text, widget.setText
        elif kind is qMRMLNodeComboBox and _is_node(base):
            widget.setProperty("nodeTypes", [base.__name__])
            self.signal, self.get, self.set = widget.currentNodeChanged, widget.currentNode, widget.setCurrentNode
        else:
            raise RuntimeError(f"Unable to create GUI connector from datatype '{base}' to widget type '{kind}'")


def parameterNodeWrapper(cls):  # noqa: N802 - Slicer's name
    hints = get_type_hints(cls, include_extras=True)
    defaults = {name: getattr(cls, name, None) for name in hints}

    class Wrapper:
        fields = {name: _split(h) for name, h in hints.items()}

        def __init__(self, node) -> None:
            object.__setattr__(self, "parameterNode", node)
            object.__setattr__(self, "_guis", {})
            for name, (base, _) in self.fields.items():
                if not _is_node(base) and not node.GetParameter(name):
                    self._write(name, defaults[name])

        def _write(self, name: str, value: Any) -> None:
            base, extras = self.fields[name]
            node = self.parameterNode
            if _is_node(base):
                assert value is None or value.IsA(base.__name__), (name, value)
                node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
                return
            if value is None or not isinstance(value, base) and not (base is float and isinstance(value, int)):
                raise TypeError(f"{name}: {value!r} is not a {base.__name__}")
            for e in extras:
                if isinstance(e, Choice) and value not in e.choices:
                    raise ValueError(f"{name}: {value!r} is not one of {e.choices}")
                if isinstance(e, WithinRange) and not e.minimum <= value <= e.maximum:
                    raise ValueError(f"{name}: {value!r} is outside [{e.minimum}, {e.maximum}]")
            node.SetParameter(name, str(value))

        def __getattr__(self, name: str) -> Any:
            if name not in type(self).fields:
                raise AttributeError(name)
            base, _ = self.fields[name]
            if _is_node(base):
                return self.parameterNode.GetNodeReference(name)
            text = self.parameterNode.GetParameter(name)
            return text == "True" if base is bool else base(text)

        def __setattr__(self, name: str, value: Any) -> None:
            if name not in self.fields:
                raise AttributeError(f"{name} is not a parameter")
            self._write(name, value)

        def connectGui(self, gui) -> int:  # noqa: N802
            widgets = [unwrap(w) for w in vars(gui).values()] if not isinstance(gui, PythonQtObject) else \
                [unwrap(gui)] + unwrap(gui).findChildren(QtWidgets.QWidget)
            connectors = {}
            for widget in widgets:
                name = widget.property("SlicerParameterName")
                if name:
                    base, extras = self.fields[name]
                    connectors[name] = _Connector(widget, base, extras)
            updating = [False]

            def to_gui(*_):
                updating[0] = True
                try:
                    for name, c in connectors.items():
                        value = getattr(self, name)
                        if c.get() != value:
                            c.set(value)
                finally:
                    updating[0] = False

            def from_gui(name, c):
                def slot(*_):
                    if not updating[0]:
                        self._write(name, c.get())
                return slot

            to_gui()
            slots = {name: from_gui(name, c) for name, c in connectors.items()}
            for name, c in connectors.items():
                c.signal.connect(slots[name])
            observer = self.parameterNode.AddObserver("ModifiedEvent", to_gui)
            tag = len(self._guis) + 1 + max(self._guis, default=0)
            self._guis[tag] = (connectors, slots, observer)
            return tag

        def disconnectGui(self, tag) -> None:  # noqa: N802
            connectors, slots, observer = self._guis.pop(tag)
            for name, c in connectors.items():
                c.signal.disconnect(slots[name])
            self.parameterNode.RemoveObserver(observer)

    Wrapper.__name__ = cls.__name__
    return Wrapper


# -- ScriptedLoadableModule, SampleData, slicer.modules ---------------------------------------------------
def make_scripted_module(module_name: str) -> types.ModuleType:
    import slicer

    class ScriptedLoadableModule:
        def __init__(self, parent) -> None:
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None) -> None:
            self.parent = parent or types.SimpleNamespace(isEntered=False)
            self.panel = QtWidgets.QWidget()
            self.layout = self.panel.layout() or QtWidgets.QVBoxLayout(self.panel)
            self.moduleName = module_name
            self.layout = PythonQtObject(self.layout)

        def setup(self) -> None:
            pass

        def resourcePath(self, filename: str) -> str:  # noqa: N802
            return str(MODULE_FILE.parent / "Resources" / filename)

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None) -> None:
            self.moduleName = module_name

        def getParameterNode(self):  # noqa: N802 - as Slicer's: one singleton node per module
            node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node is None:
                node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
                node.UnRegister(None)  # CreateNodeByClass returns a new reference (as Slicer's createParameterNode)
                node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
                node.SetAttribute("ModuleName", self.moduleName)
                node.SetSingletonTag(self.moduleName)
                node = slicer.mrmlScene.AddNode(node)
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=1000) -> None:  # noqa: N802
            MESSAGES.confirmations.append("delayDisplay: " + message)

    module = types.ModuleType("slicer.ScriptedLoadableModule")
    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(module, cls.__name__, cls)
    return module


def _download_samples(name: str) -> list:
    """``SampleData.downloadSamples`` for the registered MedCNNCAD case: its checksummed local files."""
    import slicer

    assert name == "MedCNNCADPhantom", name
    assert SAMPLE_SOURCES, "registerSampleData() was not called"
    nodes = []
    for uri, node_name, kind in zip(*(SAMPLE_SOURCES[-1][k] for k in ("uris", "nodeNames", "loadFileType"))):
        path = QtCore.QUrl(uri).toLocalFile()
        if kind == "VolumeFile":
            nodes.append(slicer.modules.volumes.logic().AddArchetypeVolume(path, node_name))
        else:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", node_name)
            storage = slicer.vtkMRMLSegmentationStorageNode()
            storage.SetFileName(path)
            assert storage.ReadData(node)
            nodes.append(node)
    return nodes


SAMPLE_SOURCES: list[dict] = []


def make_sample_data() -> types.ModuleType:
    module = types.ModuleType("SampleData")
    module.SampleDataLogic = types.SimpleNamespace(
        registerCustomSampleDataSource=lambda **kwargs: SAMPLE_SOURCES.append(kwargs))
    module.downloadSamples = _download_samples
    return module


class _App:
    """``slicer.app``: the parts the module and ``slicer.util`` touch."""

    def __init__(self) -> None:
        self.connections: list[str] = []

    def connect(self, signal: str, slot) -> None:
        self.connections.append(signal)

    def testingEnabled(self) -> bool:  # noqa: N802
        return False

    def setOverrideCursor(self, cursor) -> None:  # noqa: N802
        pass

    def restoreOverrideCursor(self) -> None:  # noqa: N802
        pass

    def processEvents(self) -> None:  # noqa: N802 - qSlicerApplication is a QApplication
        QtWidgets.QApplication.processEvents()


@contextlib.contextmanager
def module_in_qt():
    """Yield the module file imported with the stand-ins above (a fresh copy), a QApplication and MESSAGES;
    undo every stand-in afterwards."""
    import slicer
    import slicer.util

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    MESSAGES.__init__()
    SAMPLE_SOURCES.clear()
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper, pnw.Choice, pnw.WithinRange = parameterNodeWrapper, Choice, WithinRange
    scripted = make_scripted_module("MedCNNCAD")
    registry = types.SimpleNamespace()
    with pytest.MonkeyPatch.context() as mp:
        for name, module in {"qt": make_qt_module(), "ctk": types.ModuleType("ctk"), "SampleData": make_sample_data(),
                             "slicer.parameterNodeWrapper": pnw, "slicer.ScriptedLoadableModule": scripted}.items():
            mp.setitem(sys.modules, name, module)
        mp.setattr(slicer, "ScriptedLoadableModule", scripted, raising=False)
        mp.setattr(slicer, "app", _App(), raising=False)
        mp.setattr(slicer.util, "errorDisplay", MESSAGES.error)
        mp.setattr(slicer.util, "confirmOkCancelDisplay", MESSAGES.confirm)
        mp.setattr(slicer.modules, "medcnncad", registry, raising=False)
        mp.delitem(sys.modules, "MedCNNCAD", raising=False)
        mp.syspath_prepend(str(MODULE_FILE.parent))
        spec = importlib.util.spec_from_file_location("MedCNNCAD", MODULE_FILE)
        module = importlib.util.module_from_spec(spec)
        mp.setitem(sys.modules, "MedCNNCAD", module)
        spec.loader.exec_module(module)
        module.registerSampleData()

        def select_module(name: str) -> None:
            assert name == "MedCNNCAD", name
            registry.widget.parent.isEntered = True
            registry.widget.enter()

        mp.setattr(slicer.util, "selectModule", select_module)
        yield types.SimpleNamespace(module=module, app=app, messages=MESSAGES, registry=registry)


def make_widget(env) -> Any:
    """Create and set up the Widget as Slicer does when the module is first opened."""
    widget = env.module.MedCNNCADWidget()
    env.registry.widgetRepresentation = lambda: types.SimpleNamespace(self=lambda: widget)
    env.registry.widget = widget
    widget.setup()
    return widget


def process_events_until(app, done, seconds: float = 300.0) -> None:
    """Run the Qt event loop (the Widget's QTimer polls the worker) until ``done()`` or the deadline."""
    import time

    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "timed out waiting in the Qt event loop"
        app.processEvents()
        time.sleep(0.02)
