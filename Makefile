# MedCNNCAD - the two commands of the README: `make demo` and `make test`.
# Both create .venv when missing and install the pinned dependencies (constraints.txt).
# torch is pinned to the CPU 2.13.0 wheel; GPU users see README "GPU".
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv demo test test-quick lint bench screenshot clean gpu-wheelhouse

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-nnunet.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "torch==2.13.0" -c constraints.txt
	$(PIP) install -q -r requirements-dev.txt -c constraints.txt
	$(PIP) install -q --no-deps "nnunetv2==2.8.1" "dynamic-network-architectures==0.4.4"
	$(PIP) install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medcnncad demo --out demo_out

# lint: ruff (style, errors, import order) on the engine, module, tests and scripts; the import-layer
# contracts (import-linter, pyproject.toml); mypy on the engine
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	cd MedCNNCAD && ../$(VENV)/bin/lint-imports --no-cache ../pyproject.toml
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -n 2 -q Testing

# the inner loop: everything but the tests marked slow (full-size phantoms, training, subprocess runs)
test-quick: $(STAMP)
	$(PY) -m pytest -n 2 -q -m "not slow" Testing

bench: $(STAMP)
	$(PY) scripts/bench.py all --repeats 5

screenshot: $(STAMP)
	$(PY) scripts/slicer_screenshot.py docs/slicer_screenshot.png
	$(PY) scripts/panel_screenshot.py docs/module_panel.png

clean:
	rm -rf demo_out .pytest_cache

# What the GPU check (Testing/gpu/check.sh) adds on a CUDA machine with no index. That machine's
# image has Python 3.12 (PY_GPU) with PyTorch, numpy, scipy, scikit-learn, matplotlib, tqdm, PyYAML
# and attrs; the rest travels as wheels. SimpleITK's wheel (53 MB) is repacked as an xz tarball
# (29 MB) so that the working tree plus wheels stays under the device tool's 64 MiB transfer limit.
PY_GPU ?= 3.12
GPU_WHEELS := Testing/gpu/wheelhouse
GPU_PIP := $(PYTHON) -m pip download -q --no-deps --only-binary=:all: --implementation cp \
  --python-version $(PY_GPU) --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64
gpu-wheelhouse:
	rm -rf $(GPU_WHEELS) build/gpu-sitk && mkdir -p $(GPU_WHEELS) build/gpu-sitk/site
	$(GPU_PIP) -d $(GPU_WHEELS) -c constraints.txt monai nibabel jsonschema jsonschema-specifications \
	  referencing rpds-py
	$(GPU_PIP) -d build/gpu-sitk -c constraints.txt SimpleITK
	cd build/gpu-sitk/site && unzip -q ../*.whl && tar -cJf ../../../$(GPU_WHEELS)/SimpleITK.tar.xz .
