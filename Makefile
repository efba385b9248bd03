# The README's two commands: `make run` (the study on the built-in demo data) and `make test`.
# Each sets up everything on a fresh machine by itself: .venv, the pinned stack, the package
# (editable) and the Jupyter kernel "mlc" the notebooks run on.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# the project's JupyterLab settings (no news prompt, no update check: jupyter/lab-overrides.json),
# installed where this venv's JupyterLab reads defaults; a user's own settings still win
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings/overrides.d/mlc.json
PARAMS ?= params/demo.yaml
DEMO   ?= data/demo
ARGS   ?=

.PHONY: setup allocator run test lab demo-data browser clean-runs

# `make setup` is everything `make run` and `make test` set up: the venv, the stack, the kernel, the lab
# settings, the allocator and the browser the tests drive
setup: $(STAMP) $(LAB_SETTINGS) allocator browser

$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name mlc --display-name "Python (mlc)"
	@touch $(STAMP)

$(LAB_SETTINGS): jupyter/lab-overrides.json | $(STAMP)
	install -D -m 644 $< $@

# tcmalloc keeps freed memory, so CPU passes do not fault their activations in page by page: 2-3x the
# images/s here (mlc_utils/core/allocator.py, benchmarks/feature_extraction.py). Debian's package where
# it can be installed; elsewhere glibc's malloc is tuned in-process. `run` preloads it for its kernels.
allocator: $(STAMP)
	@test -n "$$($(PY) -m mlc_utils.core.allocator)" || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libtcmalloc-minimal4 >/dev/null) ; } || \
	  echo "make: libtcmalloc-minimal4 not installed; glibc's malloc is tuned in-process instead (slower on a CPU)"

PRELOAD = env $$($(PY) -m mlc_utils.core.allocator --env)

$(DEMO)/train.csv: | $(STAMP)
	$(PY) -m mlc_utils demo-data --out $(DEMO)

demo-data: $(DEMO)/train.csv

run: setup $(DEMO)/train.csv
	$(PY) -m mlc_utils run --params $(PARAMS) $(ARGS)

# Headless Chromium for the browser tests (Debian's package; tests/test_browser.py drives it with
# Playwright from requirements-test.txt, no browser download); where it cannot be installed, those
# tests skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "make: chromium not installed; the browser tests (JupyterLab, reports) will skip"

# -rs: each skipped test says why (no browser, no real data, no GPU). The tests run in one pytest
# worker per core (pytest-xdist; at most 4): most of their time is kernels starting and processes
# waiting on each other, so two workers on two cores take about half the time of one. Tests that share
# a session's finished study stay on one worker (xdist_group, tests/conftest.py). TEST_WORKERS=0: one process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)
test: setup
	$(PRELOAD) $(PY) -m pytest -rs -n $(TEST_WORKERS) --dist loadgroup $(ARGS)

lab: setup $(DEMO)/train.csv
	$(PRELOAD) $(VENV)/bin/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

clean-runs:
	rm -rf runs reports/*/
