# reluvit: `make demo` (the demo reproduction) and `make test` (the suite) work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# requirements.lock: every dependency's version, as `make lock` resolved and the suite tested them. torch and
# torchvision are installed first by version with their own dependencies (the CUDA libraries of this platform's
# build, which the lock leaves out); the rest exactly as locked, without resolving again.
LOCK        = requirements.lock
TORCH_PINS  = $(shell grep -E '^(torch|torchvision)==' $(LOCK))
LOCK_VENV  ?= /tmp/reluvit-lock-venv
# the requirements of the package with its dev and wandb extras, but animal-mnist, which comes without its own
# (its metadata names TensorFlow, which only its loaders import); torch 2.13.0 is excluded: a local CPU-only wheel of
# it shadows the registry and torchvision cannot load with it
LOCK_REQUIREMENTS = $(PYTHON) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
    print(*(r for r in p["dependencies"] + p["optional-dependencies"]["dev"] + p["optional-dependencies"]["wandb"] \
    if not r.startswith("animal-mnist")), "torch!=2.13.*")'

# Three variables pass through to the CLI, each target a thin call of it:
#   FLAGS="..."    reluvit's flags, e.g. FLAGS="--scale paper --launcher slurm --cluster <name> --dry-run" (a sweep's
#                  SLURM submission printed, nothing submitted); --no-wait, --seeds 0,1,2, --completed-in <table>
#                  (repeat for several), --bars minmax: `reluvit <command> --help` lists each command's;
#   ARGS="..."     Hydra overrides for every run (e.g. ARGS="logger=wandb");
#   RUNS_DIR=<dir> where runs live (default: $RELUVIT_RUNS_DIR, else runs/; put paper-scale runs on scratch).
FLAGS    ?=
ARGS     ?=
RUNS_DIR ?=
CLI_OPTS = $(FLAGS) $(if $(RUNS_DIR),--runs-dir $(RUNS_DIR))
# fig1 ... fig5, as sweeps/ defines them
FIGURES = $(sort $(basename $(notdir $(wildcard sweeps/fig*.yaml))))

# The GPU check (docs/kernels.md, "GPU check"): the packages a bare GPU machine with torch, timm, Lightning and Triton lacks,
# as CPython 3.12 wheels at this venv's versions (timm too: the machine's version is unknown). wandb stays behind:
# it is imported only with logger=wandb; submitit comes for `reluvit sweep --dry-run`. reluvit travels as the working
# tree (PYTHONPATH=src), not as a wheel, which would go stale.
DEVICE_WHEELS = hydra-core|omegaconf|webdataset|braceexpand|submitit|timm
# published as sdists only: built into wheels here
DEVICE_SDISTS = antlr4-python3-runtime
WHEEL_PLATFORMS = $(foreach n,manylinux_2_28 manylinux_2_17 manylinux2014,--platform $(n)_x86_64)

.PHONY: help venv venv-parity lock demo test test-all lint clean $(FIGURES) train-length plots claims reference-runs reference-figures status results wandb-sync bench bench-data bench-cli device-wheels device-check
help:
	@echo "make demo         train softmax vs relu/L vs relu on Animal-MNIST (2 CPU cores: under 10 min)"
	@echo "make test         the fast test suite (minutes; touches nothing outside the repository and /tmp)"
	@echo "make test-all     the full suite: + slow, TensorFlow parity and SLURM tests (starts the local cluster: slurm/up.sh, root)"
	@echo "make venv-parity  add TensorFlow and DALI to the venv: the default suite then runs the parity and DALI tests too"
	@echo "make lock         re-resolve the dependencies into requirements.lock (then make test-all before committing)"
	@echo "make fig1..fig5   run the figure's sweep, roll up, plot, test its claims; FLAGS=\"--scale paper --launcher slurm"
	@echo "                  --cluster <profile> --dry-run\": its job arrays, sbatch script and GPU-hours, nothing submitted"
	@echo "make train-length the smoke recipe's training-length study (4-32 epochs, 3 seeds; ~1 h on 2 CPU cores)"
	@echo "make plots        roll up, plot and test the claims of what exists (results/, never results/reference/)"
	@echo "                  FLAGS=\"--completed-in results/reference/smoke/runs.csv\" adds the committed smoke runs"
	@echo "                  make claims: the verdicts alone;  make status: runs per sweep"
	@echo "make reference-runs     add RUNS_DIR's completed clean-commit runs to results/reference/smoke/runs.csv"
	@echo "make reference-figures  redraw results/reference/smoke/*.png|pdf from its committed roll-ups (clean checkout)"
	@echo "make wandb-sync   upload the offline W&B runs under RUNS_DIR not uploaded yet"
	@echo "make bench        attention kernels and training steps: tables of ratios, CSV in results/bench/"
	@echo "make bench-data   shard pipeline vs ImageFolder loader: images/s per core"
	@echo "make bench-cli    wall time of reluvit --help / results / status on 10 000 generated runs"
	@echo "make device-check everything that needs a GPU, ~8 min on an H200 (CPU: the plumbing at tiny scale); docs/kernels.md"
	@echo "make device-wheels  the wheels a bare GPU machine lacks, into .whl/ (docs/kernels.md)"
	@echo "make lint         ruff;  make clean: remove the results of plots (keeps runs and the virtual environment)"

