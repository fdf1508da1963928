"""The persistent worker process: results equal in-process inference; errors, crashes, cancel."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import small_phantom

from medcnncad.inference.freed_memory import glibc_malloc
from medcnncad.inference.segmenter import Segmenter
from medcnncad.models.registry import describe_model, load_model
from medcnncad.slicer.worker import WorkerCancelled, WorkerClient, WorkerError, load_result


@pytest.fixture
def case(tmp_path):
    images, label = small_phantom()
    paths = {}
    for name, img in images.items():
        paths[name] = str(tmp_path / f"{name}.nrrd")
        sitk.WriteImage(img, paths[name])
    return images, paths


def _with_threads(threads: int, run):
    """``run()`` with ``threads`` torch threads (a float32 sum's rounding follows the thread count: compared with a
    worker's result, the in-process run uses the worker's count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return run()
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def client():
    c = WorkerClient()
    yield c
    c.close()


def test_worker_result_equals_in_process_and_model_stays_loaded(client, case, tmp_path):
    images, paths = case
    stages = []
    out = client.run({"cmd": "segment", "model": "demo", "device": "cpu", "inputs": paths,
                      "out": str(tmp_path / "o1")}, progress=lambda s, f: stages.append(s))
    assert "inference" in stages and stages[-1] == "done"
    manifest = describe_model("demo")
    remote = load_result(tmp_path / "o1", manifest, images["T1"])
    threads = json.loads((tmp_path / "o1" / "result.json").read_text())["torch_threads"]
    local = _with_threads(threads, lambda: Segmenter(load_model("demo"), "cpu").run(images))
    np.testing.assert_array_equal(remote.label_map, local.label_map)
    np.testing.assert_allclose(remote.probabilities["ET"], local.probabilities["ET"], atol=1e-6)
    assert [les.volume_ml for les in remote.lesions] == [les.volume_ml for les in local.lesions]
    pid = client.process.pid
    client.run({"cmd": "segment", "model": "demo", "device": "cpu", "inputs": paths, "out": str(tmp_path / "o2")})
    assert client.process.pid == pid  # same process: the model was not loaded again
    assert out == str(tmp_path / "o1")


def test_worker_reports_bad_input_and_lives_on(client, case, tmp_path):
    _, paths = case
    bad = dict(paths, T1=str(tmp_path / "missing.nrrd"))
    with pytest.raises(WorkerError, match="missing.nrrd: file not found"):
        client.run({"cmd": "segment", "model": "demo", "device": "cpu", "inputs": bad, "out": str(tmp_path / "x")})
    assert client.alive and not (tmp_path / "x").exists()


def test_crashed_worker_is_reported_and_next_run_works(client, case, tmp_path):
    _, paths = case
    request = {"cmd": "segment", "model": "demo", "device": "cpu", "inputs": paths, "out": str(tmp_path / "o")}
    rid = client.submit(request)
    os.kill(client.process.pid, signal.SIGKILL)
    with pytest.raises(WorkerError, match="stopped unexpectedly"):
        while client.poll(rid, timeout=0.5) is None:
            pass
    assert client.run(request) == str(tmp_path / "o")


def test_cancel(client, case, tmp_path):
    _, paths = case
    rid = client.submit({"cmd": "segment", "model": "demo", "device": "cpu", "inputs": paths,
                         "out": str(tmp_path / "o")})
    time.sleep(0.5)
    client.cancel()
    with pytest.raises(WorkerCancelled):
        while client.poll(rid, timeout=0.5) is None:
            pass
    assert not client.alive


# -- Slicer's PythonSlicer is CTK's launcher: the worker is its child (see Testing/stand_ins) --------------------

posix_only = pytest.mark.skipif(os.name == "nt", reason="the stand-in launcher is a POSIX shell script")


def _real_worker(client: WorkerClient, request_id: int) -> int:
    """The PID of the interpreter below the launcher, once it has reported progress on ``request_id``."""
    import psutil

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        event = client.events.get(timeout=120)
        if event.get("id") == request_id and event.get("event") == "progress":
            client.events.put(event)
            children = psutil.Process(client.process.pid).children(recursive=True)
            assert len(children) == 1, children  # the launcher's one child: python-real
            return children[0].pid
    raise AssertionError("the worker never reported progress")


def _gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@posix_only
def test_cancel_through_a_launcher_ends_the_real_worker_and_next_run_works(case, tmp_path):
    from stand_ins.launcher import make_launcher

    _, paths = case
    client = WorkerClient(python=make_launcher(tmp_path))
    try:
        request = {"cmd": "segment", "model": "demo", "device": "cpu", "inputs": paths, "out": str(tmp_path / "o")}
        rid = client.submit(request)
        launcher_pid = client.process.pid
        real = _real_worker(client, rid)
        client.cancel()
        deadline = time.monotonic() + 10
        while not _gone(real) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(real), "cancel killed only the launcher: the real worker still runs"
        assert _gone(launcher_pid)
        with pytest.raises(WorkerCancelled):
            client.poll(rid, timeout=0.5)
        assert client.run(request) == str(tmp_path / "o")  # a new worker (and launcher) serves the next run
        assert client.process.pid != launcher_pid
    finally:
        client.close()


def test_cancelled_request_never_returns_its_result_even_if_it_already_arrived(client, case, tmp_path):
    _, paths = case
    request = {"cmd": "segment", "model": "demo", "device": "cpu", "inputs": paths, "out": str(tmp_path / "o")}
    client.run(request)  # the model is loaded; the next run is quick
    rid = client.submit(dict(request, out=str(tmp_path / "o2")))
    deadline = time.monotonic() + 180
    while not (tmp_path / "o2" / "result.json").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)  # the "done" event is already queued: cancel must still win
    client.cancel()
    with pytest.raises(WorkerCancelled):
        client.poll(rid, timeout=0.5)
    assert client.run(request) == str(tmp_path / "o")


