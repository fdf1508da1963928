"""A segmentation written back into Slicer's DICOM database as DICOM SEG + SR (TID 1500).

The SEG and SR writers (:mod:`medcnncad.reporting.dicom_seg`, :mod:`medcnncad.reporting.dicom_sr`)
use highdicom, which needs pydicom 3; Slicer 5.10 ships pydicom 2.4.4 for its own DICOM
plugins, and installing highdicom into Slicer's Python would replace it. So the writers run in
a child process (``PythonSlicer -m medcnncad.slicer.dicom_export ...``) whose ``PYTHONPATH``
starts with a private folder (``$MEDCNNCAD_HOME/dicom-export``) holding highdicom and pydicom 3,
installed there once with ``pip install --target`` after the user agrees. Slicer's own process
never imports them.

Flow (:func:`export_to_database`): the source series' files are looked up in the DICOM database
from the reference volume's ``DICOM.instanceUIDs`` attribute (set by Slicer's DICOM scalar
volume plugin), sorted along the slice normal as Slicer stacks them (so slice k of the label
map is file k), or the one enhanced multi-frame file it was loaded from, whose frame k must lie where the volume's
slice k lies (checked); the result is saved as the worker saves it; the child writes ``labels.seg.dcm``
and ``labels.sr.dcm``; the caller imports the folder into the database (``DICOMUtils.importDicom``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from medcnncad.errors import InputError, MedCNNCADError
from medcnncad.inference.result import SegmentationResult
from medcnncad.models.registry import describe_model
from medcnncad.slicer.worker import ENGINE_DIR, load_result, save_result

__all__ = ["EXPORT_PACKAGES", "export_packages_dir", "export_packages_installed", "install_arguments",
           "source_files", "sort_by_slice_position", "frame_positions", "check_frames_are_slices", "write_seg_and_sr",
           "export_to_database", "main"]

EXPORT_PACKAGES = ("highdicom==0.28.2", "pydicom==3.0.2")  # the versions the tests validate (constraints.txt)


def export_packages_dir() -> Path:
    """The private folder that holds highdicom and pydicom 3 for the export process."""
    return Path(os.environ.get("MEDCNNCAD_HOME", Path.home() / ".medcnncad")) / "dicom-export"


def export_packages_installed() -> bool:
    """Whether the export process can import highdicom (from the private folder or its own Python)."""
    return (export_packages_dir() / "highdicom").is_dir()


def install_arguments() -> str:
    """Arguments for ``slicer.util.pip_install``: the packages into the private folder only."""
    return f'--target "{export_packages_dir()}" --upgrade {" ".join(EXPORT_PACKAGES)}'


def sort_by_slice_position(files: Sequence[str]) -> list[str]:
    """Files of one series ascending along the slice normal (row x column cosines), as Slicer's
    ``DICOMUtils.getSortedImageFiles`` orders them and as the volume's K axis runs."""
    heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    try:
        cosines = np.asarray(heads[0].ImageOrientationPatient, dtype=float)
        normal = np.cross(cosines[:3], cosines[3:])
        distances = [float(np.dot(normal, np.asarray(h.ImagePositionPatient, dtype=float))) for h in heads]
    except AttributeError:
        raise InputError(f"{files[0]}: the source series has no slice geometry (ImagePositionPatient)") from None
    return [f for _, f in sorted(zip(distances, files))]


def source_files(volume_node: Any, database: Any) -> list[str]:
    """The DICOM files a volume node was loaded from, via the database, in slice order.

    Args:
        volume_node: a ``vtkMRMLScalarVolumeNode`` loaded by Slicer's DICOM module.
        database: ``slicer.dicomDatabase`` (``fileForInstance(uid) -> path``).

    Raises:
        InputError: the volume did not come from the DICOM database, or its files are gone.
    """
    uids = (volume_node.GetAttribute("DICOM.instanceUIDs") or "").split()
    if not uids:
        raise InputError(f"volume {volume_node.GetName()!r} was not loaded from the DICOM database "
                         f"(no DICOM.instanceUIDs): DICOM SEG/SR must reference a DICOM source series")
    files = [database.fileForInstance(uid) for uid in uids]
    missing = [uid for uid, f in zip(uids, files) if not f or not Path(f).is_file()]
    if missing:
        raise InputError(f"volume {volume_node.GetName()!r}: {len(missing)} of its DICOM instances are not in "
                         f"the database any more (e.g. {missing[0]})")
    if len(files) == 1 and _frame_count(files[0]) > 1:
        check_frames_are_slices(volume_node, files[0])  # one enhanced multi-frame file: its frames are the slices
        return files
    return sort_by_slice_position(files)


def _frame_count(path: str) -> int:
    """NumberOfFrames of a DICOM file (1 when absent), read from its header only."""
    return int(getattr(pydicom.dcmread(path, stop_before_pixels=True), "NumberOfFrames", 1) or 1)