venv: $(BIN)/.installed
$(BIN)/.installed: pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q --no-deps -r $(LOCK)
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/python -c "import torch, torchvision, timm, wandb, reluvit, animal_mnist"
	touch $@

# Resolve the dependencies afresh (newest releases within pyproject.toml's bounds) into requirements.lock; then run
# make test-all before committing it.
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q --upgrade pip
	$(LOCK_VENV)/bin/pip install -q $$($(LOCK_REQUIREMENTS))
	$(LOCK_VENV)/bin/pip install -q --no-deps $$(grep -o '"animal-mnist[^"]*"' pyproject.toml | tr -d '"')
	{ echo "# make lock: pip freeze of pyproject.toml's dependencies with the dev and wandb extras (Python" \
	  "$$($(LOCK_VENV)/bin/python -c 'import platform; print(platform.python_version())')); torch's own CUDA" \
	  "libraries left out"; \
	  $(LOCK_VENV)/bin/pip freeze --all --exclude-editable | grep -vE '^(nvidia-|cuda-|triton==|pip==)'; } > $(LOCK)

# The references of the parity tests, which skip without them; make test-all adds them: TensorFlow (~600 MB) for
# the preprocessing, DALI (~200 MB; CPU-only here) for the DALI loader against the reference pipeline. About 1.5 min.
venv-parity: $(BIN)/.parity-installed
$(BIN)/.parity-installed: $(BIN)/.installed
	$(BIN)/pip install -q $$($(PYTHON) -c 'import tomllib; \
	    extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]; \
	    print(*extras["parity"], *extras["gpu"])')
	$(BIN)/python -c "import tensorflow, nvidia.dali"
	touch $@

demo: venv
	$(BIN)/reluvit sweep demo $(CLI_OPTS) $(ARGS)

# The default suite: fast tests only; it changes nothing outside the repository and the temporary directory.
test: venv
	$(BIN)/python -m pytest -q -m "not slow and not slurm" --durations=15

# The full suite: adds the slow tests, TensorFlow for the parity tests and the SLURM tests, on the one-node cluster
# slurm/up.sh starts (root; it installs slurm-wlm, munge and mariadb with apt-get and writes /etc/slurm). CI runs
# this (.ci/run).
test-all: venv venv-parity
	bash slurm/up.sh
	RELUVIT_SLURM_TESTS=1 $(BIN)/python -m pytest -q --durations=30

$(FIGURES) train-length: venv
	$(BIN)/reluvit sweep $(subst -,_,$@) $(CLI_OPTS) $(ARGS)

plots: venv
	$(BIN)/reluvit plots $(CLI_OPTS) $(ARGS)

claims: venv
	$(BIN)/reluvit claims $(CLI_OPTS) $(ARGS)

REFERENCE = results/reference/smoke
# The completed runs under RUNS_DIR trained from a clean commit join the committed smoke roll-up (a sweep run in
# pieces: commit the table after each piece, then make reference-figures).
reference-runs: venv
	$(BIN)/python -m reluvit.report.reference $(REFERENCE)/runs.csv $(or $(RUNS_DIR),$(RELUVIT_RUNS_DIR),runs)

# The committed smoke figures and claims (claims.csv, claims.md), redrawn from the committed roll-ups alone (no
# runs/): drawn in a scratch folder, then copied into results/reference/smoke/; results/README.md written from them.
# From a clean checkout only, as the runs it plots were trained.
reference-figures: venv
	@test -z "$$(git status --porcelain)" || { echo "reference-figures: commit first (the checkout is dirty)"; exit 2; }
	scratch=$$(mktemp -d) && $(BIN)/reluvit plots $(FIGURES) train_length --scale smoke --runs-dir $$scratch/runs \
	  --results-dir $$scratch --completed-in $(REFERENCE)/runs.csv --completed-in $(REFERENCE)/train_length_runs.csv && \
	cp $$scratch/smoke/*.png $$scratch/smoke/*.pdf $$scratch/smoke/claims.* $(REFERENCE)/ && \
	$(BIN)/python -m reluvit.report.readme $(REFERENCE) results/README.md; \
	status=$$?; rm -rf $$scratch; exit $$status

status: venv
	$(BIN)/reluvit status $(CLI_OPTS) $(ARGS)

results: venv
	$(BIN)/reluvit results $(CLI_OPTS)

wandb-sync: venv
	$(BIN)/reluvit wandb-sync $(CLI_OPTS)

bench: venv
	$(BIN)/python bench/attention.py
	$(BIN)/python bench/train_step.py

bench-data: venv
	$(BIN)/python bench/data.py

bench-cli: venv
	$(BIN)/python bench/cli.py

device-check: venv
	$(BIN)/python bench/device_check.py

device-wheels: venv
	rm -rf .whl && mkdir .whl
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(WHEEL_PLATFORMS) -d .whl $$($(BIN)/pip freeze | grep -iE '^($(DEVICE_WHEELS))==')
	$(BIN)/pip wheel -q --no-deps -w .whl $$($(BIN)/pip freeze | grep -iE '^($(DEVICE_SDISTS))==')
	ls -s .whl && du -sh .whl

lint: venv
	$(BIN)/ruff check src tests bench

# Never runs: they are deleted by hand (rm -r runs/...), as they cost hours to train
clean:
	rm -rf results/smoke results/paper results/*.csv results/*.parquet
