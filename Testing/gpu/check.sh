#!/usr/bin/env bash
# All GPU checks in one go (issue 6): CUDA vs CPU agreement (demo and shipped models), per-case
# time, cases/s in batch, peak GPU memory, SegResNet eager/channels-last/compile.
# For a CUDA machine where PyTorch and the scientific stack are preinstalled and nothing can be
# downloaded: what is missing comes from Testing/gpu/wheelhouse, built beforehand on a machine with
# PyPI access (`make gpu-wheelhouse`) and carried along with the working tree; it is unpacked into
# a folder on PYTHONPATH, leaving the machine's own packages alone. Without a wheelhouse, a venv
# is made and Testing/gpu/requirements.txt installed from an index.
# Budget: <= 5 minutes. Output: $OUT/gpu_check.json (or ./gpu_check_out).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)"; then
  echo "check.sh: no CUDA device (torch.cuda.is_available() is False); nothing to check" >&2
  exit 3
fi
WHEELS=Testing/gpu/wheelhouse
if [ -d "$WHEELS" ]; then
  SITE=${GPU_SITE:-/tmp/medcnncad-gpu-site}
  mkdir -p "$SITE"
  for tarball in "$WHEELS"/*.tar.xz; do
    if [ -e "$tarball" ]; then tar -xJf "$tarball" -C "$SITE"; fi
  done
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE:$PWD/MedCNNCAD${PYTHONPATH:+:$PYTHONPATH}"
  RUN="$PY"
else
  VENV=${GPU_VENV:-/tmp/medcnncad-gpu-venv}
  "$PY" -m venv --system-site-packages "$VENV"   # sees the preinstalled CUDA torch
  "$VENV/bin/pip" install -q -r Testing/gpu/requirements.txt   # needs an index
  export PYTHONPATH="$PWD/MedCNNCAD${PYTHONPATH:+:$PYTHONPATH}"
  RUN="$VENV/bin/python"
fi
if ! "$RUN" -c "import monai, SimpleITK, nibabel, jsonschema, sklearn, scipy, tqdm, matplotlib, yaml"; then
  echo "check.sh: a package the engine needs is missing (above); rebuild the wheelhouse: make gpu-wheelhouse" >&2
  exit 4
fi
"$RUN" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))"
timeout 270 "$RUN" scripts/gpu_check.py --device cuda --out "${OUT:-gpu_check_out}"
