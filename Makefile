# Two commands on a fresh machine: `make demo` and `make test`. Each runs `make setup` first.
SHELL := /bin/bash
# The Spark line (README "Spark lines"): 3.5 (classic, the default), 4 or current, each in its own venv.
SPARK ?= 3.5
export SPARK
ifeq ($(SPARK),3.5)
VENV := .venv
TESTS := tests
else ifeq ($(SPARK),4)
VENV := .venv-spark4
# every test that starts Spark or a store (the classic line runs the whole suite)
TESTS := tests/spark tests/cluster tests/unit/storage tests/unit/test_cli.py
else ifeq ($(SPARK),current)
VENV := .venv-current
# the whole pipeline under each strategy, inference, the arrow loader, elastic training, ETL, the stores, the guarded schedule
TESTS := tests/spark/train/test_strategies.py tests/spark/test_run.py tests/spark/infer tests/spark/etl \
         tests/spark/train/test_loader_petastorm.py tests/unit/train/test_loader.py tests/unit/storage tests/unit/test_cli.py \
         tests/spark/train/test_elastic.py tests/unit/train/test_elastic_order.py tests/unit/train/test_elastic_plan.py \
         tests/spark/test_schedule.py tests/unit/test_drift.py tests/unit/test_promotion.py
else
$(error SPARK=$(SPARK): the Spark lines are SPARK=3.5 (the default), SPARK=4 and SPARK=current)
endif
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
	$(PY) -m pytest $(TESTS) --durations=10

test-fast: setup
	$(PY) -m pytest $(TESTS) -m "not slow and not cluster" --durations=10

package: setup
	VENV=$(VENV) bash scripts/package.sh

bench: setup
	$(PY) -m benchmarks all --size small

clean:
	rm -rf work dist .pytest_cache
