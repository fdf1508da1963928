"""The on-disk case library: descriptors, thumbnails and metadata of confirmed cases, portable between machines.

Layout (every path relative to the library folder)::

    library.json                      format, model (id, version, weights sha256), descriptor version,
                                      radiomics feature names, and one entry per case: its file and sha256
    entries/<case_id>/entry.json      metadata (the CSV's columns), the input sequences the case was segmented
                                      from (given_inputs; absent in entries added before they were recorded),
                                      lesions: id, volume, radiomics, deep vector, thumbnail file and its sha256
    entries/<case_id>/lesion_<id>.png thumbnails (uint8 axial view, outline at 255)
    entries/<case_id>/view_image.nrrd optional (``add_case(view_image=...)``): one input volume (voxels and
    entries/<case_id>/labels.seg.nrrd geometry only, no header tags) and the case's segmentation, so that a
                                      viewer can load a similar case beside the current one

Opening a library checks every entry's and thumbnail's SHA-256: a changed or missing file is refused with
one error naming it. A query case must come from the same model weights and descriptor version. Nothing
is stored that the case folder's ``report.json`` descriptors and the given metadata do not hold: no input
paths, no DICOM tags; the case id and metadata columns are the CSV's (use pseudonyms there). A library built
with view images holds those patients' pixel data (no tags): share it as you would the images.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medcnncad.errors import InputError
from medcnncad.io.file_lock import exclusive_lock
from medcnncad.io.images import atomic_path, read_volume
from medcnncad.io.json_files import read_json_object
from medcnncad.retrieval.index import ExactIndex, standardise_blocks
from medcnncad.retrieval.versions import DESCRIPTOR_VERSION

__all__ = ["LIBRARY_FORMAT", "FORMAT_VERSION", "FEATURES", "DEFAULT_FEATURES", "LibraryError", "LibraryLesion",
           "Neighbour", "Library", "case_retrieval", "given_inputs_of", "inputs_note", "lesion_vectors", "sha256_of"]

LIBRARY_FORMAT = "medcnncad-case-library"
FORMAT_VERSION = 1
FEATURES = ("combined", "deep", "radiomics")
LOCK_FILE = ".library.lock"
"""Held (:func:`medcnncad.io.file_lock.exclusive_lock`) while a case is added or the library created."""
DEFAULT_FEATURES = "combined"
"""The descriptor that ships as the default (docs/retrieval.md has the numbers it was chosen by)."""
_CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class LibraryError(InputError):
    """A case library that cannot be used: tampered, incompatible, empty, or a bad request to it."""


def sha256_of(path: Path) -> str:
    """SHA-256 (hex) of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class LibraryLesion:
    """One lesion of the library: where it comes from, its descriptors and the case's metadata."""

    case_id: str
    lesion_id: int
    volume_ml: float
    radiomics: np.ndarray
    deep: np.ndarray | None
    metadata: dict[str, str]
    thumbnail: Path | None
    view: dict[str, Path] | None = None
    """``{"image": ..., "segmentation": ...}`` (checksummed files of the library) when the case was added with
    a view image, else None."""
    given_inputs: list[str] | None = None
    """The input sequences the case was segmented from; None when its entry predates their recording."""


@dataclass
class Neighbour:
    """A query result: rank (1 = nearest), distance (standardised descriptor units), the library lesion, and a
    note when the library case was segmented from other input sequences than the query case (or either is
    unknown)."""

    rank: int
    distance: float
    lesion: LibraryLesion
    inputs_note: str | None = None

    def to_json(self) -> dict[str, Any]:
        les = self.lesion
        return {"rank": self.rank, "distance": round(self.distance, 6), "case_id": les.case_id,
                "lesion_id": les.lesion_id, "volume_ml": round(les.volume_ml, 3), "metadata": les.metadata,
                "thumbnail": None if les.thumbnail is None else str(les.thumbnail),
                "view": None if les.view is None else {k: str(v) for k, v in les.view.items()},
                "given_inputs": les.given_inputs, "inputs_note": self.inputs_note}


