# Two entry points for a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint install

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m lit_psion fit --config configs/decoder_tiny.yaml

lint: $(STAMP)
	$(BIN)/ruff check .

# Two workers, one file each at a time (a file's module fixtures are built once), one torch thread
# per process: two processes spinning two OpenMP threads each on two cores run ~5x slower, not 2x.
test: lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=20

# The slow scenarios include adapter windows under Flower's deployment runtime: the flower extra.
FLOWER := $(VENV)/.flower

$(FLOWER): $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,flower]"
	touch $(FLOWER)

test-slow: $(FLOWER)
	$(BIN)/python -m pytest -q -m slow