def frame_positions(path: str) -> np.ndarray:
    """(frames, 3) ImagePositionPatient (LPS, mm) of each frame of an enhanced multi-frame file, in stored order."""
    head = pydicom.dcmread(path, stop_before_pixels=True)
    try:
        return np.array([[float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
                         for item in head.PerFrameFunctionalGroupsSequence])
    except AttributeError:
        raise InputError(f"{path}: the multi-frame source has no per-frame positions (PlanePositionSequence)") from None


def check_frames_are_slices(volume_node: Any, path: str, tolerance_mm: float = 0.01) -> None:
    """Refuse an enhanced multi-frame source whose frame k does not lie where the volume node's slice k lies (the label
    map's K is the volume's, and the SEG gives its slice k to frame k + 1).

    Args:
        volume_node: the reference ``vtkMRMLScalarVolumeNode`` (its own IJK-to-RAS geometry, the scanner's frame).
        path: the one DICOM file the node was loaded from.
        tolerance_mm: how far a frame's position may lie from its slice's.

    Raises:
        InputError: naming the volume, the file and the first frame that lies elsewhere (or the counts).
    """
    positions = frame_positions(path)
    slices = int(volume_node.GetImageData().GetDimensions()[2])
    if len(positions) != slices:
        raise InputError(f"volume {volume_node.GetName()!r}: {path} has {len(positions)} frames for its {slices} "
                         f"slices")
    axes = [[0.0] * 3 for _ in range(3)]
    volume_node.GetIJKToRASDirections(axes)  # axes[2]: the K axis in RAS
    step = np.asarray(axes[2]) * float(volume_node.GetSpacing()[2])
    ras = np.asarray(volume_node.GetOrigin()) + np.arange(slices)[:, None] * step
    lps = ras * np.array([-1.0, -1.0, 1.0])
    off = np.linalg.norm(lps - positions, axis=1)
    if off.max() > tolerance_mm:
        k = int(np.argmax(off > tolerance_mm))
        raise InputError(f"volume {volume_node.GetName()!r}: frame {k + 1} of {path} lies {off[k]:.2f} mm from the "
                         f"volume's slice {k}: the frames are not stacked as the volume's slices")


def write_seg_and_sr(result: SegmentationResult, sources: list[str], out: Path) -> list[Path]:
    """``labels.seg.dcm`` and ``labels.sr.dcm`` for a result on the sources' grid (needs highdicom)."""
    from medcnncad.reporting.dicom_seg import write_dicom_seg  # lazy: highdicom, export process only
    from medcnncad.reporting.dicom_sr import write_dicom_sr

    out.mkdir(parents=True, exist_ok=True)
    seg = write_dicom_seg(result.label_map, result.manifest, sources, out / "labels.seg.dcm")
    sr = write_dicom_sr(result, seg, sources, out / "labels.sr.dcm")
    return [Path(seg), Path(sr)]


def export_to_database(result: SegmentationResult, sources: list[str], model: str, out: Path,
                       python: str | None = None,
                       run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> list[Path]:
    """Write the SEG and SR of ``result`` into ``out`` in a child process with the private packages.

    Args:
        result: the segmentation (on the grid of the source series).
        sources: the source series' files in slice order (:func:`source_files`).
        model: the model key the result was made with (to describe it again in the child).
        out: an empty folder for the two files (then imported into the database by the caller).
        python: the interpreter (Slicer: ``PythonSlicer``); default this one.

    Raises:
        MedCNNCADError: the child failed; its last line says why.
    """
    with tempfile.TemporaryDirectory(prefix="medcnncad-export-") as tmp:
        save_result(result, Path(tmp) / "result")
        listing = Path(tmp) / "sources.txt"
        listing.write_text("\n".join(sources), encoding="utf-8")
        env = dict(os.environ, PYTHONIOENCODING="utf-8")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(export_packages_dir()), str(ENGINE_DIR),
                                                           env.get("PYTHONPATH", "")]))
        done = run([python or sys.executable, "-m", "medcnncad.slicer.dicom_export", "--result",
                    str(Path(tmp) / "result"), "--model", model, "--sources", str(listing), "--out", str(out)],
                   env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout or "").strip().splitlines()
        raise MedCNNCADError(f"DICOM export failed: {lines[-1] if lines else f'exit code {done.returncode}'}")
    return [out / "labels.seg.dcm", out / "labels.sr.dcm"]


def main(argv: Sequence[str] | None = None) -> int:
    """The export process: read a saved result, write its SEG and SR. Errors: one line, exit 2."""
    parser = argparse.ArgumentParser(prog="medcnncad.slicer.dicom_export")
    for name in ("--result", "--model", "--sources", "--out"):
        parser.add_argument(name, required=True)
    args = parser.parse_args(argv)
    try:
        manifest = describe_model(args.model)
        result = load_result(Path(args.result), manifest)
        sources = Path(args.sources).read_text(encoding="utf-8").split("\n")
        write_seg_and_sr(result, sources, Path(args.out))
    except (MedCNNCADError, OSError) as exc:
        print(f"medcnncad: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"medcnncad: error: DICOM export needs highdicom ({exc}); install it into {export_packages_dir()}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
