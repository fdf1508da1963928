"""The execution policy chosen per machine by measurement, cached per machine and model.

Machines differ: one CPU has native bf16 (``avx512_bf16``/AMX; oneDNN runs bf16 convolutions at up to
2x fp32), the next emulates it (several times slower). So the policy is never guessed from a CPU name:

1. on a CPU without native bf16, fp32 is kept without a run (bf16 would be emulated);
2. otherwise fp32, channels-last, bf16 and bf16 + channels-last are each run once on a check case (the
   shipped sample case, for models that take BraTS sequences) and the fastest one that agrees with fp32
   (every label's Dice >= 0.99, probabilities within 0.02: :mod:`medcnncad.inference.policy`) is kept;
3. the decision is cached in ``~/.medcnncad/policy-cache.json`` keyed by the machine (CPU model, its
   bf16/AMX flags, torch version, CUDA device) and the model's weights (SHA-256), so the calibration
   runs once per machine and model.

A model whose gate fails keeps fp32; the run's report says which policy ran and why
(``execution_policy``). Used when the precision is ``measured`` (``--precision measured``).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from medcnncad.inference.background_norm import supports_background_statistics
from medcnncad.inference.policy import CROP_MODES, choose_policy
from medcnncad.inference.segmenter import Segmenter, channels_last_safe, resolve_device
from medcnncad.io.sample_case import SEQUENCES, load_sample_case
from medcnncad.models.loaded import LoadedModel

__all__ = ["PolicyDecision", "cpu_bf16_native", "channels_last_safe", "machine_key", "measured_policy", "cache_path",
           "build_segmenter"]


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
    # the version changes when the candidates do (v3: crop+fit+bg), so cached decisions are measured again
    text = json.dumps(["policy-v3", _cpu_name(), flags, torch.__version__, device.type, gpu])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path() -> Path:
    """``$MEDCNNCAD_POLICY_CACHE`` or ``~/.medcnncad/policy-cache.json``."""
    return Path(os.environ.get("MEDCNNCAD_POLICY_CACHE", Path.home() / ".medcnncad" / "policy-cache.json"))


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


def measured_policy(model: LoadedModel, device: torch.device, path: Path | None = None) -> PolicyDecision:
    """The policy for ``model`` on this machine: from the cache, or decided now (see the module docstring).

    Args:
        model: the loaded model (its weights' SHA-256 keys the cache).
        device: where it runs.
        path: the cache file (default :func:`cache_path`).

    Returns:
        The :class:`PolicyDecision`.
    """
    path = path or cache_path()
    key = f"{machine_key(device)}:{model.manifest.weights_sha256}"
    cached = _read_cache(path).get(key)
    if cached:
        return PolicyDecision(cached["precision"], cached["channels_last"], cached["reason"],
                              tuple(cached.get("runs", ())), cached=True, crop=str(cached.get("crop", "none")))
    decision = _decide(model, device)
    _write_cache(path, key, decision)
    return decision


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
    networks with the bundle window's statistics: :mod:`medcnncad.inference.background_norm`). No
    channels-last candidate where :func:`channels_last_safe` says no."""
    native = device.type == "cuda" or cpu_bf16_native()
    offered = (("bf16", False), ("bf16", True)) if device.type == "cpu" else (("fp16", False), ("fp16", True),
                                                                                 ("bf16", False))
    safe = channels_last_safe(model.network, device)
    lower = tuple((p, cl) for p, cl in offered if safe or not cl)
    out = [(p, cl, "none") for p, cl in ((("fp32", True),) if safe else ()) + lower] if native else []
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
    report = choose_policy(model, images, device=device.type, candidates=candidates)
    precision, channels_last, crop = report["chosen"]
    rejected = [r for r in report["runs"] if not r["ok"]]
    reason = (f"measured on this machine: fastest run agreeing with the model's own fp32 settings on the "
              f"sample case ({len(report['runs'])} runs, {len(rejected)} rejected by the accuracy gate)")
    return PolicyDecision(precision, channels_last, reason, tuple(report["runs"]), crop=crop)


def build_segmenter(model: LoadedModel, device: str = "auto", precision: str | None = None) -> Segmenter:
    """A :class:`Segmenter` whose execution policy is ``precision``; ``"measured"`` decides it on this
    machine (:func:`measured_policy`) and the run's report says which policy ran and why."""
    if precision != "measured" or model.predict is not None:  # a format's own predictor keeps its precision
        return Segmenter(model, device, precision=None if precision == "measured" else precision)
    decision = measured_policy(model, resolve_device(device))
    reason = decision.reason + (" (cached)" if decision.cached else "")
    return Segmenter(model, device, precision=decision.precision, channels_last=decision.channels_last,
                     policy_reason=reason, crop_foreground=CROP_MODES[decision.crop][0],
                     fit_roi=CROP_MODES[decision.crop][1], background_statistics=CROP_MODES[decision.crop][2])
