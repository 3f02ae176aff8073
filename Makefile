# CommonThoughts: the front door. Every target bootstraps .venv on first use.
#   make demo                      nano base recipe end to end, prints the results table
#   make test                      the test suite
#   make data|sft|eval|validate RECIPE=recipes/nano/base.yaml
#   make bench                     benchmarks, JSON figures under bench/results/

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
# The CPU build of torch; on a GPU machine use `make install TORCH=torch` then `pip install -e '.[gpu]'`.
TORCH  ?= torch==2.13.0
RECIPE ?= recipes/nano/base.yaml
STAMP  := $(VENV)/.installed
export PYTHONUNBUFFERED := 1
export TOKENIZERS_PARALLELISM := false
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: install demo data sft eval validate plan test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(MAKE) --no-print-directory eval RECIPE=recipes/nano/base.yaml

data: $(STAMP)
	$(PY) -m data_pipeline run $(RECIPE)

sft: $(STAMP)
	$(PY) -m sft train $(RECIPE)

eval: $(STAMP)
	$(PY) -m sft train --if-missing $(RECIPE)
	$(PY) -m eval run $(RECIPE)

validate: $(STAMP)
	$(PY) -m data_pipeline validate $(if $(filter command line,$(origin RECIPE)),$(RECIPE),$(shell find recipes -name '*.yaml' -not -path 'recipes/accelerate/*' | sort))

plan: $(STAMP)
	$(PY) -m data_pipeline plan $(RECIPE)

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf .cache/commonthoughts registry
