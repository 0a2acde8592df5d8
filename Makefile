# The two commands a newcomer runs:
#   make demo   set up .venv, build (or reuse) the local control plane and run the demo on it
#   make test   set up .venv and run the whole test suite (what CI runs)
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-fast lint crds clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[operator,trainer,dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(PY) -m glmops_dev demo

test: venv
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check operator trainer_image devcluster tests bench
	$(VENV)/bin/mypy operator/glmops

crds: venv
	$(VENV)/bin/glmops crds

clean:
	rm -rf $(VENV) .state
