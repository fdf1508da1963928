"""The persistent worker process: results equal in-process inference; errors, crashes, cancel."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import small_phantom

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
    local = Segmenter(load_model("demo"), "cpu").run(images)
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
