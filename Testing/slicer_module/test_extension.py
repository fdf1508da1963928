"""The extension's catalog entry and CMake metadata, checked against Slicer/ExtensionsIndex's rules
(``scripts/check_description_files.py``: project name == JSON file stem, icon/screenshot URLs that
are http(s) and resolve, a license file at the root, an accepted category; catalog schema v1.0.1).

Offline: a URL "resolves" when it points into this repository's ``main`` branch on
raw.githubusercontent.com and the file exists here (the index's CI fetches it; we cannot).
"""

from __future__ import annotations

import json
import re

from conftest import ROOT

RAW = "https://raw.githubusercontent.com/medcnncad/MedCNNCAD/main/"
ACCEPTED_CATEGORIES = {"Analysis", "Segmentation", "Quantification", "Utilities", "Examples", "DICOM", "Informatics",
                       "Filtering", "Registration", "Radiotherapy", "Neuroimaging", "Cardiac"}  # subset of the index's
SCHEMA_KEYS = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "build_subdirectory", "enabled", "tier"}
LICENSE_NAMES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt")


def _cmake() -> str:
    return (ROOT / "CMakeLists.txt").read_text()


def _set(name: str) -> str:
    match = re.search(rf'set\({name}\s+"([^"]*)"\)', _cmake())  # the index's regexes need double quotes
    assert match, name
    return match.group(1)


def test_project_name_is_the_catalog_file_stem():
    project = re.search(r"project\((\w+)\)", _cmake()).group(1)
    assert (ROOT / f"{project}.json").is_file()


def test_catalog_entry_follows_the_schema():
    entry = json.loads((ROOT / "MedCNNCAD.json").read_text())
    assert {"$schema", "category", "scm_url"} <= set(entry) <= SCHEMA_KEYS
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                                       "slicer-extension-catalog-entry-schema-v1.0.1.json")
    assert entry["tier"] in (1, 3, 5) and entry["category"] in ACCEPTED_CATEGORIES
    assert entry["category"] == _set("EXTENSION_CATEGORY")
    assert re.match(r"(https|git)://", entry["scm_url"]) and entry["scm_url"] == _set("EXTENSION_HOMEPAGE")
    assert entry["build_dependencies"] == _set("EXTENSION_DEPENDS").split() == ["PyTorch"]


def test_icon_and_screenshots_point_at_images_in_this_repository():
    urls = [_set("EXTENSION_ICONURL"), *_set("EXTENSION_SCREENSHOTURLS").split()]
    assert len(urls) >= 2
    for url in urls:
        assert url.startswith(RAW), url
        path = ROOT / url[len(RAW):]
        assert path.is_file(), url
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", url  # served as image/png


def test_license_file_matches_the_package_license():
    present = [name for name in LICENSE_NAMES if (ROOT / name).is_file()]
    assert present
    text = (ROOT / present[0]).read_text()
    assert "Apache License" in text and "Version 2.0" in text
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text()
