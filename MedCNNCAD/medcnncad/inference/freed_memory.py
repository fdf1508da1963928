"""Keep the memory a case frees inside the process, so that its next allocation reuses it warm.

Why: a BraTS-size case allocates and frees gigabytes (resampled channels, stitched probabilities,
masks). glibc hands every block over its mmap threshold (128 KiB, rising to at most 32 MiB) back to
the kernel on ``free``, and the next array of that size is mapped afresh. On a virtual machine whose
hypervisor takes freed guest pages back (virtio-balloon free page reporting; sandboxes like gVisor),
touching such a page again is a fault to the host. Measured on the 2-core development VM (virtio_balloon):
1 GiB of fresh pages took 2.4-7.2 s to touch once they had been free for 3-30 s, against 0.065 s when
reused within a second; a case's stages moved by up to 0.8 s from run to run with it, and keeping the freed
memory made the shipped model's case 1.36-1.50x faster there (docs/performance.md).

What it does (glibc only, see ``mallopt(3)``): ``M_MMAP_MAX = 0`` serves large blocks from the heap,
``M_TRIM_THRESHOLD = -1`` never trims the heap's freed top, and ``M_ARENA_MAX = 1`` makes threads started
afterwards (the writer's compression threads, ITK's) allocate from the same heap: a thread's own arena holds
at most 64 MiB per heap and maps anything larger afresh. Cost: the process keeps up to its peak heap until it
exits (five identical cases in one process measured 1.53 GB peak RSS given back, 1.52 GB kept), more if
fragmentation between cases of different sizes leaves holes; and threads share one allocator lock.

Only processes that exist to run cases call it: the command line's case commands (:data:`CASE_COMMANDS` in
:mod:`medcnncad.cli.app`), the Slicer module's inference worker and the benchmarks; never an import, so
Slicer's own process keeps its allocator as it is. Not Dask's workers: their nanny trims memory on purpose
(``MALLOC_TRIM_THRESHOLD_``) and pauses or restarts a worker by its resident size. Call it before starting
threads. ``MEDCNNCAD_KEEP_FREED_MEMORY=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

__all__ = ["keep_freed_memory", "freed_memory_kept", "glibc_malloc", "opted_out", "OPT_OUT"]

OPT_OUT = "MEDCNNCAD_KEEP_FREED_MEMORY"
_M_TRIM_THRESHOLD = -1  # glibc's malloc.h parameter numbers
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_SETTINGS = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1), (_M_ARENA_MAX, 1))  # -1: never trim (mallopt(3))
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks in this process (idempotent); True when it is in effect.

    False (nothing changed) on another C library or platform, or when ``MEDCNNCAD_KEEP_FREED_MEMORY=0``.
    """
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` has been called in this process and is in effect (changes nothing)."""
    return _applied is True


def glibc_malloc() -> bool:
    """Whether this process allocates with glibc's malloc (Linux with glibc), the only one the setting knows."""
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def opted_out() -> bool:
    """Whether ``MEDCNNCAD_KEEP_FREED_MEMORY`` turns the setting off (0, false, no or off)."""
    return os.environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off")


def _apply() -> bool:
    """Set :data:`_SETTINGS` with glibc's ``mallopt``; False when not on glibc, opted out, or any call failed."""
    if opted_out() or not glibc_malloc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all([bool(mallopt(parameter, value)) for parameter, value in _SETTINGS])  # every one tried
