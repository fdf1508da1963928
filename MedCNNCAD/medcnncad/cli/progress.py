"""Progress on the terminal: one tqdm bar per stage of a run."""

from __future__ import annotations

import sys

from tqdm import tqdm

__all__ = ["TqdmProgress"]


class TqdmProgress:
    """Progress callback ``(stage, fraction)`` that shows one tqdm bar per stage on stderr."""

    def __init__(self) -> None:
        self._bar: tqdm | None = None
        self._stage = ""

    def __call__(self, stage: str, fraction: float) -> None:
        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = tqdm(total=100, desc=f"{stage:<11}", unit="%", leave=False, file=sys.stderr, disable=None,
                             bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")
        if self._bar is not None:
            self._bar.n = int(round(fraction * 100))
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
