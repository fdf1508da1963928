"""The execution precisions a case run may be asked for (no torch import: the command line's choices).

- ``measured`` (the default of every case run): the fastest policy that agrees with fp32, measured once per
  machine and model (:mod:`medcnncad.inference.machine_policy`);
- ``manifest``: the model's own setting (manifest ``inference.precision``), as the evaluations use;
- ``auto``: fp16 autocast on CUDA, fp32 on the CPU; ``fp32``, ``bf16``, ``fp16``: that precision.
"""

from __future__ import annotations

__all__ = ["CASE_PRECISIONS", "PRECISION_ENV", "PRECISION_HELP"]

CASE_PRECISIONS = ("measured", "manifest", "auto", "fp32", "bf16", "fp16")
PRECISION_ENV = "MEDCNNCAD_PRECISION"  # overrides the default ``measured``
PRECISION_HELP = ("execution precision: measured (default; the fastest policy that agrees with fp32, measured once "
                  "per machine and model and cached), manifest (the model's own), auto (fp16 on CUDA, fp32 on CPU), "
                  f"fp32, bf16, fp16; ${PRECISION_ENV} changes the default")
