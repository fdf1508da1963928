"""Automatic assignment of volumes to a model's input channels from their names.

A volume matches a channel when the channel's name or one of its manifest ``aliases``
appears in the volume's name or DICOM series description as a whole word (separators
``_ - . space`` count as word boundaries). Longer matches win (``t1ce`` beats ``t1``),
each volume serves one channel, and the assignment is only a proposal the user sees
and can correct.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from medcnncad.models.manifest import Manifest

__all__ = ["POST_CONTRAST_NAMES", "display_channel", "assign_channels"]


def _normalise(text: str) -> str:
    return "_" + re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") + "_"


def _score(channel_terms: Sequence[str], text: str) -> int:
    haystack = _normalise(text)
    best = 0
    for term in channel_terms:
        needle = _normalise(term)
        if needle != "__" and needle in haystack:
            best = max(best, len(needle))
    return best


def assign_channels(manifest: Manifest, volumes: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Propose channel -> volume key.

    Args:
        manifest: the model (its inputs' names and aliases are the search terms).
        volumes: volume key (e.g. a node ID) -> texts describing it (node name, series description).

    Returns:
        channel name -> volume key for the channels that matched; unmatched channels are absent.
    """
    candidates = []
    for channel in manifest.inputs:
        terms = [channel.name, *channel.aliases]
        for key, texts in volumes.items():
            score = max((_score(terms, t) for t in texts if t), default=0)
            if score:
                candidates.append((score, channel.name, key))
    assignment: dict[str, str] = {}
    used: set[str] = set()
    for _, channel_name, key in sorted(candidates, key=lambda c: -c[0]):
        if channel_name not in assignment and key not in used:
            assignment[channel_name] = key
            used.add(key)
    return assignment


POST_CONTRAST_NAMES = ("t1c", "t1ce", "t1gd")
"""Channel names (lower case) of a post-contrast T1: what a reader looks at under an overlay."""


def display_channel(names: Sequence[str]) -> str | None:
    """The channel to show under an overlay: the first post-contrast T1 among ``names``, else the
    first name (None when there is none)."""
    return next((n for n in names if n.lower() in POST_CONTRAST_NAMES), next(iter(names), None))
