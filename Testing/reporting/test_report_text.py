"""report.json's text: what json.dumps(indent=2) gives back when read, one compact line per lesion."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

from medcnncad.lesions.components import Lesion
from medcnncad.reporting.case_outputs import report_text


def _lesion(i: int, classes: dict | None = None) -> Lesion:
    return Lesion(structure="WT", kind="region", id=i, voxel_count=3 * i, volume_ml=0.003 * i,
                  centroid_lps_mm=(1.5, -2.0, float(i)), centroid_ras_mm=(-1.5, 2.0, float(i)),
                  bbox_min_ijk=(0, 1, 2), bbox_max_ijk=(3, 4, 5), longest_diameter_mm=2.5 * i,
                  mean_probability=0.7, max_probability=None, class_probabilities=classes)


def test_lesion_to_json_equals_asdict_and_does_not_share_its_class_probabilities():
    for lesion in (_lesion(1), _lesion(2, {"HGG": 0.8, "LGG": 0.2})):
        assert lesion.to_json() == asdict(lesion)
    lesion = _lesion(3, {"HGG": 0.8})
    lesion.to_json()["class_probabilities"]["HGG"] = 0.1
    assert lesion.class_probabilities == {"HGG": 0.8}


def test_report_text_reads_back_as_the_indented_dump_with_one_line_per_lesion():
    report = {
        "model": {"id": "m", "version": "1.0.0", "nested": {"empty": {}, "none": None}},
        "timings_s": {"read": 0.1, "write": 0.25},
        "warnings": [], "missing_channels": ["T1"], "grid": {"size_ijk": [240, 240, 155]},
        "lesions": [_lesion(i).to_json() for i in range(1, 6)],
        "removed_candidates": [], "odd": [1, {"a": 1}], "nan": math.nan, "text": 'quote " and é',
        "retrieval": {"lesions": [{"lesion_id": 1, "vector": [0.5, 0.25]}]},
    }
    text = report_text(report)
    assert json.dumps(json.loads(text), sort_keys=True) == json.dumps(json.loads(json.dumps(report, indent=2)),
                                                                       sort_keys=True)
    assert list(json.loads(text)) == list(report)  # key order kept
    lines = text.splitlines()
    lesion_lines = [line for line in lines if line.lstrip().startswith('{"structure"')]
    assert len(lesion_lines) == 5 and all(line.startswith("    {") for line in lesion_lines)  # two levels in
    assert lines[0] == "{" and lines[1] == '  "model": {' and lines[-1] == "}"
    assert '  "warnings": [],' in lines and '  "odd": [1, {"a": 1}],' in lines
