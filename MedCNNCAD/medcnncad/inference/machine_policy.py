"""The execution policy chosen per machine by measurement, cached per machine and model.

Machines differ: one CPU has native bf16 (``avx512_bf16``/AMX; oneDNN runs bf16 convolutions at up to
2x fp32), the next emulates it (several times slower). So the policy is never guessed from a CPU name:

1. on a CPU without native bf16, fp32 is kept without a run (bf16 would be emulated);
2. otherwise fp32, channels-last, bf16 and bf16 + channels-last are each run once on a check case (the
   shipped sample case, for models that take BraTS sequences) and the fastest one that agrees with fp32
   (every label's Dice >= 0.99, probabilities within 0.02: :mod:`medcnncad.inference.policy`) is kept;
3. the decision is cached in ``~/.medcnncad/policy-cache.json`` keyed by the machine (CPU model, its
   bf16/AMX flags, torch version, CUDA device) and the model (weights SHA-256, id and version), so the calibration
   runs once per machine and model.

A model whose gate fails keeps fp32; the run's report says which policy ran and why
(``execution_policy``).

``measured`` is the default precision of every case run (``medcnncad segment`` and ``batch``, the Slicer
module, the Python console's ``cached_segmenter``): :func:`default_precision` returns it unless
``$MEDCNNCAD_PRECISION`` names another (``manifest`` for the model's own setting, as the evaluations and
the test suite use, or ``fp32``/``bf16``/``fp16``/``auto``). The first run of a model on a machine pays for
the calibration (about 25 s for ``brats-robust-unet`` on a 2-core CPU with native bf16); a file lock next to
the cache keeps two processes from calibrating at once, so the second one reads the first one's decision.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from medcnncad.errors import InputError
from medcnncad.inference.background_norm import supports_background_statistics
from medcnncad.inference.policy import CROP_MODES, choose_policy
from medcnncad.inference.precisions import CASE_PRECISIONS, PRECISION_ENV
from medcnncad.inference.segmenter import Segmenter, resolve_device
from medcnncad.io.file_lock import exclusive_lock
from medcnncad.io.sample_case import SEQUENCES, load_sample_case
from medcnncad.models.loaded import LoadedModel
from medcnncad.models.registry import load_model

__all__ = ["PolicyDecision", "CASE_PRECISIONS", "cpu_bf16_native", "machine_key",
           "policy_cache_key", "measured_policy", "cache_path", "default_precision", "build_segmenter",
           "cached_segmenter", "decide_policy_once"]


@dataclass(frozen=True)
class PolicyDecision:
    """The precision and memory layout to run, why, and the measurement behind it (seconds per run)."""

    precision: str
    channels_last: bool
    reason: str
    runs: tuple[dict[str, Any], ...] = ()
    cached: bool = False
    crop: str = "none"  # the engine's crop (policy.CROP_MODES), for models that do not crop themselves

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    match = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    return set(match.group(1).split()) if match else set()


def _cpu_name() -> str:
    try:
        match = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        match = None
    return match.group(1).strip() if match else platform.processor() or platform.machine()


def cpu_bf16_native() -> bool:
    """Whether this CPU runs bf16 natively: oneDNN says so (its own CPUID check), or the CPU lists
    ``avx512_bf16``/``amx_bf16``."""
    try:
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return True
    except (AttributeError, RuntimeError):
        pass
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def machine_key(device: torch.device) -> str:
    """A stable key of what decides the policy: CPU model and bf16/AMX flags, torch version, CUDA device."""
    flags = sorted(_cpu_flags() & {"avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx2", "f16c"})
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    # the version changes when the candidates do (v3: crop+fit+bg; v4: channels-last for GroupNorm networks on
    # the CPU), so cached decisions are measured again
    text = json.dumps(["policy-v4", _cpu_name(), flags, torch.__version__, device.type, gpu])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path() -> Path:
    """``$MEDCNNCAD_POLICY_CACHE``, else ``policy-cache.json`` in ``$MEDCNNCAD_HOME`` (default ``~/.medcnncad``,
    where the trusted-bundle list lives too)."""
    if os.environ.get("MEDCNNCAD_POLICY_CACHE"):
        return Path(os.environ["MEDCNNCAD_POLICY_CACHE"])
    return Path(os.environ.get("MEDCNNCAD_HOME", Path.home() / ".medcnncad")) / "policy-cache.json"


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, key: str, decision: PolicyDecision) -> None:
    data = _read_cache(path)
    data[key] = {**decision.to_json(), "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError:  # a read-only home: the decision still applies to this process
        pass


def policy_cache_key(model: LoadedModel, device: torch.device) -> str:
    """The cache key of ``model``'s decision on this machine: the machine, the weights' SHA-256 and the model's
    version (a new version may change the preprocessing or post-processing around the same weights, and with them
    what the accuracy gate measures)."""
    return f"{machine_key(device)}:{model.manifest.weights_sha256}:{model.manifest.id}@{model.manifest.version}"


def measured_policy(model: LoadedModel, device: torch.device, path: Path | None = None) -> PolicyDecision:
    """The policy for ``model`` on this machine: from the cache, or decided now (see the module docstring).

    Args:
        model: the loaded model (its weights' SHA-256 and version key the cache: :func:`policy_cache_key`).
        device: where it runs.
        path: the cache file (default :func:`cache_path`).

    Returns:
        The :class:`PolicyDecision`.
    """
    path = path or cache_path()
    key = policy_cache_key(model, device)
    cached = _cached(path, key)
    if cached is not None:
        return cached
    with _calibration_lock(path):
        cached = _cached(path, key)  # another process may have decided while this one waited
        if cached is not None:
            return cached
        decision = _decide(model, device)
        _write_cache(path, key, decision)
    return decision


def _cached(path: Path, key: str) -> PolicyDecision | None:
    entry = _read_cache(path).get(key)
    if not entry:
        return None
    return PolicyDecision(entry["precision"], entry["channels_last"], entry["reason"], tuple(entry.get("runs", ())),
                          cached=True, crop=str(entry.get("crop", "none")))


@contextmanager
def _calibration_lock(path: Path) -> Iterator[None]:
    """Held while deciding: an exclusive lock on a file next to the cache (:func:`exclusive_lock`), so that a
    second process waits and then reads the first one's decision. Where the folder cannot be written or the file
    system cannot lock (e.g. a cluster file system mounted without locks), there is no lock and each process
    measures."""
    with suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(str(path) + ".lock"):
        yield


def _check_case(model: LoadedModel) -> dict[str, Any] | None:
    """The sample case for the agreement check: by channel name, or (a MONAI bundle, whose channels are
    named by its metadata) position by position; None when the model takes other inputs."""
    names = model.manifest.input_names
    case = load_sample_case()
    if not set(names) - set(SEQUENCES):
        return {name: image for name, image in case.items() if name in names}
    if model.source == "bundle" and len(names) <= len(SEQUENCES) and \
            all(c.modality == "MR" for c in model.manifest.inputs):
        return {name: case[sequence] for name, sequence in zip(names, SEQUENCES)}
    return None


def _candidates(model: LoadedModel, device: torch.device) -> list[tuple[str, bool, str]]:
    """What to measure against the reference (fp32, the model's layout, no engine crop): precisions and
    layouts where the hardware runs a lower precision natively, and for models that do not crop
    themselves (MONAI bundles) the engine's crop, alone and with the window fitted to it (for GroupNorm
    networks with the bundle window's statistics: :mod:`medcnncad.inference.background_norm`). Channels-last
    is offered for every network (GroupNorm layers on the CPU normalise contiguous copies:
    :mod:`medcnncad.inference.layout`)."""
    native = device.type == "cuda" or cpu_bf16_native()
    lower = (("bf16", False), ("bf16", True)) if device.type == "cpu" else (("fp16", False), ("fp16", True),
                                                                               ("bf16", False))
    out = [(p, cl, "none") for p, cl in (("fp32", True),) + lower] if native else []
    if model.source == "bundle":
        fit = "crop+fit+bg" if supports_background_statistics(model.network) else "crop+fit"
        out += [("fp32", False, "crop"), ("fp32", False, fit)]
        out += [(p, cl, fit) for p, cl in lower] if native else []
    return out


def _decide(model: LoadedModel, device: torch.device) -> PolicyDecision:
    candidates = _candidates(model, device)
    if not candidates:
        return PolicyDecision("fp32", False, "this CPU has no native bf16 (it would be emulated): fp32, not measured")
    images = _check_case(model)
    if images is None:
        return PolicyDecision("fp32", False, "no check case for this model's inputs: fp32")
    print(f"medcnncad: measuring {model.manifest.id}'s execution policy on this machine ({len(candidates) + 2} runs "
          f"of the sample case, once per machine and model; --precision manifest skips it)", file=sys.stderr)
    report = choose_policy(model, images, device=device.type, candidates=candidates)
    precision, channels_last, crop = report["chosen"]
    rejected = [r for r in report["runs"] if not r["ok"]]
    reason = (f"measured on this machine: fastest run agreeing with the model's own fp32 settings on the "
              f"sample case ({len(report['runs'])} runs, {len(rejected)} rejected by the accuracy gate)")
    return PolicyDecision(precision, channels_last, reason, tuple(report["runs"]), crop=crop)


def default_precision() -> str:
    """The precision of a case run when none is asked for: ``$MEDCNNCAD_PRECISION``, else ``measured``.

    Raises:
        InputError: the variable names no precision of :data:`CASE_PRECISIONS`.
    """
    value = os.environ.get(PRECISION_ENV, "").strip() or "measured"
    if value not in CASE_PRECISIONS:
        raise InputError(f"${PRECISION_ENV}={value!r}: choose one of {', '.join(CASE_PRECISIONS)}")
    return value


def build_segmenter(model: LoadedModel, device: str = "auto", precision: str | None = None) -> Segmenter:
    """A :class:`Segmenter` whose execution policy is ``precision`` (None: :func:`default_precision`).

    ``measured`` decides it on this machine (:func:`measured_policy`), ``manifest`` keeps the model's own
    setting, ``auto``/``fp32``/``bf16``/``fp16`` override it; the run's report says which policy ran and why.
    A format with its own predictor keeps its own precision.

    Raises:
        InputError: ``precision`` is not one of :data:`CASE_PRECISIONS`.
    """
    precision = precision or default_precision()
    if precision not in CASE_PRECISIONS:
        raise InputError(f"precision {precision!r}: choose one of {', '.join(CASE_PRECISIONS)}")
    if precision != "measured" or model.predict is not None:
        return Segmenter(model, device, precision=None if precision in ("measured", "manifest") else precision)
    decision = measured_policy(model, resolve_device(device))
    reason = decision.reason + (" (cached)" if decision.cached else "")
    return Segmenter(model, device, precision=decision.precision, channels_last=decision.channels_last,
                     policy_reason=reason, crop_foreground=CROP_MODES[decision.crop][0],
                     fit_roi=CROP_MODES[decision.crop][1], background_statistics=CROP_MODES[decision.crop][2])


def decide_policy_once(model: str, device: str = "auto", precision: str | None = None) -> None:
    """Measure and cache ``model``'s policy on this machine now, if ``precision`` is measured and it is not
    cached yet; the model is loaded for that only and let go (a process that starts others calls this first,
    so that they find the decision instead of calibrating side by side)."""
    if (precision or default_precision()) != "measured":
        return
    loaded = load_model(model)
    if loaded.predict is None:
        measured_policy(loaded, resolve_device(device))
    del loaded
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


_SEGMENTERS: dict[tuple[str, str, bool, str], Segmenter] = {}


def cached_segmenter(model: str, device: str = "auto", trust: bool = False,
                     precision: str | None = None) -> Segmenter:
    """A :class:`Segmenter` per (model, device, trust, precision) and process: the model loads once and its
    execution policy (:func:`build_segmenter`; None: :func:`default_precision`) is decided once.

    Used by the worker process, the cohort workers and the Slicer Logic's console API.
    """
    key = (str(model), device, trust, precision or default_precision())
    if key not in _SEGMENTERS:
        _SEGMENTERS[key] = build_segmenter(load_model(model, trust=trust), device, key[3])
    return _SEGMENTERS[key]
