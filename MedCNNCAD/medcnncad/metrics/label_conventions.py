"""Label conventions of reference segmentations, and mapping a reference onto a model's label values.

A reference drawn in another convention is scored wrongly without an error: a BraTS 2023 label file stores
enhancing tumor as 3, which a model with BraTS 2017-2021 values (1 NCR, 2 ED, 4 ET) has no label for, so its
enhancing tumor drops out of every region. :func:`check_reference_values` refuses such a reference, naming the
file and the values (a file of another convention that uses only the model's values cannot be told apart: its
convention must be named); :func:`parse_label_map` reads the user's statement of the convention (a name of
:data:`LABEL_CONVENTIONS` or ``SOURCE=TARGET`` pairs) and :func:`relabel` applies it.

Arrays are integer label maps of any shape (the engine's are (K, J, I)).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

import numpy as np

from medcnncad.errors import InputError

__all__ = ["LABEL_CONVENTIONS", "parse_label_map", "relabel", "check_reference_values"]

LABEL_CONVENTIONS: Mapping[str, Mapping[int, int]] = MappingProxyType({
    "brats": MappingProxyType({0: 0, 1: 1, 2: 2, 4: 4}),
    "brats2023": MappingProxyType({0: 0, 1: 1, 2: 2, 3: 4}),
    "msd": MappingProxyType({0: 0, 1: 2, 2: 1, 3: 4}),
    "brats2024": MappingProxyType({0: 0, 1: 1, 2: 2, 3: 4, 4: 0}),
})
"""Reference conventions onto the BraTS 2017-2021 values (0, 1 NCR, 2 ED, 4 ET) the engine's BraTS models use
(a model with other labels needs ``SOURCE=TARGET`` pairs):
``brats`` (BraTS 2017-2021: unchanged), ``brats2023`` (BraTS 2023 glioma / metastasis / meningioma / SSA: 1 NETC,
2 SNFH, 3 ET), ``msd`` (Medical Segmentation Decathlon Task01_BrainTumour: 1 oedema, 2 non-enhancing tumor,
3 enhancing tumor), ``brats2024`` (BraTS 2024 post-treatment glioma: 1 NETC, 2 SNFH, 3 ET, 4 RC, the resection
cavity, which is no tumor region: background)."""

HINT = (f"say which convention the file follows (--reference-labels / reference_labels: "
        f"{', '.join(LABEL_CONVENTIONS)}, or SOURCE=TARGET pairs such as 3=4)")


def parse_label_map(text: str) -> dict[int, int]:
    """A convention name of :data:`LABEL_CONVENTIONS` (any case) or comma-separated ``SOURCE=TARGET`` pairs of
    integers 0-65535, as a source -> target mapping.

    Raises:
        InputError: naming ``text`` when it is neither.
    """
    named = LABEL_CONVENTIONS.get(text.strip().lower())
    if named is not None:
        return dict(named)
    mapping: dict[int, int] = {}
    for pair in (p for p in text.split(",") if p.strip()):
        source, sep, target = pair.partition("=")
        try:
            values = int(source), int(target)
        except ValueError:
            values = (-1, -1)
        if not sep or not all(0 <= v <= 65535 for v in values) or values[0] in mapping:
            raise InputError(f"label map {text!r}: expected one of {', '.join(LABEL_CONVENTIONS)} or "
                             "SOURCE=TARGET pairs of integers 0-65535, each source once (e.g. 1=1,2=2,3=4)")
        mapping[values[0]] = values[1]
    if not mapping:
        raise InputError(f"label map {text!r} is empty")
    return mapping


def relabel(values: np.ndarray, mapping: Mapping[int, int], name: str = "reference") -> np.ndarray:
    """``values`` with every value listed in ``mapping`` replaced by its target (all at once, so ``1=2,2=1``
    swaps); values not listed are kept. Same shape; dtype uint8 when every value fits, else uint16.

    Raises:
        InputError: naming ``name`` when a value that is not listed equals a listed value's target: kept, it
            would merge silently with the mapped one (a BraTS 2024 file's resection cavity, 4, under
            ``brats2023``, whose 3 becomes 4).
    """
    array = np.asarray(values)
    if not mapping:
        return array.astype(np.uint8 if array.max(initial=0) <= 255 else np.uint16)
    present = {int(v) for v in np.unique(array)}
    merged = sorted(v for v in present - set(mapping) if v in set(mapping.values()) and v != 0)
    if merged:
        raise InputError(f"{name}: label values {merged} are not in the label map {dict(mapping)} but equal what it "
                         "maps other values to; list them too (e.g. 4=0 to drop them)")
    top = int(max(max(present), *mapping.keys(), *mapping.values()))
    table = np.arange(top + 1, dtype=np.int64)
    for source, target in mapping.items():
        table[source] = target
    out = table[array.astype(np.int64)]
    return out.astype(np.uint8 if out.max(initial=0) <= 255 else np.uint16)


def check_reference_values(values: np.ndarray, known: Iterable[int], path: str, hint: str = HINT) -> None:
    """Refuse a reference holding a non-zero value that is none of the model's ``known`` label values.

    Raises:
        InputError: naming ``path``, the unknown values, the model's values and ``hint`` (what to do).
    """
    allowed = {0, *(int(v) for v in known)}
    unknown = sorted(int(v) for v in np.unique(values) if int(v) not in allowed)
    if unknown:
        listed = f"{unknown[:10]}" if len(unknown) <= 10 else f"{unknown[:10]} and {len(unknown) - 10} more"
        raise InputError(f"{path}: label values {listed} are not the model's ({sorted(allowed - {0})}); {hint}")
