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
source Testing/gpu/env.sh
"$RUN" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))"
timeout 270 "$RUN" scripts/gpu_check.py --device cuda --out "${OUT:-gpu_check_out}"
