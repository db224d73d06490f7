# Two entry points for a fresh machine (see README):
#   make demo   set up .venv and run the whole pipeline on the built-in synthetic data (CPU)
#   make test   set up .venv and run lint + the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# On a CPU-only machine this local CPU build avoids gigabytes of CUDA wheels.
# GPU users: make TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu126" ...
TORCH_SPEC ?= torch==2.13.0
OUT    ?= runs/demo

.PHONY: setup demo test lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[train,export,dev]"
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/segkd pipeline --out $(OUT)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
