"""A persistent inference worker process and its client (file + pipe contract).

The Slicer module keeps the GUI responsive by running inference in a separate
process (Slicer's ``PythonSlicer``; any Python with the engine works)::

    python -m medcnncad.slicer.worker

Protocol: one JSON object per line. Requests on stdin::

    {"id": 1, "cmd": "segment", "model": "demo", "device": "auto", "trust": false, "classifier": null, "tta": false,
     "inputs": {"T1": "/tmp/x/T1.nrrd", ...}, "out": "/tmp/x/out"}
    {"id": 2, "cmd": "quit"}

(``"tta": null`` or absent: the model's default, manifest ``inference.test_time_augmentation``. An optional
``"precision"``: one of ``medcnncad.inference.precisions.CASE_PRECISIONS``; absent: measured once per machine
and model, so a model's first case on a machine also runs the calibration, during the progress stage
"model and execution policy".)

Events on stdout: ``{"id", "event": "progress", "stage", "fraction"}``, then
``{"id", "event": "done", "out"}`` or ``{"id", "event": "error", "message"}``. The
worker writes ``labels.nrrd``, ``prob_<channel>.nrrd`` and ``result.json`` into
``out``. Loaded models stay in memory, so a second case does not pay start-up again, and so does the memory a
case frees (glibc; :mod:`medcnncad.inference.freed_memory`). ``{"id", "cmd": "ping"}`` answers
``{"id", "event": "ready", "pid", "freed_memory_kept"}``.

Inside Slicer ``PythonSlicer`` is CTK's launcher: it starts the real interpreter (``python-real``)
as a child process and forwards no signals, so killing the launcher alone leaves the worker
running. The client therefore starts the worker in its own process group / session (on Windows
also without a console window) and cancels by ending the whole process tree.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
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
import torch

from medcnncad.classification.grade import attach_classification, cached_classifier
from medcnncad.errors import InputError, MedCNNCADError, RunCancelled
from medcnncad.inference.freed_memory import freed_memory_kept, keep_freed_memory
from medcnncad.inference.machine_policy import cached_segmenter
from medcnncad.inference.segmenter import SegmentationResult
from medcnncad.lesions.components import Lesion
from medcnncad.lesions.lesion_filter import RemovedCandidate
from medcnncad.preprocessing.brain_mask import brain_mask_choice
from medcnncad.retrieval.descriptors import case_descriptors, retrieval_report

__all__ = ["serve", "save_result", "load_result", "WorkerClient", "WorkerError", "WorkerCancelled",
           "worker_popen_kwargs", "kill_process_tree"]

ENGINE_DIR = Path(__file__).resolve().parents[2]


def save_result(result: SegmentationResult, out: Path) -> None:
    """Write a result as NRRD files + ``result.json`` (label map, probabilities, lesions, timings, the worker's
    torch thread count)."""
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
            "lesion_filter_max": result.lesion_filter_max,
            "torch_threads": torch.get_num_threads()}  # float32 sums follow the thread count: for comparisons
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
                              lesion_filter_max=meta.get("lesion_filter_max"), brain_mask=brain_mask,
                              preprocessing=meta.get("preprocessing", []))


class _Server:
    def __init__(self, output: TextIO) -> None:
        self.output = output

    def emit(self, **event: Any) -> None:
        self.output.write(json.dumps(event) + "\n")
        self.output.flush()

    def segment(self, request: Mapping[str, Any]) -> None:
        rid = request.get("id")

        self.emit(id=rid, event="progress", stage="model and execution policy", fraction=0.0)
        segmenter = cached_segmenter(request["model"], request.get("device", "auto"), bool(request.get("trust")),
                                     request.get("precision"))

        def progress(stage: str, fraction: float) -> None:
            self.emit(id=rid, event="progress", stage=stage, fraction=fraction)

        describe = bool(request.get("describe"))  # then the descriptors reuse the network's input
        choice = brain_mask_choice(request.get("brain_mask"), request.get("brain_mask_from"),
                                   request.get("brain_mask_name"))  # the reader's brain mask, written by the Logic
        result = segmenter.run(request["inputs"], progress=progress, tta=request.get("tta"),
                               keep_network_input=describe, brain_mask=choice)
        if request.get("classifier"):
            attach_classification(result, cached_classifier(request["classifier"]))
        save_result(result, Path(request["out"]))
        if describe:  # similar-case retrieval descriptors (one more network pass per lesion)
            progress("descriptors", 0.0)
            found = retrieval_report(case_descriptors(result, segmenter.model, segmenter.device), result)
            (Path(request["out"]) / "retrieval.json").write_text(json.dumps(found))
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
            self.emit(id=rid, event="ready", pid=os.getpid(), freed_memory_kept=freed_memory_kept())
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


# Windows process-creation flags (values from the Win32 API; the subprocess constants exist only on Windows)
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000


def worker_popen_kwargs(platform: str = sys.platform) -> dict[str, Any]:
    """Popen arguments that detach the worker from Slicer's console and signals.

    Windows: its own process group and no console window (closing a console would otherwise
    end the worker, and a persistent worker would show one). POSIX: its own session, so the
    launcher and the real interpreter below it form one process group that cancel can end.
    """
    if platform == "win32":
        return {"creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW}
    return {"start_new_session": True}


def kill_process_tree(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """End ``process`` and every process below it (CTK's launcher starts ``python-real`` as a child).

    psutil when available (children first, as Slicer's own MONAIAuto3DSeg does); else the process
    group on POSIX (the worker is a session leader) or ``taskkill /T /F`` on Windows.
    """
    try:
        import psutil
    except ImportError:
        psutil = None
    children: list[Any] = []
    if psutil is not None:
        try:
            children = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        for child in children:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
    if os.name == "nt":
        if psutil is None:
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(process.pid)], capture_output=True, check=False,
                           creationflags=CREATE_NO_WINDOW)
    else:
        try:  # also catches children whose parent (the launcher) already died
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        process.kill()
    except OSError:
        pass
    process.wait(timeout=timeout)
    if psutil is not None and children:
        psutil.wait_procs(children, timeout=timeout)


class WorkerError(MedCNNCADError):
    """The worker reported an error, or died."""


class WorkerCancelled(RunCancelled):
    """The run was cancelled by the user (the worker was ended)."""


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
        self._cancelled: set[int] = set()
        self.log_path = Path(tempfile.gettempdir()) / f"medcnncad-worker-{os.getpid()}.log"

    def _start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ENGINE_DIR), env.get("PYTHONPATH", "")]))
        log = open(self.log_path, "a")  # noqa: SIM115 - stays open as the worker's stderr
        self.process = subprocess.Popen([self.python, "-u", "-m", "medcnncad.slicer.worker"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                                        **worker_popen_kwargs())
        self.events = queue.Queue()
        # each worker's reader writes to that worker's queue: a cancelled worker's exit never reaches the next one
        threading.Thread(target=self._read, args=(self.process, self.events), daemon=True).start()

    @staticmethod
    def _read(process: subprocess.Popen, events: queue.Queue) -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            try:
                events.put(json.loads(line))
            except json.JSONDecodeError:
                continue
        events.put({"event": "exit", "code": process.wait()})

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def submit(self, request: dict[str, Any]) -> int:
        """Send a request (starting the worker if needed); returns its id."""
        if not self.alive:
            self._start()
        self._next_id += 1
        request = dict(request, id=self._next_id)
        self.process.stdin.write(json.dumps(request) + "\n")  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]
        return self._next_id

    def poll(self, request_id: int, progress: Callable[[str, float], None] | None = None,
             timeout: float = 0.0) -> dict[str, Any] | None:
        """Handle pending events; returns the final event of ``request_id`` or None if still running.

        Raises :class:`WorkerCancelled` for a cancelled request, even if its result arrived before the cancel.
        """
        if request_id in self._cancelled:
            raise WorkerCancelled("cancelled; the scene was not changed")
        while True:
            try:
                event = self.events.get(timeout=timeout) if timeout else self.events.get_nowait()
            except queue.Empty:
                return None
            if event.get("event") == "exit":
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
        """Stop the running request by ending the worker's whole process tree (a new one starts next time)."""
        self._cancelled.add(self._next_id)
        if self.process is not None and self.process.poll() is None:
            kill_process_tree(self.process)

    def close(self) -> None:
        if self.alive:
            try:
                self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")  # type: ignore[union-attr]
                self.process.stdin.flush()  # type: ignore[union-attr]
                self.process.wait(timeout=5)  # type: ignore[union-attr]
            except (OSError, subprocess.TimeoutExpired):
                kill_process_tree(self.process)  # type: ignore[arg-type]


if __name__ == "__main__":
    keep_freed_memory()  # a process that exists to run cases (medcnncad.inference.freed_memory)
    serve()