def given_inputs_of(record: Mapping[str, Any], where: str) -> list[str] | None:
    """The ``given_inputs`` of a retrieval block or library entry: the input sequences the case was segmented
    from; None when the record predates them (LibraryError naming ``where`` when they are not a list of names)."""
    given = record.get("given_inputs")
    if given is None:
        return None
    if not isinstance(given, list) or not all(isinstance(name, str) and name for name in given):
        raise LibraryError(f"{where}: given_inputs {given!r}: expected a list of sequence names")
    return list(given)


def _sequences(names: Sequence[str] | None) -> str:
    """'FLAIR+T1+T1c+T2', 'T1c only', or 'unknown sequences (not recorded)'."""
    if names is None:
        return "unknown sequences (not recorded)"
    joined = "+".join(sorted(names))
    return f"{joined} only" if len(names) == 1 else joined


def inputs_note(case_id: str, library_inputs: Sequence[str] | None, query_inputs: Sequence[str] | None) -> str | None:
    """A plain note when library case ``case_id`` was segmented from other input sequences than the query case,
    or when either side's are unknown (None); None when both were given the same sequences."""
    if library_inputs is not None and query_inputs is not None and set(library_inputs) == set(query_inputs):
        return None
    return (f"library case {case_id} was segmented from {_sequences(library_inputs)}, this case from "
            f"{_sequences(query_inputs)}")


