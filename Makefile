# reluvit: `make demo` (the demo reproduction) and `make test` (the suite) work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch 2.13.0 is excluded: a local CPU-only wheel of it shadows the registry and torchvision cannot load with it.
TORCH  ?= torch>=2.4,!=2.13.*

.PHONY: help venv demo test lint clean
help:
	@echo "make demo    train softmax vs relu/L vs relu on Animal-MNIST (2 CPU cores: under 10 min); table + figure in results/"
	@echo "make test    run the test suite"
	@echo "make lint    ruff"
	@echo "make clean   remove runs/ and results/ (keeps the virtual environment)"

venv: $(BIN)/.installed
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)" torchvision -e ".[dev]"
	$(BIN)/pip install -q --no-deps animal-mnist==0.4
	$(BIN)/python -c "import torch, torchvision, timm, reluvit, animal_mnist"
	touch $@

demo: venv
	$(BIN)/python -m reluvit.demo

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check src tests

clean:
	rm -rf runs results/figures results/*.csv results/*.parquet
