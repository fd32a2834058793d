# PA-HCL developer entry points. Two commands on a fresh machine:
#   make search   # installs (first time) and runs the main job: the moco_stage2 search on CPU defaults
#   make test     # installs (first time) and runs the test suite (what CI runs)
# Environment details (lock files, Docker, compose): docs/environment.md
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SPACE  ?= moco_stage2
# The install is FROM the lock files (exact versions + sha256 hashes), never from open ranges:
# pip installs uv (requirements/bootstrap.lock), uv installs the CPU lock and the tools lock, then the
# project itself without dependencies. (uv: ~20 s here where pip took ~3 min.)
# CPU is explicit: the lock pins torch==2.13.0+cpu, so nothing pulls the multi-GB CUDA build.
# On this workplace that wheel comes from pip's configured find-links (/opt/wheels), passed on to uv.
# Off this workplace, point at the PyTorch CPU index: make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
# (torch is then installed first by its locked version from that index, the rest hash-checked from the lock).
TORCH_INDEX    ?=
LOCK           := requirements/cpu.lock
TOOLS_LOCK     := requirements/tools.lock
BOOTSTRAP_LOCK := requirements/bootstrap.lock
TORCH_PIN       = $(shell grep -m1 -o '^torch==[^ ]*' $(LOCK))
# pip's find-links (environment and config) handed to uv, which does not read pip's configuration
UV_INSTALL      = fl=; for d in $${PIP_FIND_LINKS:-} $$($(BIN)/pip config get global.find-links 2>/dev/null); do \
                  fl="$$fl --find-links $$d"; done; $(BIN)/uv pip install --quiet --python $(BIN)/python $$fl

# `make lock`: regenerate every lock file with uv (installed by `make setup`).
# CUDA locks are resolved for Linux x86_64 / CPython 3.11 without installing anything.
LOCK_PLATFORM    := --python-version 3.11 --python-platform x86_64-manylinux_2_28
# Where uv finds the torch CPU wheel when locking (not on PyPI). Off this workplace:
#   make lock LOCK_TORCH_CPU_SOURCE="--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match"
LOCK_TORCH_CPU_SOURCE ?= --find-links /opt/wheels
UV ?= $(BIN)/uv
UV_COMPILE = $(UV) pip compile --quiet --config-file requirements/uv.toml --generate-hashes \
             --custom-compile-command "make lock" $(LOCK_PLATFORM)

.PHONY: setup test search smoke clean-venv lock check-env gpu-check

$(BIN)/.installed: pyproject.toml $(LOCK) $(TOOLS_LOCK) $(BOOTSTRAP_LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --no-deps --require-hashes -r $(BOOTSTRAP_LOCK)
	$(if $(TORCH_INDEX),$(UV_INSTALL) --no-deps --index-url $(TORCH_INDEX) "$(TORCH_PIN)")
	$(UV_INSTALL) --require-hashes -r $(LOCK) -r $(TOOLS_LOCK)
	$(UV_INSTALL) --no-deps -e .
	touch $@

setup: $(BIN)/.installed

test: setup
	$(BIN)/python -m pytest -q tests

search: setup
	$(BIN)/python tune/run_search.py --space $(SPACE)

smoke: setup
	$(BIN)/python -m pahcl.pretrain --data synthetic --out out/smoke --smoke-test

# GPU acceptance check (bench/gpu_check.py, < 9 min on one GPU): runs with the project's venv when there is
# one, else with $(PYTHON) and its own torch (a lent GPU machine: torch preinstalled, no ray/optuna/mlflow).
# Missing pure dependencies (pyyaml, scipy, pandas) can travel as wheels in .whl/ (installed offline first).
# PYTHONPATH: the checkout's pahcl/ and tune/ for a Python where the project is not installed.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
gpu-check:
	@if ls .whl/*.whl >/dev/null 2>&1; then $(GPU_PYTHON) -m pip install -q --no-index --find-links .whl .whl/*.whl; fi
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PYTHON) bench/gpu_check.py --out bench/results/gpu_check.json

# Static checks of the container set-up only (also part of `make test`).
check-env: setup
	$(BIN)/python -m pytest -q tests/test_environment.py

lock:
	@test -x "$(UV)" || { echo "uv not found at $(UV): run make setup first (or make lock UV=/path/to/uv)"; exit 1; }
	$(UV_COMPILE) pyproject.toml requirements/cpu.in --extra dev $(LOCK_TORCH_CPU_SOURCE) -o requirements/cpu.lock
	$(UV_COMPILE) pyproject.toml requirements/cuda.in --extra cuda -o requirements/cuda.lock
	$(UV_COMPILE) pyproject.toml requirements/cuda13.in --extra cuda -o requirements/cuda13.lock
	$(UV_COMPILE) requirements/tools.in -o requirements/tools.lock
	$(UV_COMPILE) requirements/bootstrap.in -o requirements/bootstrap.lock

clean-venv:
	rm -rf $(VENV)