def case_retrieval(report: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The ``retrieval`` block of a case's report.json (LibraryError when the report has none)."""
    block = report.get("retrieval") if isinstance(report, Mapping) else None
    if not isinstance(block, dict) or "lesions" not in block:
        raise LibraryError(f"{where}: report.json has no retrieval descriptors (segment the case again with this "
                           f"version of medcnncad)")
    return block


def _view_files(case_dir: Path, view_image: str | Path) -> tuple[sitk.Image, Path]:
    """The view image (voxels and geometry only: no header tags) and the case's segmentation file, checked
    before anything is written."""
    segmentation = case_dir / "labels.seg.nrrd"
    if not segmentation.is_file():
        raise LibraryError(f"{case_dir}: no labels.seg.nrrd to show with the view image")
    source = read_volume(view_image)
    image = sitk.GetImageFromArray(sitk.GetArrayViewFromImage(source))
    image.CopyInformation(source)  # origin, spacing, direction; not the metadata dictionary (DICOM tags)
    return image, segmentation


def _store_view(folder: Path, image: sitk.Image, segmentation: Path) -> dict[str, str]:
    sitk.WriteImage(image, str(folder / "view_image.nrrd"), useCompression=True)
    shutil.copyfile(segmentation, folder / "labels.seg.nrrd")
    return {"image": "view_image.nrrd", "image_sha256": sha256_of(folder / "view_image.nrrd"),
            "segmentation": "labels.seg.nrrd", "segmentation_sha256": sha256_of(folder / "labels.seg.nrrd")}


def _verified(folder: Path, name: str, sha256: str, what: str) -> Path:
    """``folder / name``, a file of that entry folder whose SHA-256 is ``sha256`` (else LibraryError)."""
    path = folder / name
    if path.parent != folder or not path.is_file() or sha256_of(path) != sha256:
        raise LibraryError(f"{path}: {what} missing or checksum mismatch; the library was changed after it was built")
    return path


def _vector(values: Any, what: str, length: int | None = None, names: Sequence[str] = ()) -> np.ndarray:
    """``values`` (a list of numbers) as float32, when every value is a finite number and, with ``length``, there
    are that many (LibraryError naming ``what`` and the value, by its ``names`` entry or its index, otherwise: a
    NaN would make every distance NaN and the ranking the library's row order)."""
    try:
        vector = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise LibraryError(f"{what}: not a list of numbers") from None
    if vector.ndim != 1 or (length is not None and len(vector) != length):
        raise LibraryError(f"{what}: {vector.size} value(s), expected {length if length is not None else 'a list'}")
    bad = np.flatnonzero(~np.isfinite(vector))
    if bad.size:
        name = repr(names[bad[0]]) if names else str(int(bad[0]))
        raise LibraryError(f"{what}: value {name} is {vector[bad[0]]}: not a finite number")
    return vector.astype(np.float32)


def lesion_vectors(les: Any, names: Sequence[str], deep_length: int | None,
                   where: str) -> tuple[int, float, np.ndarray, np.ndarray | None]:
    """(lesion id, volume mL, radiomics float32 in ``names`` order, deep float32 or None) of one lesion of a
    retrieval block or library entry, checked: an integer id, a finite volume, a finite value for every name,
    a deep vector of finite values (``deep_length`` of them when given) or none (LibraryError naming ``where``,
    the lesion and the value otherwise)."""
    if not isinstance(les, Mapping) or not isinstance(les.get("radiomics"), Mapping) or \
            not isinstance(les.get("lesion_id"), int) or isinstance(les.get("lesion_id"), bool):
        raise LibraryError(f"{where}: a retrieval lesion without an integer lesion_id and a radiomics object")
    what = f"{where}: retrieval lesion {les['lesion_id']}"
    missing = [n for n in names if n not in les["radiomics"]]
    if missing:
        raise LibraryError(f"{what}: no radiomics value {missing[0]!r} (the library's features: another model's "
                           f"descriptors?)")
    volume = _vector([les.get("volume_ml")], what, names=["volume_ml"])[0]
    radiomics = _vector([les["radiomics"][n] for n in names], f"{what}: radiomics", names=names)
    deep = None if les.get("deep") is None else _vector(les["deep"], f"{what}: deep", deep_length)
    return les["lesion_id"], float(volume), radiomics, deep


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Both None, or equal arrays."""
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def _blocks(features: str, radiomics: np.ndarray, deep: np.ndarray | None) -> list[np.ndarray]:
    """The descriptor blocks of a feature space: [radiomics], [deep] or [radiomics, deep]."""
    if features not in FEATURES:
        raise LibraryError(f"features {features!r}: choose from {', '.join(FEATURES)}")
    if features != "radiomics" and deep is None:
        raise LibraryError(f"features {features!r}: no deep descriptors (the model's network has no known encoder); "
                           f"use --features radiomics")
    if features == "radiomics" or deep is None:
        return [radiomics]
    return [deep] if features == "deep" else [radiomics, deep]


def _write_entry(folder: Path, case_dir: Path, case_id: str, block: Mapping[str, Any],
                 metadata: Mapping[str, str] | None, view: tuple[sitk.Image, Path] | None) -> dict[str, str]:
    """Write a case's entry folder (entry.json, thumbnails, view files); returns its library.json record."""
    folder.mkdir(parents=True)
    lesions = []
    for les in block["lesions"]:
        item = {k: les[k] for k in ("lesion_id", "volume_ml", "radiomics", "deep")}
        source = case_dir / f"lesion_{les['lesion_id']}.png"
        if source.is_file():
            item["thumbnail"] = source.name
            shutil.copyfile(source, folder / source.name)
            item["thumbnail_sha256"] = sha256_of(folder / source.name)
        lesions.append(item)
    entry = {"case_id": case_id, "metadata": {str(k): str(v) for k, v in (metadata or {}).items()},
             "structure": block.get("structure"), "given_inputs": given_inputs_of(block, str(case_dir)),
             "lesions": lesions}
    if view is not None:
        entry["view"] = _store_view(folder, *view)
    path = folder / "entry.json"
    path.write_text(json.dumps(entry, indent=1) + "\n", encoding="utf-8")
    return {"case_id": case_id, "file": f"entries/{case_id}/entry.json", "sha256": sha256_of(path)}


def _read_index(root: Path) -> dict[str, Any]:
    """``root``'s library.json, checked: format, format version, descriptor version (LibraryError otherwise)."""
    path = root / "library.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LibraryError(f"{root}: not a case library (no library.json)") from None
    except (OSError, ValueError) as exc:
        raise LibraryError(f"{path}: cannot be read ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != LIBRARY_FORMAT:
        raise LibraryError(f"{path}: not a MedCNNCAD case library")
    if data.get("format_version") != FORMAT_VERSION:
        raise LibraryError(f"{path}: library format {data.get('format_version')}, this medcnncad reads "
                           f"{FORMAT_VERSION}")
    if str(data.get("descriptor_version")) != DESCRIPTOR_VERSION:
        raise LibraryError(f"{path}: built with descriptor version {data.get('descriptor_version')}, this "
                           f"medcnncad computes version {DESCRIPTOR_VERSION}: rebuild the library")
    return data


@dataclass
class Library:
    """A case library folder (create with :meth:`create`, open with :meth:`open`)."""

    root: Path
    model: dict[str, str]
    descriptor_version: str
    radiomics_names: list[str]
    entries: list[dict[str, str]] = field(default_factory=list)
    lesions: list[LibraryLesion] = field(default_factory=list)

    # -- creating and opening ----------------------------------------------------------------------

    @classmethod
    def create(cls, root: str | Path, model: Mapping[str, Any], radiomics_names: Sequence[str]) -> Library:
        """A new empty library in ``root`` (which must not hold one) for the model ``model`` (report.json's
        ``model`` block: id, version, weights_sha256)."""
        root = Path(root)
        if (root / "library.json").exists():
            raise LibraryError(f"{root}: already holds a case library (use 'library add')")
        root.mkdir(parents=True, exist_ok=True)
        library = cls(root, {k: str(model[k]) for k in ("id", "version", "weights_sha256")}, DESCRIPTOR_VERSION,
                      list(radiomics_names))
        with exclusive_lock(root / LOCK_FILE):
            if (root / "library.json").exists():  # another process created it meanwhile
                raise LibraryError(f"{root}: already holds a case library (use 'library add')")
            library._save()
        return library

    @classmethod
    def open(cls, root: str | Path) -> Library:
        """Open and verify a library: format, every entry's and thumbnail's checksum (LibraryError otherwise)."""
        root = Path(root)
        data = _read_index(root)
        library = cls(root, dict(data["model"]), str(data["descriptor_version"]), list(data["radiomics_names"]),
                      list(data["entries"]))
        for entry in library.entries:
            library.lesions += library._read_entry(entry)
        return library

    def _refresh(self) -> None:
        """Take in the entries another process added since this library was opened (call under the lock)."""
        data = _read_index(self.root)
        if (dict(data["model"]), list(data["radiomics_names"])) != (self.model, self.radiomics_names):
            raise LibraryError(f"{self.root / 'library.json'}: was replaced by another library while open; open it "
                               f"again")
        by_case: dict[str, list[LibraryLesion]] = {}
        for les in self.lesions:
            by_case.setdefault(les.case_id, []).append(les)
        lesions: list[LibraryLesion] = []
        for entry in data["entries"]:
            lesions += by_case[entry["case_id"]] if entry["case_id"] in by_case else self._read_entry(entry)
        self.entries, self.lesions = list(data["entries"]), lesions

    def _read_entry(self, entry: Mapping[str, str]) -> list[LibraryLesion]:
        path = self._inside(entry["file"])
        if not path.is_file():
            raise LibraryError(f"{path}: library entry of case {entry['case_id']} is missing")
        if sha256_of(path) != entry["sha256"]:
            raise LibraryError(f"{path}: checksum mismatch; the library was changed after it was built "
                               f"(entry of case {entry['case_id']})")
        data = json.loads(path.read_text(encoding="utf-8"))
        view = self._read_view(path.parent, data.get("view"))
        given = given_inputs_of(data, str(path))
        lesions: list[LibraryLesion] = []
        for les in data["lesions"]:
            thumb = None
            if les.get("thumbnail"):
                thumb = _verified(path.parent, les["thumbnail"], les["thumbnail_sha256"], "thumbnail")
            lesion_id, volume, radiomics, deep = lesion_vectors(les, self.radiomics_names,
                                                                self.deep_length(lesions), str(path))
            lesions.append(LibraryLesion(data["case_id"], lesion_id, volume, radiomics, deep,
                                         dict(data.get("metadata", {})), thumb, view, given))
        return lesions

    def deep_length(self, more: Sequence[LibraryLesion] = ()) -> int | None:
        """The length of the deep vectors of the library's lesions (and ``more``), None when none has one."""
        return next((len(les.deep) for les in (*self.lesions, *more) if les.deep is not None), None)

    @staticmethod
    def _read_view(folder: Path, view: Mapping[str, str] | None) -> dict[str, Path] | None:
        if not view:
            return None
        return {kind: _verified(folder, view[kind], view[f"{kind}_sha256"], f"view {kind}")
                for kind in ("image", "segmentation")}

    def _inside(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if self.root.resolve() not in path.parents:
            raise LibraryError(f"{self.root / 'library.json'}: entry path {relative!r} leaves the library folder")
        return path

    def _save(self) -> None:
        data = {"format": LIBRARY_FORMAT, "format_version": FORMAT_VERSION, "model": self.model,
                "descriptor_version": self.descriptor_version, "radiomics_names": self.radiomics_names,
                "privacy": "descriptors, thumbnails, the metadata columns given and, for cases added with a view "
                           "image, its voxels and the segmentation; no input paths or DICOM tags",
                "entries": self.entries}
        with atomic_path(self.root / "library.json") as tmp:
            tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")

    # -- adding ------------------------------------------------------------------------------------

    def check_compatible(self, report: Mapping[str, Any], where: str) -> dict[str, Any]:
        """The case's retrieval block, when its model (weights and version: a new version may change the
        preprocessing or post-processing around the same weights, and with them the descriptors) and descriptor
        version are the library's (else LibraryError)."""
        block = case_retrieval(report, where)
        given = report.get("model")
        model: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
        if (model.get("weights_sha256"), model.get("version")) != (self.model["weights_sha256"],
                                                                   self.model.get("version")):
            raise LibraryError(f"{where}: segmented with model {model.get('id')} {model.get('version')} (weights "
                               f"{str(model.get('weights_sha256'))[:12]}), the library holds model {self.model['id']} "
                               f"{self.model['version']} (weights {self.model['weights_sha256'][:12]})")
        if str(block.get("descriptor_version")) != self.descriptor_version:
            raise LibraryError(f"{where}: descriptor version {block.get('descriptor_version')}, the library's is "
                               f"{self.descriptor_version}")
        if not isinstance(block["lesions"], list):
            raise LibraryError(f"{where}: report.json retrieval lesions is not a list")
        given_inputs_of(block, where)
        length = self.deep_length()
        for les in block["lesions"]:
            deep = lesion_vectors(les, self.radiomics_names, length, where)[3]
            length = length if deep is None else len(deep)
        return block

    def add_case(self, case_dir: str | Path, case_id: str, metadata: Mapping[str, str] | None = None,
                 view_image: str | Path | None = None) -> int:
        """Copy a segmented case's descriptors and thumbnails into the library; returns its lesion count.

        Args:
            case_dir: a case output folder (``report.json`` with ``retrieval``, ``lesion_<id>.png`` thumbnails).
            case_id: the case's name in the library (letters, digits, ``.``, ``_``, ``-``); not yet present.
            metadata: column -> value (diagnosis, grade, outcome, ...), stored as given.
            view_image: one of the case's input volumes (file or DICOM folder): stored with the case's
                ``labels.seg.nrrd`` so that a viewer can show the case (voxels and geometry only).
        """
        case_dir = Path(case_dir)
        if not _CASE_ID.fullmatch(case_id):
            raise LibraryError(f"case id {case_id!r}: use letters, digits, '.', '_' or '-' (at most 128)")
        if not (case_dir / "report.json").is_file():
            raise LibraryError(f"{case_dir}: not a case output folder (no report.json)")
        report = read_json_object(case_dir / "report.json", "a MedCNNCAD case report.json")
        with exclusive_lock(self.root / LOCK_FILE):  # one add at a time: none is lost, no id is written twice
            self._refresh()
            self._check_new_id(case_id)
            block = self.check_compatible(report, str(case_dir))
            view = _view_files(case_dir, view_image) if view_image is not None else None
            folder = self.root / "entries" / case_id
            shutil.rmtree(folder, ignore_errors=True)  # files of an add that failed: no entry's (checked above)
            record: dict[str, str] | None = None
            try:
                record = _write_entry(folder, case_dir, case_id, block, metadata, view)
                lesions = self._read_entry(record)
                self.entries.append(record)
                self._save()
            except BaseException:  # neither a half-written entry folder nor an unsaved record stays behind
                self.entries = [e for e in self.entries if e is not record]
                shutil.rmtree(folder, ignore_errors=True)
                raise
            self.lesions += lesions
        return len(lesions)

    def holds(self, case_id: str, report: Mapping[str, Any], where: str) -> bool:
        """Whether ``case_id`` is in the library as the case of ``report`` (the same lesions and descriptors: added
        before, e.g. by the run a batch resumes); False when the id is not in the library.

        Raises:
            LibraryError: the library holds another case under ``case_id`` (another cohort's patient of the
                same id), naming ``where`` and the id.
        """
        held = [(les.lesion_id, les.radiomics, les.deep) for les in self.lesions if les.case_id == case_id]
        if not held and not any(e["case_id"] == case_id for e in self.entries):
            return False
        block = self.check_compatible(report, where)
        given = [(i, r, d) for i, _, r, d in (lesion_vectors(les, self.radiomics_names, None, where)
                                               for les in block["lesions"])]
        if len(given) != len(held) or not all(a[0] == b[0] and _same(a[1], b[1]) and _same(a[2], b[2])
                                               for a, b in zip(given, held)):
            raise LibraryError(f"{where}: case id {case_id!r}: the library {self.root} holds another case under this "
                               f"id (other lesion descriptors: another patient?); give this case another case_id")
        return True

    def _check_new_id(self, case_id: str) -> None:
        """LibraryError when ``case_id`` is in the library, also in another case (``P1``, ``p1``): on a file system
        that ignores case (macOS, Windows) both would share one entry folder."""
        same = next((e["case_id"] for e in self.entries if e["case_id"].casefold() == case_id.casefold()), None)
        if same == case_id:
            raise LibraryError(f"case id {case_id!r} is already in the library {self.root}")
        if same is not None:
            raise LibraryError(f"case id {case_id!r}: the library {self.root} holds {same!r}, the same name but for "
                               f"case (one entry folder on macOS and Windows); choose another id")

    # -- querying ----------------------------------------------------------------------------------

    def query(self, report: Mapping[str, Any], k: int = 5, lesion_id: int | None = None,
              features: str = DEFAULT_FEATURES, where: str = "the case", exclude_case: str | None = None,
              at_most: bool = False, distinct_cases: bool = True) -> list[Neighbour]:
        """The ``k`` library cases (or lesions) nearest to one lesion of a segmented case, each with a note when
        that library case was segmented from other input sequences than this one (:func:`inputs_note`).

        Args:
            report: the case's report.json content (same model and descriptor version as the library).
            k: results (1 .. cases in the library; lesions with ``distinct_cases=False``).
            lesion_id: the query lesion's id in ``report['retrieval']['lesions']``; default the largest.
            features: ``combined`` (default), ``deep`` or ``radiomics``.
            where: the case's name for error messages.
            exclude_case: a library case id left out (the query case itself, when it is in the library).
            at_most: ``k`` is an upper bound (a viewer's "up to k"): a smaller library returns all it holds.
            distinct_cases: one row per library case, its lesion nearest to the query (default: "the 5 most
                similar cases" are 5 patients); False: the ``k`` nearest lesions, several possibly of one case.
        """
        query = self._query_lesion(report, lesion_id, where)
        pool = [les for les in self.lesions if les.case_id != exclude_case]
        if not pool:
            raise LibraryError(f"{self.root}: the library is empty; add cases with 'medcnncad library add'")
        k = _checked_k(k, pool, at_most, distinct_cases)
        index, q = self._index(pool, query, features, where)
        if distinct_cases:
            found = _nearest_per_case(index, q, [les.case_id for les in pool], k)
        else:
            distances, rows = index.search(q, k)
            found = list(zip(distances[0].tolist(), rows[0].tolist()))
        given = given_inputs_of(case_retrieval(report, where), where)
        neighbours = []
        for rank, (distance, row) in enumerate(found, start=1):
            les = pool[int(row)]
            neighbours.append(Neighbour(rank, float(distance), les, inputs_note(les.case_id, les.given_inputs, given)))
        return neighbours

    def _query_lesion(self, report: Mapping[str, Any], lesion_id: int | None, where: str) -> Mapping[str, Any]:
        """The query lesion of ``report``'s retrieval block: ``lesion_id``, else the largest (LibraryError when the
        case has none or not that one)."""
        block = self.check_compatible(report, where)
        if not block["lesions"]:
            raise LibraryError(f"{where}: no lesion was found in this case; nothing to compare")
        if lesion_id is None:
            return max(block["lesions"], key=lambda les: les["volume_ml"])
        query = next((les for les in block["lesions"] if int(les["lesion_id"]) == lesion_id), None)
        if query is None:
            ids = [les["lesion_id"] for les in block["lesions"]]
            raise LibraryError(f"{where}: no lesion {lesion_id} (lesions: {ids})")
        return query

    def _index(self, pool: Sequence[LibraryLesion], query: Mapping[str, Any], features: str,
               where: str) -> tuple[ExactIndex, np.ndarray]:
        """The exact index of ``pool``'s standardised descriptors and the query lesion's row, in ``features``."""
        radiomics = np.stack([les.radiomics for les in pool])
        deep = None if any(les.deep is None for les in pool) else np.stack([les.deep for les in pool])  # type: ignore[misc]
        q_radiomics = np.asarray([query["radiomics"][n] for n in self.radiomics_names], np.float32)[None]
        q_deep = None if query.get("deep") is None else np.asarray(query["deep"], np.float32)[None]
        if (deep is None) != (q_deep is None) and features != "radiomics":
            raise LibraryError(f"{where}: deep descriptors are missing on one side; use --features radiomics")
        lib, q = standardise_blocks(_blocks(features, radiomics, deep), _blocks(features, q_radiomics, q_deep))
        return ExactIndex(lib), q


def _checked_k(k: int, pool: Sequence[LibraryLesion], at_most: bool, distinct_cases: bool) -> int:
    """``k`` (capped at what ``pool`` holds with ``at_most``) when 1 <= k <= the pool's cases (lesions without
    ``distinct_cases``); LibraryError naming ``k`` and both counts otherwise."""
    cases = len({les.case_id for les in pool})
    available = cases if distinct_cases else len(pool)
    k = min(k, available) if at_most else k
    if 1 <= k <= available:
        return k
    if distinct_cases:
        raise LibraryError(f"k = {k}: the library holds {cases} case(s) ({len(pool)} lesion(s)); choose k between 1 "
                           f"and {cases} (or ask for lesions, several per case: --lesions)")
    raise LibraryError(f"k = {k}: the library holds {len(pool)} lesion(s); choose k between 1 and {len(pool)}")


def _nearest_per_case(index: ExactIndex, query: np.ndarray, case_ids: Sequence[str],
                      k: int) -> list[tuple[float, int]]:
    """(distance, row) of the nearest row of each of the ``k`` cases nearest to ``query``, nearest first: the
    first row of each case in the exact ranking, searched with twice as many rows until ``k`` cases are found
    (``k`` must not exceed the cases in ``case_ids``)."""
    wanted = k
    while True:
        distances, rows = index.search(query, wanted)
        found: dict[str, tuple[float, int]] = {}
        for distance, row in zip(distances[0].tolist(), rows[0].tolist()):
            found.setdefault(case_ids[row], (distance, row))
        if len(found) >= k or wanted == len(index):
            return list(found.values())[:k]
        wanted = min(2 * wanted, len(index))
