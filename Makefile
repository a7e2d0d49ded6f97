# VLT's two set-up commands (see README): `make demo` and `make test`. Both install what is
# missing into .venv first (tools/install.sh; a no-op once installed).
VENV ?= .venv
PY := $(VENV)/bin/python
# The test run uses the two cores without over-subscribing them.
export OMP_NUM_THREADS ?= 2

.PHONY: install demo test test-fast benchmark clean

install:
	bash tools/install.sh $(VENV)

# The main job on the embedded SynthDG benchmark (TASK=seg or TASK=det).
TASK ?= seg
demo: install
	$(PY) tools/run_demo.py --task $(TASK)

# The full suite, slow end-to-end runs included (what CI runs).
test: install
	$(PY) -m pytest tests -q -ra --durations=15

# Only the fast unit tests.
test-fast: install
	$(PY) -m pytest tests -q -m "not slow"

benchmark: install
	$(PY) -m benchmarks

clean:
	rm -rf output build *.egg-info
