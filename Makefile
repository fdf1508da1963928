# MedCNNCAD - the two commands of the README: `make demo` and `make test`.
# Both create .venv when missing and install the pinned dependencies (constraints.txt).
# torch is pinned to the CPU 2.13.0 wheel; GPU users see README "GPU".
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv demo test bench screenshot clean

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
