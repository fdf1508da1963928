"""The measured execution policy is the default of every case run; the calibration runs once per machine."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import medcnncad.inference.machine_policy as mp
from medcnncad.errors import InputError
from medcnncad.models.registry import load_model


def _seed_cache(path, model, precision="bf16", channels_last=False):
    key = mp.policy_cache_key(model, torch.device('cpu'))
    path.write_text(json.dumps({key: {"precision": precision, "channels_last": channels_last,
                                      "reason": "measured here"}}))


def test_a_case_run_is_measured_unless_told_otherwise(tmp_path, monkeypatch):
    model = load_model("brats-demo-unet")
    cache = tmp_path / "cache.json"
    _seed_cache(cache, model)
    monkeypatch.setenv("MEDCNNCAD_POLICY_CACHE", str(cache))
    monkeypatch.setattr(mp, "choose_policy", lambda *a, **k: pytest.fail("cached: no calibration run"))
    monkeypatch.delenv("MEDCNNCAD_PRECISION")
    assert mp.default_precision() == "measured"
    note = mp.build_segmenter(model, "cpu").policy_note()  # nothing asked: the machine's measured policy
    assert (note["precision"], note["autocast"], note["reason"]) == ("bf16", "bfloat16", "measured here (cached)")
    manifest = mp.build_segmenter(model, "cpu", "manifest").policy_note()
    assert manifest["precision"] == "auto" and manifest["autocast"] == "none" and "manifest" in manifest["reason"]
    assert mp.build_segmenter(model, "cpu", "fp32").policy_note()["precision"] == "fp32"
    monkeypatch.setenv("MEDCNNCAD_PRECISION", "manifest")  # the variable changes the default
    assert mp.build_segmenter(model, "cpu").policy_note()["autocast"] == "none"


def test_a_precision_that_does_not_exist_is_refused_by_name(monkeypatch):
    model = load_model("brats-demo-unet")
    monkeypatch.setenv("MEDCNNCAD_PRECISION", "fast")
    with pytest.raises(InputError, match=r"MEDCNNCAD_PRECISION='fast'"):
        mp.build_segmenter(model, "cpu")
    with pytest.raises(InputError, match=r"precision 'half'"):
        mp.build_segmenter(model, "cpu", "half")


def test_segment_with_an_unknown_default_precision_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    from medcnncad.cli.app import main

    monkeypatch.setenv("MEDCNNCAD_PRECISION", "fast")
    code = main(["segment", "--model", "brats-demo-unet", "--input", f"T1={tmp_path / 'none.nii.gz'}",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "MEDCNNCAD_PRECISION='fast'" in err[0]
    assert not (tmp_path / "out").exists()


def test_cached_segmenter_keeps_one_segmenter_per_precision():
    fp32 = mp.cached_segmenter("brats-demo-unet", "cpu", precision="fp32")
    assert mp.cached_segmenter("brats-demo-unet", "cpu", precision="fp32") is fp32
    manifest = mp.cached_segmenter("brats-demo-unet", "cpu")  # the test suite's default: manifest
    assert manifest is not fp32 and manifest.policy_note()["precision"] == "auto"
    assert fp32.policy_note()["precision"] == "fp32"


def test_two_callers_asking_at_once_calibrate_once(tmp_path, monkeypatch):
    """The second caller waits on the lock next to the cache and then reads the first one's decision."""
    model = load_model("brats-demo-unet")
    calls = []

    def slow_decide(model, device):
        calls.append(1)
        time.sleep(0.5)  # long enough for the other caller to reach the lock
        return mp.PolicyDecision("bf16", False, "measured here")

    monkeypatch.setattr(mp, "_decide", slow_decide)
    cache = tmp_path / "sub" / "cache.json"
    results = []
    threads = [threading.Thread(target=lambda: results.append(mp.measured_policy(model, torch.device("cpu"), cache)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert sorted(r.cached for r in results) == [False, True] and {r.precision for r in results} == {"bf16"}


def test_the_reference_is_timed_again_so_its_warm_up_does_not_choose_a_candidate(monkeypatch):
    """fp32 pays the process's first-run costs (10 s), a candidate runs in 6 s, fp32 again in 5 s: fp32 stays."""
    import medcnncad.inference.policy as policy

    clock = {"now": 0.0}
    durations = iter([10.0, 6.0, 5.0])  # reference, candidate, reference again
    labels = np.zeros((2, 2, 2), np.uint8)
    manifest = SimpleNamespace(labels=[SimpleNamespace(value=1)])

    class FakeSegmenter:
        def __init__(self, model, device, precision, channels_last, **_):
            self.channels_last = channels_last

        def run(self, images):
            clock["now"] += next(durations)
            return SimpleNamespace(label_map=labels, probabilities={"x": np.zeros((2, 2, 2), np.float32)},
                                   manifest=manifest)

    monkeypatch.setattr(policy, "Segmenter", FakeSegmenter)
    monkeypatch.setattr(policy.time, "perf_counter", lambda: clock["now"])
    report = policy.choose_policy(None, {}, candidates=[("bf16", False)])
    assert [r["seconds"] for r in report["runs"]] == [5.0, 6.0]
    assert report["chosen"] == ("fp32", False, "none")


def test_a_file_system_that_cannot_lock_still_gets_a_decision(tmp_path, monkeypatch):
    import fcntl

    def no_locks(fd, operation):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    monkeypatch.setattr(mp, "_decide", lambda model, device: mp.PolicyDecision("fp32", False, "measured here"))
    decision = mp.measured_policy(load_model("brats-demo-unet"), torch.device("cpu"), tmp_path / "cache.json")
    assert decision.precision == "fp32" and not decision.cached


def test_the_cache_lives_in_medcnncad_home(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDCNNCAD_POLICY_CACHE", raising=False)
    monkeypatch.setenv("MEDCNNCAD_HOME", str(tmp_path / "mc"))
    assert mp.cache_path() == tmp_path / "mc" / "policy-cache.json"
    monkeypatch.setenv("MEDCNNCAD_POLICY_CACHE", str(tmp_path / "elsewhere.json"))
    assert mp.cache_path() == tmp_path / "elsewhere.json"


def test_a_cohort_resolves_its_precision_before_any_case(tmp_path, monkeypatch):
    from medcnncad.pipeline.cohort import CohortCase, run_cohort

    monkeypatch.setenv("MEDCNNCAD_PRECISION", "fast")
    case = CohortCase("c1", {"T1": str(tmp_path / "t1.nii.gz")})
    with pytest.raises(InputError, match="MEDCNNCAD_PRECISION='fast'"):  # not a failed case per row: exit 2
        run_cohort([case], "brats-demo-unet", tmp_path / "out", serial=True)
    assert not (tmp_path / "out").exists()


def test_deciding_once_loads_the_model_only_for_a_measured_policy(tmp_path, monkeypatch):
    monkeypatch.setattr(mp, "load_model", lambda *a, **k: pytest.fail("manifest precision: nothing to decide"))
    mp.decide_policy_once("brats-demo-unet", "cpu", "manifest")
    mp.decide_policy_once("brats-demo-unet", "cpu")  # the suite's default: manifest
    monkeypatch.setattr(mp, "load_model", load_model)
    monkeypatch.setattr(mp, "_decide", lambda model, device: mp.PolicyDecision("bf16", False, "measured here"))
    monkeypatch.setenv("MEDCNNCAD_POLICY_CACHE", str(tmp_path / "cache.json"))
    mp.decide_policy_once("brats-demo-unet", "cpu", "measured")
    decision = mp.measured_policy(load_model("brats-demo-unet"), torch.device("cpu"))
    assert decision.cached and decision.precision == "bf16"  # the workers find it
