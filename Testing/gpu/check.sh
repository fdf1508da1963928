#!/usr/bin/env bash
# All GPU checks in one go (issue 6): CUDA vs CPU agreement, per-case time, cases/s in batch,
# peak GPU memory, SegResNet eager/channels-last/compile. For a CUDA machine where only PyTorch
# is preinstalled and nothing can be downloaded: the other packages come from a wheelhouse
# built beforehand on a machine with PyPI access (`make gpu-wheelhouse`, carried along with the
# working tree). Budget: <= 5 minutes. Output: $OUT/gpu_check.json (or ./gpu_check_out).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)"; then
  echo "check.sh: no CUDA device (torch.cuda.is_available() is False); nothing to check" >&2
  exit 3
fi
VENV=${GPU_VENV:-/tmp/medcnncad-gpu-venv}
"$PY" -m venv --system-site-packages "$VENV"   # sees the preinstalled CUDA torch
if [ -d Testing/gpu/wheelhouse ]; then
  "$VENV/bin/pip" install -q --no-index --find-links Testing/gpu/wheelhouse -r Testing/gpu/requirements.txt
else
  "$VENV/bin/pip" install -q -r Testing/gpu/requirements.txt   # needs an index
fi
"$VENV/bin/pip" install -q --no-deps --no-build-isolation -e . 2>/dev/null || \
  export PYTHONPATH="$PWD/MedCNNCAD${PYTHONPATH:+:$PYTHONPATH}"
"$VENV/bin/python" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))"
timeout 270 "$VENV/bin/python" scripts/gpu_check.py --device cuda --out "${OUT:-gpu_check_out}"