def test_worker_popen_kwargs_per_platform():
    from medcnncad.slicer.worker import CREATE_NEW_PROCESS_GROUP, CREATE_NO_WINDOW, worker_popen_kwargs

    assert worker_popen_kwargs("linux") == {"start_new_session": True}
    assert worker_popen_kwargs("darwin") == {"start_new_session": True}
    windows = worker_popen_kwargs("win32")
    assert windows == {"creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW}
    assert (CREATE_NEW_PROCESS_GROUP, CREATE_NO_WINDOW) == (0x200, 0x08000000)  # Win32 API values
    import subprocess

    if hasattr(subprocess, "CREATE_NO_WINDOW"):  # on Windows, the constants Python itself defines
        assert (subprocess.CREATE_NEW_PROCESS_GROUP, subprocess.CREATE_NO_WINDOW) == (0x200, 0x08000000)


@posix_only
def test_worker_runs_in_its_own_session(client, case, tmp_path):
    _, paths = case
    client.submit({"cmd": "ping"})
    assert os.getsid(client.process.pid) == client.process.pid != os.getsid(0)


@pytest.mark.skipif(not glibc_malloc(), reason="glibc only")
def test_the_worker_process_keeps_the_memory_a_case_frees(monkeypatch):
    """Started as Slicer starts it (``python -m medcnncad.slicer.worker``), the worker sets
    :func:`~medcnncad.inference.freed_memory.keep_freed_memory` before its first request (this test process,
    which never calls it, stays as it is)."""
    monkeypatch.delenv("MEDCNNCAD_KEEP_FREED_MEMORY", raising=False)  # the worker inherits this environment
    client = WorkerClient()
    try:
        rid = client.submit({"cmd": "ping"})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            event = client.events.get(timeout=120)
            if event.get("id") == rid and event.get("event") == "ready":
                assert event["freed_memory_kept"] is True
                return
        raise AssertionError("no answer to ping")
    finally:
        client.close()


def test_worker_writes_the_descriptors_when_asked(case, tmp_path):
    """``describe``: the worker adds retrieval.json (model + descriptors), what Logic.similarCases queries with."""
    import io
    import json

    from medcnncad.slicer.worker import _Server

    server = _Server(io.StringIO())
    server.segment({"id": 1, "model": "brats-demo-unet", "device": "cpu", "inputs": case[1],
                    "out": str(tmp_path / "a"), "describe": True})
    server.segment({"id": 2, "model": "brats-demo-unet", "device": "cpu", "inputs": case[1],
                    "out": str(tmp_path / "b")})
    found = json.loads((tmp_path / "a" / "retrieval.json").read_text())
    assert found["model"]["id"] == "brats-demo-unet" and found["retrieval"]["lesions"][0]["deep"]
    assert not (tmp_path / "b" / "retrieval.json").exists()
