# Two commands do all set-up on a fresh machine:  `make run` (pipeline on the defaults)  and  `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# DVC stage commands call `python`: make it the venv's.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install run test test-fast ui serve flow clean predict

install: $(STAMP)

# requirements.lock is the full pinned set (pip freeze of a clean install) used as constraints.
# The venv is byte-compiled once: this machine sets PYTHONDONTWRITEBYTECODE=1, and without .pyc
# files every DVC stage process pays ~2.5x for its imports (lightning ~15 s instead of ~6 s).
$(STAMP): requirements.in requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24"
	$(BIN)/pip install --quiet -r requirements.in -c requirements.lock
	@# a few files in installed packages are not Python 3.11 (templates, test data): compileall exits 1 for them
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null 2>&1 || true
	touch $(STAMP)

run: install
	$(BIN)/dvc repro

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

# MLflow UI on 127.0.0.1 over the project's sqlite store (one worker, no job runner: ~9 s to answer).
ui: install
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db \
		--default-artifact-root $(CURDIR)/mlartifacts --host 127.0.0.1 --port 5000 --workers 1

# The same seven steps as a Prefect flow (ephemeral Prefect API, PREFECT_HOME=.prefect).
flow: install
	$(BIN)/python -m pipelines.flow

clean:
	rm -rf artifacts mlflow.db mlflow.db.lock mlartifacts .prefect .dvc/tmp/exps

# Batch prediction with the deployed model, offline (ONNX Runtime, no server): a folder of images or a
# CSV/JSONL/Parquet file -> OUTPUT (bad rows/files: <OUTPUT stem>.errors.csv). MODEL=<dir> or
# MODEL_URI=models:/name@champion pick another model; ARGS passes more (--column, --batch-size).
predict: install
	@test -n "$(INPUT)" || { echo "usage: make predict INPUT=<folder|file> [OUTPUT=predictions.csv] [MODEL=dir | MODEL_URI=uri]"; exit 2; }
	$(BIN)/python -m pipelines.predict --input "$(INPUT)" --output "$(or $(OUTPUT),predictions.csv)" \
		$(if $(MODEL),--model "$(MODEL)") $(if $(MODEL_URI),--model-uri "$(MODEL_URI)") $(ARGS)

# BentoML service on http://127.0.0.1:3000 over artifacts/deploy (make run first; Ctrl-C stops it).
# DLOPS_MODEL_DIR=<dir> or DLOPS_MODEL_URI=models:/dlops-digits@champion (with MLFLOW_TRACKING_URI) serve
# another model; one service speaks every kind. A model it cannot load stops it at once with one line.
# Its own BENTOML_HOME (a temp dir, removed on exit): /metrics shows only this service's series.
serve: install
	home=$$(mktemp -d -t dlops-serve-XXXXXX) && trap 'rm -rf "$$home"' EXIT INT TERM && \
	BENTOML_HOME=$$home BENTOML_DO_NOT_TRACK=true $(BIN)/bentoml serve serving.service:Predictor --host 127.0.0.1 --port 3000
