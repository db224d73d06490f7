# Two entry points for a fresh machine (see README):
#   make demo   set up .venv and run the whole pipeline on the built-in synthetic data (CPU)
#   make test   set up .venv and run lint + the test suite
#
# The environment is installed from the committed lock, with hashes: requirements.lock
# (CPU: torch 2.13.0+cpu, onnxruntime) or, with GPU=1, requirements-gpu.lock in .venv-gpu
# (CUDA torch, onnxruntime-gpu; never both onnxruntimes in one environment). A
# dependency changes only through `make lock`, in a commit of its own.
PYTHON     ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
GPU        ?=
ifeq ($(GPU),1)
VENV       ?= .venv-gpu
LOCK       := requirements-gpu.lock
else
VENV       ?= .venv
LOCK       := requirements.lock
endif
BIN        := $(VENV)/bin
# uv installs the lock (about 10x faster than pip here); INSTALLER=pip is the fallback.
INSTALLER  ?= uv
# Where the torch 2.13.0+cpu wheel lies. This project's machines hold it in /opt/wheels;
# elsewhere PyTorch's CPU index serves it: FIND_LINKS=https://download.pytorch.org/whl/cpu/torch/
FIND_LINKS ?= /opt/wheels
UV_DIR     := .tools/uv
UV         := $(UV_DIR)/bin/uv
LOCK_FLAGS ?= --upgrade
LOCK_ARGS  := --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 --quiet
OUT        ?= runs/demo

.PHONY: setup demo test test-tools lint lock test-latest clean gpu-wheels gpu-site gpu-check

# The installer itself, pinned by hash, outside the project's environments.
$(UV): requirements/uv.txt
	$(PYTHON) -m pip install --quiet --require-hashes --no-deps --upgrade --target $(UV_DIR) -r requirements/uv.txt
	touch $@

$(BIN)/.installed: $(LOCK) pyproject.toml $(if $(filter pip,$(INSTALLER)),,$(UV))
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || \
	  { echo "error: the lock is for CPython 3.11; run with PYTHON=python3.11" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
ifeq ($(INSTALLER),pip)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps --find-links $(FIND_LINKS) -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
else
	$(UV) pip sync --quiet --python $(BIN)/python --require-hashes --find-links $(FIND_LINKS) $(LOCK)
	$(UV) pip install --quiet --python $(BIN)/python --no-deps --no-build-isolation -e .
endif
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/segkd pipeline --out $(OUT)

# qemu-user lets one test run the CPU INT8 artifact as a CPU without VNNI would
# (tests/export/test_export.py); without it that test skips and says so.
test-tools:
	@command -v qemu-x86_64 >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get update -qq >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user >/dev/null 2>&1; } ; } || true

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint test-tools
	$(BIN)/python -m pytest -q

# Re-resolve both locks and the installer pin on purpose (newest releases within
# pyproject's ranges and requirements/*.in); commit the result on its own, saying why.
lock: $(UV)
	$(UV) pip compile requirements/uv.in $(LOCK_ARGS) $(LOCK_FLAGS) -o requirements/uv.txt
	$(UV) pip compile pyproject.toml requirements/cpu.in --extra train --extra export --extra dev \
	  --find-links $(FIND_LINKS) $(LOCK_ARGS) $(LOCK_FLAGS) -o requirements.lock
	$(UV) pip compile pyproject.toml requirements/gpu.in --extra train --extra export-gpu --extra dev \
	  $(LOCK_ARGS) $(LOCK_FLAGS) -o requirements-gpu.lock

# The suite against the newest releases, in its own environment, to see drift when we
# choose to look rather than when CI turns red. torch stays the CPU build.
test-latest: $(UV)
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	$(UV) pip install --quiet --python .venv-latest/bin/python --find-links $(FIND_LINKS) \
	  --override requirements/cpu.in -e ".[train,export,dev]"
	.venv-latest/bin/python -m pip list --format=freeze 2>/dev/null | grep -iE '^(onnx|onnxruntime|numpy|torch|opencv)' || true
	.venv-latest/bin/python -m pytest -q

# --- GPU check (docs/GPU.md) ------------------------------------------------------------
# A CUDA machine without network whose Python 3.12 already holds torch (CUDA), onnx,
# onnxruntime, numpy and OpenCV gets the rest of what segkd imports as wheels, at the
# lock's versions, prepared here by `make gpu-wheels` into .whl/ (under 64 MiB; OpenCV's
# wheel alone is 61 MB, so it must be on the machine). Never torch: the machine's stays.
GPU_WHEELS ?= onnxslim onnxscript onnx-ir ml-dtypes typer pydantic pydantic-core \
  annotated-types typing-inspection annotated-doc typing-extensions shellingham rich \
  markdown-it-py mdurl pygments tqdm pyyaml pillow colorama packaging
GPU_WHEEL_DIR ?= .whl
GPU_WHEEL_PY  ?= 3.12
GPU_WHEEL_MAX_MIB ?= 64
GPU_PLATFORMS := manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
  manylinux2014_x86_64 manylinux1_x86_64
GPU_PYTHON    ?= python3
GPU_SITE      ?= /tmp/site
GPU_CHECK_OUT ?= runs/gpu_check
GPU_CHECK_ARGS ?=

gpu-wheels:
	rm -rf $(GPU_WHEEL_DIR) && mkdir -p $(GPU_WHEEL_DIR)
	pins=""; for p in $(GPU_WHEELS); do \
	  pin=$$(grep -ioE "^$$p==[^ ]+" requirements.lock) || { echo "error: $$p is not in requirements.lock" >&2; exit 2; }; \
	  pins="$$pins $$pin"; done; \
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_WHEEL_PY) \
	  --implementation cp $(addprefix --platform ,$(GPU_PLATFORMS)) -d $(GPU_WHEEL_DIR) $$pins
	@kib=$$(du -sk $(GPU_WHEEL_DIR) | cut -f1); n=$$(ls $(GPU_WHEEL_DIR)/*.whl | wc -l); \
	  echo "$(GPU_WHEEL_DIR): $$n wheels, $$((kib / 1024)) MiB"; \
	  [ $$kib -le $$(($(GPU_WHEEL_MAX_MIB) * 1024)) ] || { echo "error: $(GPU_WHEEL_DIR) is over $(GPU_WHEEL_MAX_MIB) MiB" >&2; exit 2; }

# On the GPU machine: the carried wheels into $(GPU_SITE), beside (not over) its own packages.
gpu-site:
	@[ -n "$$(ls $(GPU_WHEEL_DIR)/*.whl 2>/dev/null)" ] || { echo "error: no wheels in $(GPU_WHEEL_DIR); run make gpu-wheels first (on a machine with network)" >&2; exit 2; }
	$(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
	  --target $(GPU_SITE) $(GPU_WHEEL_DIR)/*.whl

# On the GPU machine: every CUDA path, measured, in under 8 minutes (benchmarks/gpu_check.py).
gpu-check: $(if $(wildcard $(GPU_WHEEL_DIR)/*.whl),gpu-site,)
	PYTHONPATH=$(if $(wildcard $(GPU_WHEEL_DIR)/*.whl),$(GPU_SITE):,)$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} \
	  PYTHONUNBUFFERED=1 $(GPU_PYTHON) benchmarks/gpu_check.py --device cuda --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) .venv-gpu .venv-latest .tools .pytest_cache .ruff_cache
