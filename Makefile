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
# Each step says what it does; setuptools' editable-install notice is not news here.
$(BIN)/.installed: pyproject.toml constraints-cpu.txt
	@echo "install 1/3: a virtual environment in $(VENV)"
	@$(PYTHON) -m venv $(VENV)
	@echo "install 2/3: the latest pip"
	@$(BIN)/pip install -q --upgrade pip
	@echo "install 3/3: the project and its test tools (CPU torch, Ray, transformers: minutes the first time)"
	@PYTHONWARNINGS=ignore $(BIN)/pip install -q -c constraints-cpu.txt -e '.[test]'
	@touch $@
	@echo "install: done ($(VENV))"

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
