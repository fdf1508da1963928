"""A persistent inference worker process and its client (file + pipe contract).

The Slicer module keeps the GUI responsive by running inference in a separate
process (Slicer's ``PythonSlicer``; any Python with the engine works)::

    python -m medcnncad.slicer.worker

Protocol: one JSON object per line. Requests on stdin::

    {"id": 1, "cmd": "segment", "model": "demo", "device": "auto", "trust": false, "classifier": null, "tta": false,
     "inputs": {"T1": "/tmp/x/T1.nrrd", ...}, "out": "/tmp/x/out"}
    {"id": 2, "cmd": "quit"}

(``"tta": null`` or absent: the model's default, manifest ``inference.test_time_augmentation``.)

Events on stdout: ``{"id", "event": "progress", "stage", "fraction"}``, then
``{"id", "event": "done", "out"}`` or ``{"id", "event": "error", "message"}``. The
worker writes ``labels.nrrd``, ``prob_<channel>.nrrd`` and ``result.json`` into
``out``. Loaded models stay in memory, so a second case does not pay start-up again.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import SimpleITK as sitk

from medcnncad.classification.grade import attach_classification, cached_classifier
from medcnncad.errors import InputError, MedCNNCADError
from medcnncad.inference.segmenter import SegmentationResult, cached_segmenter
from medcnncad.lesions.components import Lesion
from medcnncad.lesions.lesion_filter import RemovedCandidate

__all__ = ["serve", "save_result", "load_result", "WorkerClient", "WorkerError", "WorkerCancelled"]

ENGINE_DIR = Path(__file__).resolve().parents[2]


def save_result(result: SegmentationResult, out: Path) -> None:
    """Write a result as NRRD files + ``result.json`` (label map, probabilities, lesions, timings)."""
    out.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(result.label_image(), str(out / "labels.nrrd"), True)
    for channel in result.probabilities:
        sitk.WriteImage(result.probability_image(channel), str(out / f"prob_{channel}.nrrd"), False)
    if result.uncertainty is not None:
        sitk.WriteImage(result.uncertainty_image(), str(out / "uncertainty.nrrd"), False)
    if result.brain_mask is not None:
        sitk.WriteImage(result.brain_mask_image(), str(out / "brain_mask.nrrd"), True)
    meta = {"preprocessing": result.preprocessing, "tta_passes": result.tta_passes,
            "classification": result.classification,
            "model": result.manifest.id, "weights_sha256": result.manifest.weights_sha256, "device": result.device,
            "timings": result.timings, "missing_channels": result.missing_channels, "warnings": result.warnings,
            "channels": list(result.probabilities), "lesions": [asdict(les) for les in result.lesions],
            "removed_candidates": [asdict(c) for c in result.removed_candidates],
            "lesion_classifier_max": result.lesion_classifier_max}
    (out / "result.json").write_text(json.dumps(meta))


def _lists_to_tuples(fields: dict[str, Any]) -> dict[str, Any]:
    """A record's JSON fields with its lists (coordinates) as tuples again."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}


def load_result(out: Path, manifest, reference: sitk.Image | None = None) -> SegmentationResult:
    """Read what :func:`save_result` wrote; ``manifest`` from :func:`medcnncad.models.registry.describe_model`."""
    meta = json.loads((out / "result.json").read_text())
    if meta["weights_sha256"] != manifest.weights_sha256:
        raise MedCNNCADError(f"{out}: result was made by other weights than model {manifest.id} describes")
    labels = sitk.ReadImage(str(out / "labels.nrrd"))
    probabilities = {c: sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"prob_{c}.nrrd"))) for c in meta["channels"]}
    lesions = [Lesion(**_lists_to_tuples(les)) for les in meta["lesions"]]
    uncertainty = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "uncertainty.nrrd"))) \
        if (out / "uncertainty.nrrd").is_file() else None
    brain_mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "brain_mask.nrrd"))).astype(np.uint8) \
        if (out / "brain_mask.nrrd").is_file() else None
    return SegmentationResult(sitk.GetArrayFromImage(labels).astype(np.uint8), probabilities,
                              reference if reference is not None else labels, lesions, manifest, meta["device"],
                              meta["timings"], meta["missing_channels"], meta["warnings"],
                              uncertainty=uncertainty, tta_passes=meta.get("tta_passes", 1),
                              classification=meta.get("classification"),
                              removed_candidates=[RemovedCandidate(**_lists_to_tuples(c))
                                                  for c in meta.get("removed_candidates", [])],
                              lesion_classifier_max=meta.get("lesion_classifier_max"), brain_mask=brain_mask,
                              preprocessing=meta.get("preprocessing", []))


