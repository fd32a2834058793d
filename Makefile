# PA-HCL developer entry points. Two commands on a fresh machine:
#   make search   # installs (first time) and runs the main job: the moco_stage2 search on CPU defaults
#   make test     # installs (first time) and runs the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SPACE  ?= moco_stage2
# CPU is explicit: torch 2.13.0 CPU wheel first, so nothing pulls the multi-GB CUDA build.
# Off this workplace, point pip at the PyTorch CPU index: make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
TORCH_SPEC  ?= torch==2.13.0

.PHONY: setup test search smoke clean-venv

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/.installed

test: setup
	$(BIN)/python -m pytest -q tests

search: setup
	$(BIN)/python tune/run_search.py --space $(SPACE)

smoke: setup
	$(BIN)/python -m pahcl.pretrain --data synthetic --out out/smoke --smoke-test

clean-venv:
	rm -rf $(VENV)
