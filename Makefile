# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv on first use. torch==2.13.0 (CPU) is installed before anything that
# depends on torch, unless the venv already has a torch (a GPU user installs their own).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH ?= torch==2.13.0

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.rlattr-installed

$(VENV)/.rlattr-installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[all]"
	touch $@

# PPO and IIF side by side on the IIF paper's FrozenLake (the paper's settings, seed 0, its
# 1000 evaluation episodes after every round): the suite's clearest gain that runs in about
# two minutes (experiments/results/suite/frozenlake.md).
demo: setup
	$(VENV)/bin/rlattr compare frozenlake --arms ppo iif --seeds 1 --episodes 1000 --out runs/demo

test: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -p no:cacheprovider

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: setup
	$(PY) experiments/bench_recording.py

clean:
	rm -rf runs .pytest_cache
