# MedCNNCAD - the two commands of the README: `make demo` and `make test`.
# Both create .venv when missing and install the pinned dependencies (constraints.txt).
# torch is pinned to the CPU 2.13.0 wheel; GPU users see README "GPU".
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv demo test bench screenshot clean gpu-wheelhouse

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "torch==2.13.0" -c constraints.txt
	$(PIP) install -q -r requirements-dev.txt -c constraints.txt
	$(PIP) install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medcnncad demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest -n 2 -q Testing

bench: $(STAMP)
	$(PY) scripts/bench.py all --repeats 5

screenshot: $(STAMP)
	$(PY) scripts/slicer_screenshot.py docs/slicer_screenshot.png

clean:
	rm -rf demo_out .pytest_cache

# Wheels the GPU check (Testing/gpu/check.sh) installs on a CUDA machine that has only PyTorch
# and no index: built here for its Python (PY_GPU, default 3.12), without torch.
PY_GPU ?= 3.12
gpu-wheelhouse:
	$(PYTHON) -m pip download -q --only-binary=:all: --platform manylinux2014_x86_64 --python-version $(PY_GPU) \
	  --no-deps -d Testing/gpu/wheelhouse numpy==2.4.6 scipy==1.17.1 monai==1.6.1 SimpleITK==2.5.7 tqdm \
	  matplotlib contourpy cycler fonttools kiwisolver packaging pillow pyparsing python-dateutil six \
	  jsonschema jsonschema-specifications referencing rpds-py attrs typing-extensions