class _Server:
    def __init__(self, output: TextIO) -> None:
        self.output = output

    def emit(self, **event: Any) -> None:
        self.output.write(json.dumps(event) + "\n")
        self.output.flush()

    def segment(self, request: Mapping[str, Any]) -> None:
        rid = request.get("id")

        segmenter = cached_segmenter(request["model"], request.get("device", "auto"), bool(request.get("trust")))
        def progress(stage: str, fraction: float) -> None:
            self.emit(id=rid, event="progress", stage=stage, fraction=fraction)

        result = segmenter.run(request["inputs"], progress=progress, tta=request.get("tta"))
        if request.get("classifier"):
            attach_classification(result, cached_classifier(request["classifier"]))
        save_result(result, Path(request["out"]))
        self.emit(id=rid, event="done", out=request["out"])

    def handle(self, line: str) -> bool:
        try:
            request = json.loads(line)
        except json.JSONDecodeError as exc:
            self.emit(id=None, event="error", message=f"bad request: {exc}")
            return True
        rid = request.get("id")
        if request.get("cmd") == "quit":
            return False
        if request.get("cmd") == "ping":
            self.emit(id=rid, event="ready", pid=os.getpid())
            return True
        try:
            if request.get("cmd") != "segment":
                raise InputError(f"unknown worker command {request.get('cmd')!r}")
            self.segment(request)
        except MedCNNCADError as exc:
            self.emit(id=rid, event="error", message=str(exc))
        except Exception as exc:  # noqa: BLE001 - reported to the client, the worker lives on
            self.emit(id=rid, event="error", message=f"{type(exc).__name__}: {exc}")
        return True


def serve(stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
    """Answer requests until ``quit`` or end of input."""
    server = _Server(stdout)
    for line in stdin:
        if line.strip() and not server.handle(line):
            break


class WorkerError(MedCNNCADError):
    """The worker reported an error, or died."""


class WorkerCancelled(MedCNNCADError):
    """The run was cancelled by the user."""


class WorkerClient:
    """Starts and talks to a worker process; survives worker crashes by restarting it.

    Args:
        python: interpreter that runs the worker (Slicer: ``PythonSlicer``); default this one.
    """

    def __init__(self, python: str | None = None) -> None:
        self.python = python or shutil.which("PythonSlicer") or sys.executable
        self.process: subprocess.Popen | None = None
        self.events: queue.Queue = queue.Queue()
        self._next_id = 0
        self._cancelled = False
        self.log_path = Path(tempfile.gettempdir()) / f"medcnncad-worker-{os.getpid()}.log"

    def _start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ENGINE_DIR), env.get("PYTHONPATH", "")]))
        log = open(self.log_path, "a")  # noqa: SIM115 - stays open as the worker's stderr
        self.process = subprocess.Popen([self.python, "-u", "-m", "medcnncad.slicer.worker"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            try:
                self.events.put(json.loads(line))
            except json.JSONDecodeError:
                continue
        self.events.put({"event": "exit", "code": process.wait()})

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def submit(self, request: dict[str, Any]) -> int:
        """Send a request (starting the worker if needed); returns its id."""
        if not self.alive:
            self.events = queue.Queue()
            self._start()
        self._next_id += 1
        self._cancelled = False
        request = dict(request, id=self._next_id)
        self.process.stdin.write(json.dumps(request) + "\n")  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]
        return self._next_id

    def poll(self, request_id: int, progress: Callable[[str, float], None] | None = None,
             timeout: float = 0.0) -> dict[str, Any] | None:
        """Handle pending events; returns the final event of ``request_id`` or None if still running."""
        while True:
            try:
                event = self.events.get(timeout=timeout) if timeout else self.events.get_nowait()
            except queue.Empty:
                return None
            if event.get("event") == "exit":
                if self._cancelled:
                    raise WorkerCancelled("cancelled; the scene was not changed")
                raise WorkerError(f"the inference worker stopped unexpectedly (exit code {event['code']}); "
                                  f"see {self.log_path}. The next run starts a new worker.")
            if event.get("id") != request_id:
                continue
            if event["event"] == "progress" and progress:
                progress(event["stage"], event["fraction"])
            elif event["event"] in ("done", "error"):
                return event

    def run(self, request: dict[str, Any], progress: Callable[[str, float], None] | None = None) -> str:
        """Submit and wait; returns the output folder or raises :class:`WorkerError`."""
        rid = self.submit(request)
        while True:
            event = self.poll(rid, progress, timeout=0.5)
            if event is None:
                continue
            if event["event"] == "error":
                raise WorkerError(event["message"])
            return event["out"]

    def cancel(self) -> None:
        """Stop the running request by ending the worker (a new one starts on the next request)."""
        if self.alive:
            self._cancelled = True
            self.process.kill()  # type: ignore[union-attr]
            self.process.wait()  # type: ignore[union-attr]

    def close(self) -> None:
        if self.alive:
            try:
                self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")  # type: ignore[union-attr]
                self.process.stdin.flush()  # type: ignore[union-attr]
                self.process.wait(timeout=5)  # type: ignore[union-attr]
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()  # type: ignore[union-attr]


if __name__ == "__main__":
    serve()
