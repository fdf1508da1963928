"""Render the MedCNNCAD module panel after a run, as the Widget fills it, to docs/figures/module_panel.png.

Not a Slicer screenshot: the panel is the module's real .ui and Widget code in real Qt (PySide6, offscreen,
Fusion style) on a real MRML scene with a real worker run, through the test harness of
``Testing/slicer_module/slicer_qt_harness.py``; the CTK/MRML widgets are its stand-ins (a node selector is
drawn as a plain combo box, a slider as a spin box, a table as a plain table view). Usage::

    .venv/bin/python scripts/panel_screenshot.py docs/figures/module_panel.png
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "Testing" / "slicer_module"), str(ROOT / "Testing"), str(ROOT / "MedCNNCAD")]
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def main(out: str) -> None:
    from slicer_qt_harness import QtWidgets, make_widget, module_in_qt, process_events_until, unwrap

    from medcnncad.slicer.headless import new_scene

    new_scene()
    with module_in_qt() as env:
        import SampleData  # the harness's stand-in: the shipped sample files

        QtWidgets.QApplication.setStyle("Fusion")
        nodes = SampleData.downloadSamples("MedCNNCADPhantom")
        widget = make_widget(env)
        ui, p = widget.ui, widget._parameterNode
        combo = unwrap(ui.modelComboBox)
        combo.setCurrentIndex(combo.findData("brats-demo-unet"))
        p.device = "cpu"
        unwrap(ui.applyButton).click()
        process_events_until(env.app, lambda: widget._job is None)
        unwrap(ui.referenceSelector).setCurrentNode(nodes[4])
        unwrap(ui.compareButton).click()
        assert not env.messages.errors, env.messages.errors
        panel = widget.panel
        panel.resize(560, 1400)
        panel.show()
        env.app.processEvents()
        panel.resize(560, panel.sizeHint().height())
        env.app.processEvents()
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        assert panel.grab().save(out), out
        widget.cleanup()
    print(f"written {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "docs" / "figures" / "module_panel.png"))
