"""The evaluate commands' output: the report as JSON into --out, and a table or JSON on stdout."""

from __future__ import annotations

import argparse
import json

import numpy as np

from medcnncad.cli.evaluate import _emit


def test_report_goes_to_out_and_stdout_as_asked(tmp_path, capsys):
    report = {"mean": np.float32(0.5), "cases": [1, 2]}
    out = tmp_path / "r.json"
    assert _emit(report, argparse.Namespace(out=str(out), json=False), lambda r: f"table of {len(r['cases'])}") == 0
    assert json.loads(out.read_text()) == {"mean": 0.5, "cases": [1, 2]}  # numpy values made plain JSON
    assert capsys.readouterr().out == "table of 2\n"
    assert _emit(report, argparse.Namespace(out=None, json=True), lambda r: "unused") == 0
    assert json.loads(capsys.readouterr().out) == {"mean": 0.5, "cases": [1, 2]}
