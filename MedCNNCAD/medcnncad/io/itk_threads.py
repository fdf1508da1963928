"""ITK's thread count for a block of work whose result must not depend on timing.

ITK's threaded filters merge their work units' partial sums in the order the units finish (ITK 5), and the v4
registration metrics split their sums over the global default thread count whatever the method's own count: on a
busy machine the same inputs then give results that differ in the last bits from run to run (a registration: quality
0.34 or 0.38 for one case; lesion statistics: descriptors that differ after rounding). One thread fixes the order.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import SimpleITK as sitk

__all__ = ["itk_threads"]


_SETTING = threading.RLock()  # the count is process-wide: one block at a time sets and restores it


@contextmanager
def itk_threads(threads: int = 1) -> Iterator[None]:
    """ITK's global default thread count set to ``threads`` for the block, then restored (also on an error); blocks
    in other threads of the process wait, so none restores a count another has set."""
    with _SETTING:
        before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        try:
            yield
        finally:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)
