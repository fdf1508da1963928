"""The case-running processes keep the memory a case frees (medcnncad.inference.freed_memory).

Each check runs in a child process: the setting is process-wide and must not leak into the test process.
A 64 MiB array is allocated, touched and freed; the resident set size (``/proc/self/statm``) says whether
glibc gave the pages back to the kernel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from medcnncad.inference.freed_memory import glibc_malloc

pytestmark = pytest.mark.skipif(not glibc_malloc(), reason="glibc's mallopt only")

CHILD = r"""
import json, os, sys, threading
import numpy as np

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

def given_back(mib):
    block = np.ones(mib * 2**20 // 8)  # every page touched
    held = rss_mib()
    del block
    return held - rss_mib()

applied = None
if sys.argv[1] == "keep":
    from medcnncad.inference.freed_memory import freed_memory_kept, keep_freed_memory
    assert not freed_memory_kept()
    applied = keep_freed_memory()
    again = keep_freed_memory()
    assert again == applied == freed_memory_kept()
out = {"applied": applied, "main_64": given_back(64)}
thread = threading.Thread(target=lambda: out.update(thread_200=given_back(200)))  # past a thread arena's 64 MiB
thread.start()
thread.join()
print(json.dumps(out))
"""


def _child(mode: str, **env: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env}, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_glibc_gives_a_freed_large_block_back_by_default():
    """The behaviour the setting changes: without it the blocks go back to the kernel on free."""
    out = _child("plain")
    assert out["main_64"] > 48 and out["thread_200"] > 180


def test_kept_the_freed_blocks_stay_in_the_process_also_from_a_thread():
    """A 200 MiB block freed by a thread started afterwards stays too (one arena: a thread's own would map it)."""
    out = _child("keep")
    assert out["applied"] is True
    assert out["main_64"] < 8 and out["thread_200"] < 8


def test_the_opt_out_leaves_glibc_as_it_is():
    for value in ("0", "off"):
        out = _child("keep", MEDCNNCAD_KEEP_FREED_MEMORY=value)
        assert out["applied"] is False
        assert out["main_64"] > 48


def test_the_case_commands_keep_freed_memory_but_main_alone_and_other_commands_do_not(monkeypatch):
    """``process_main`` (the ``medcnncad`` script, ``python -m medcnncad``) sets it before a case command;
    ``main``, which tests and other programs call in their own process, and ``train`` (forked data workers)
    leave the process's allocator alone."""
    import medcnncad.cli.app as app

    calls: list[str] = []
    monkeypatch.setattr(app, "keep_freed_memory", lambda: calls.append("kept") or True)
    assert app.main(["segment", "--help"]) == 0 and calls == []
    assert app.process_main(["--version"]) == 0 and calls == []
    assert app.process_main(["train", "--help"]) == 0 and calls == []
    assert app.process_main(["segment", "--help"]) == 0 and calls == ["kept"]
    monkeypatch.setattr(sys, "argv", ["medcnncad", "batch", "--help"])
    assert app.process_main() == 0 and calls == ["kept", "kept"]
    assert {"segment", "demo", "batch", "evaluate-real", "library"} <= app.CASE_COMMANDS <= set(app.COMMANDS)


def test_the_installed_script_and_python_m_run_process_main():
    from importlib.metadata import entry_points
    from pathlib import Path

    import medcnncad

    scripts = {e.name: e.value for e in entry_points(group="console_scripts") if e.name == "medcnncad"}
    assert scripts == {"medcnncad": "medcnncad.cli:process_main"}
    package = Path(medcnncad.__file__).parent
    for main_file in (package / "__main__.py", package / "cli" / "__main__.py", package / "cli" / "app.py"):
        assert "sys.exit(process_main())" in main_file.read_text()
