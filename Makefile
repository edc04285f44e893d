# Two commands on a fresh machine: `make demo` and `make test`. Each runs `make setup` first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export SPARK_LOCAL_IP ?= 127.0.0.1
export SPARK_CONF_DIR ?= $(CURDIR)/spark-conf
export PYSPARK_PYTHON ?= $(CURDIR)/$(PY)
export PYSPARK_DRIVER_PYTHON ?= $(CURDIR)/$(PY)

.PHONY: setup demo test test-fast package bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/dlpipe run --config pipelines/configs/digits_cnn.yaml

test: setup
	$(PY) -m pytest tests --durations=10

test-fast: setup
	$(PY) -m pytest tests -m "not slow and not cluster" --durations=10

package: setup
	bash scripts/package.sh

bench: setup
	$(PY) -m benchmarks all --size small

clean:
	rm -rf work dist .pytest_cache
