#!/usr/bin/env bash
# Sourced by the GPU scripts (check.sh, and any one-off run on the GPU machine): makes the engine
# importable on a CUDA machine whose Python has torch and the scientific stack but no index.
# Sets RUN (the Python to use) and PYTHONPATH. The repository root must be the current folder.
PY=${PY:-${PYTHON:-python3}}
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
  echo "env.sh: a package the engine needs is missing (above); rebuild the wheelhouse: make gpu-wheelhouse" >&2
  return 4 2>/dev/null || exit 4
fi
