# The README's two commands: `make train` (the main job, CPU default) and `make test` (everything).
# Each installs what it needs: a .venv with the Python dependencies and rlkd built by maturin.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CONFIG ?= configs/math.toml
ARGS   ?=

.PHONY: install build train reproduce test test-rust test-python test-verl bench bench-serve clean

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

train: build
	$(VENV)/bin/rlkd-train $(CONFIG) $(ARGS)

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

test: test-rust test-python

bench: build
	cargo bench
	$(PY) benches/bench_kernels.py

clean:
	rm -rf $(VENV) target

# verl pins an older transformers than rlkd: install it without its dependencies, plus the
# modules its reward managers import, and run rlkd's verl tests against verl itself.
test-verl: build
	$(PY) -m pip install -q --no-deps "verl>=0.9,<0.10"
	$(PY) -m pip install -q ray tensordict omegaconf codetiming
	$(PY) -m pytest -q tests/test_integrations_verl.py

bench-serve: build
	$(PY) benches/bench_serve.py
