"""Case preparation in spawned processes keeps to one thread each: torch's and the clinical chain's registrations
(OMP_NUM_THREADS, the chain's thread budget), so N preparing processes use N cores, not N times the machine's."""

from __future__ import annotations

import torch

from medcnncad.preprocessing.chain import registration_workers
from medcnncad.training import data


def test_each_preparing_process_starts_on_one_thread(monkeypatch):
    seen = {}

    class Pool:
        def __init__(self, workers, initializer=None):
            seen.update(workers=workers, initializer=initializer)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def map(self, fn, args, chunksize=1):
            return [fn(a) for a in args]

    monkeypatch.setattr(data.mp, "get_context", lambda kind: type("Ctx", (), {"Pool": Pool}))
    out = data.prepare_cases([{"id": 1}, {"id": 2}], type("M", (), {"raw": {}, "folder": "."})(), 2,
                             prepare=lambda a: a[0]["id"])
    assert out == [1, 2] and seen == {"workers": 2, "initializer": data.one_thread_worker}


def test_the_initializer_sets_the_thread_budget(monkeypatch):
    monkeypatch.setattr(data.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "")  # no budget; and the variable is restored after the test
    threads = torch.get_num_threads()
    try:
        assert registration_workers() == 8
        data.one_thread_worker()
        assert registration_workers() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
