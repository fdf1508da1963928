"""ITK's thread count for a block of work whose result must not depend on timing.

ITK's threaded filters merge their work units' partial sums in the order the units finish (ITK 5), and the v4
registration metrics split their sums over the global default thread count whatever the method's own count: on a
busy machine the same inputs then give results that differ in the last bits from run to run (a registration: quality
0.34 or 0.38 for one case; lesion statistics: descriptors that differ after rounding). One thread fixes the order.

The count is process-wide, so blocks asking for the same count may run at once in several Python threads (e.g. the
clinical chain's registrations, each on one ITK thread, side by side on the cores: SimpleITK releases the GIL while
it runs); a block asking for another count waits until they have all left.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import SimpleITK as sitk

__all__ = ["itk_threads"]


class _Setting:
    """Who holds ITK's global thread count: the count set, how many blocks hold it, the count to restore."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.threads: int | None = None
        self.holders = 0
        self.before = 0
        self.mine = threading.local()  # this Python thread's held counts (a stack)


_SETTING = _Setting()


@contextmanager
def itk_threads(threads: int = 1) -> Iterator[None]:
    """ITK's global default thread count set to ``threads`` for the block, then restored (also on an error).

    Blocks in other Python threads asking for the same count run at the same time; one asking for another count
    waits until every holder has left, so none restores a count another still relies on.

    Raises:
        RuntimeError: a block asking for another count inside a block of this thread that holds one (it would
            wait for itself).
    """
    held: list[int] = _SETTING.mine.__dict__.setdefault("held", [])
    if held and held[-1] != threads:
        raise RuntimeError(f"itk_threads({threads}) inside itk_threads({held[-1]}) of the same thread")
    with _SETTING.changed:
        while _SETTING.holders and _SETTING.threads != threads:
            _SETTING.changed.wait()
        if not _SETTING.holders:
            _SETTING.before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
            _SETTING.threads = threads
        _SETTING.holders += 1
    held.append(threads)
    try:
        yield
    finally:
        held.pop()
        with _SETTING.changed:
            _SETTING.holders -= 1
            if not _SETTING.holders:
                sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(_SETTING.before)
                _SETTING.threads = None
                _SETTING.changed.notify_all()
