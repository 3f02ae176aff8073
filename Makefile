# CommonThoughts: the front door. Every target bootstraps .venv on first use.
#   make demo                      nano base recipe end to end, prints the results table
#   make test                      the test suite
#   make data|sft|eval|plan RECIPE=recipes/nano/base.yaml
#                                  (sft: SFT_ARGS="--num-processes N" for accelerate launch)
#   make validate                  every recipe and community submission (what PR CI runs)
#   make submit RECIPE=...         a community submission record from a finished run
#   make leaderboard               community/LEADERBOARD.md and site/index.html
#   make reproduce SUBMISSION=...  rerun a submission's eval from the registry, verdict per benchmark
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

.PHONY: install demo data sft eval validate submit leaderboard reproduce plan test bench clean

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
	$(PY) -m sft train $(RECIPE) $(SFT_ARGS)

eval: $(STAMP)
	$(PY) -m sft train --if-missing $(RECIPE)
	$(PY) -m eval run $(RECIPE)

validate: $(STAMP)
ifeq ($(origin RECIPE),command line)
	$(PY) -m data_pipeline validate $(RECIPE)
else
	$(PY) -m community validate
endif

submit: $(STAMP)
	$(PY) -m community submit $(RECIPE) $(SUBMIT_ARGS)

leaderboard: $(STAMP)
	$(PY) -m community leaderboard

reproduce: $(STAMP)
	$(PY) -m community reproduce $(SUBMISSION) $(REPRODUCE_ARGS)

plan: $(STAMP)
	$(PY) -m data_pipeline plan $(RECIPE)

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf .cache/commonthoughts registry
