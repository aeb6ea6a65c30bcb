# Two commands on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= data
DEMO_POSTS ?= demo_data/posts

export RAY_USAGE_STATS_ENABLED ?= 0
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: install test test-fast soak demo bench clean

# constraints-cpu.txt pins the CPU torch build for dev/CI only; clusters keep their CUDA torch.
$(BIN)/.installed: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints-cpu.txt -e '.[test]'
	touch $@

install: $(BIN)/.installed

test: install
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest

test-fast: install
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -m "not slow"

# The whole-system checker's soak: SOAK random operation sequences (CI runs a bounded few).
SOAK ?= 10000
soak: install
	BACKFILL_SOAK=$(SOAK) RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -s -q -p no:cacheprovider --timeout=0 \
		tests/test_whole_system.py -k 'test_whole_system'

demo: install
	@test -d $(DEMO_POSTS) || $(BIN)/python -m jobs.tools.demo_data --posts 5000 --days 7 --out $(DEMO_POSTS)
	RAY_AUTH_MODE=disabled $(BIN)/python -m jobs.backfill --config configs/demo.yaml \
		-r posts --add-to-queue -i g --run-integrations --write-cache all

bench: install
	$(BIN)/python benchmarks/queue_bench.py
	$(BIN)/python benchmarks/classifier_bench.py

clean:
	rm -rf $(VENV) $(DATA_DIR) demo_data .pytest_cache
