"""The command line's shared options, each defined once: ``add(parser, "model", "device", ...)``.

Per-command differences (a default, ``required``) are passed as keyword overrides; everything else
(flags, help, type) comes from :data:`OPTIONS`.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from typing import Any, NoReturn

from medcnncad.inference.precisions import CASE_PRECISIONS, PRECISION_HELP
from medcnncad.models.defaults import DEFAULT_GRADE_CLASSIFIER, DEFAULT_MODEL

__all__ = ["OPTIONS", "TTA_HELP", "DEMO_SEED", "add", "channel_list", "classifier_or_none", "OneLineParser",
           "positive_int", "non_negative_int", "non_negative_float", "positive_float", "probability", "fraction",
           "device_name"]

DEMO_SEED = 900_000  # the first held-out phantom: never seen in training
TTA_HELP = ("test-time augmentation (identity and flips averaged): uncertainty map and per-lesion uncertainty, "
            "4x network time; default: the model's (manifest inference.test_time_augmentation)")

class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``medcnncad: error: ...``) and exit code 2, like every
    other bad-input error of the command line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"medcnncad: error: {message} (see '{self.prog} --help')\n")


def _number(cast: Callable[[str], Any], ok: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value
    parse.__name__ = what  # argparse names the type in its message
    return parse


positive_int = _number(int, lambda v: v > 0, "a positive integer")
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0 and math.isfinite(v), "a positive number")
non_negative_float = _number(float, lambda v: v >= 0 and math.isfinite(v), "a number >= 0")
probability = _number(float, lambda v: 0.0 <= v <= 1.0, "a probability between 0 and 1")
fraction = _number(float, lambda v: 0.0 <= v < 1.0, "a fraction in [0, 1)")


def device_name(text: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (whether CUDA exists is checked when the model loads)."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text!r}: expected auto, cpu or cuda")
    return text


OPTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "model": (("--model",), {"default": DEFAULT_MODEL, "help": "model id or folder (manifest or MONAI bundle)"}),
    "grade-classifier-model": (("--model",), {"default": DEFAULT_GRADE_CLASSIFIER,
                                              "help": "lesion grade classifier (id or folder)"}),
    "device": (("--device",), {"default": "auto", "type": device_name,
                               "help": "auto (CUDA when present), cpu or cuda"}),
    "precision": (("--precision",), {"choices": CASE_PRECISIONS, "help": PRECISION_HELP}),
    "tta": (("--tta",), {"action": argparse.BooleanOptionalAction, "help": TTA_HELP}),
    "trust": (("--trust",), {"action": "store_true",
                             "help": "allow a MONAI bundle's executable config for this run"}),
    "reference_labels": (("--reference-labels",), {
        "metavar": "CONVENTION", "help": "the reference's label convention, mapped onto the BraTS models' values (1 "
        "NCR, 2 ED, 4 ET): brats (2017-2021), brats2023 (1 NETC, 2 SNFH, 3 ET), brats2024 (post-treatment: also 4 "
        "resection cavity, read as background), msd (Decathlon Task01: 1 oedema, 2 non-enhancing, 3 enhancing); "
        "or SOURCE=TARGET pairs for any model (e.g. 3=4). A reference holding a "
        "value the model has no label for is refused; one in another convention that uses only the model's "
        "values cannot be detected, so name its convention"}),
    "classifier": (("--grade-classifier", "--classifier"),
                   {"dest": "grade_classifier", "help": "lesion grade classifier model (id or folder), e.g. "
                    f"{DEFAULT_GRADE_CLASSIFIER}; 'none' for none (--classifier: the name before 0.2)"}),
    "out": (("--out",), {"required": True, "help": "output folder"}),
    "json": (("--json",), {"action": "store_true", "help": "print the result as JSON"}),
    "lesions": (("--lesions",), {"action": "store_true",
                                 "help": "similar cases: the k nearest library lesions, several possibly of one case, "
                                         "instead of the k nearest cases (one row each: its nearest lesion)"}),
    "seed": (("--seed",), {"type": non_negative_int, "default": 0, "help": "random seed (an integer >= 0)"}),
    "seed-base": (("--seed-base",), {"type": non_negative_int, "default": DEMO_SEED, "help": "first phantom seed"}),
    "n": (("--n",), {"type": positive_int, "default": 20, "help": "number of phantom cases"}),
    "preset": (("--preset",), {"default": "classic",
                               "help": "phantom preset: classic, graded, robust, heldout, clinical-like, realistic "
                                       "(patient-like tumors and scanner), ..."}),
    "transplant-from": (("--transplant-from",), {"nargs": "+", "default": [], "metavar": "CASE_DIR",
                                                 "help": "real labelled case folders (realdata layouts, 1 mm) whose "
                                                         "tumors are transplanted into healthy anatomy"}),
    "channels": (("--channels",), {"help": "comma-separated sequences given to the model (e.g. T1c); others absent"}),
    "tumor-free": (("--tumor-free",), {"type": probability, "help": "share of tumor-free cases, replacing the preset's "
                                                              "(1: normal heads only, to count false positives)"}),
    "workers": (("--workers",), {"type": positive_int, "default": 2, "help": "worker processes"}),
    "resume": (("--resume",), {"action": "store_true",
                               "help": "continue an interrupted run from the output folder's checkpoint (same "
                                       "command: it ends as one uninterrupted run would; other settings are "
                                       "refused)"}),
    "write": (("--write",), {"action": "store_true", "help": "store the result in the model's manifest"}),
}


def add(parser: argparse.ArgumentParser, *names: str, **overrides: dict[str, Any]) -> None:
    """Add the shared options ``names`` to ``parser``; ``overrides[name]`` updates that option's settings."""
    for name in names:
        flags, settings = OPTIONS[name]
        settings = {k: v for k, v in {**settings, **overrides.get(name.replace("-", "_"), {})}.items()
                    if v is not None or k == "default"}
        parser.add_argument(*flags, **settings)


def channel_list(text: str | None) -> list[str] | None:
    """``--channels T1c,FLAIR`` as a list of names (None when the option is absent: every input)."""
    return [c.strip() for c in text.split(",")] if text else None


def classifier_or_none(requested: str | None) -> str | None:
    """The ``--grade-classifier`` value as a model id or folder; None when not given or given as 'none'."""
    return None if not requested or requested.lower() == "none" else requested
