# VLT's two set-up commands (see README): `make demo` and `make test`. Both install what is
# missing into .venv first (tools/install.sh; a no-op once installed).
VENV ?= .venv
PY := $(VENV)/bin/python
# Torch threads per process (tests and demo): the two cores, without over-subscribing them.
export OMP_NUM_THREADS ?= 2

.PHONY: install demo lint test test-fast benchmark clean

install:
	bash tools/install.sh $(VENV)

# The main job on the embedded SynthDG benchmark: TASK=seg (VLTSeg, default) or TASK=det (VLTDet).
TASK ?= seg
DEMO_CONFIG_seg := configs/vltseg_tiny_synthdg.yaml
DEMO_CONFIG_det := configs/vltdet_tiny_synthdg.yaml
DEMO_CONFIG := $(DEMO_CONFIG_$(TASK))
demo: install
	@test -n "$(DEMO_CONFIG)" || { echo "TASK must be seg or det, got '$(TASK)'" >&2; exit 2; }
	$(PY) train_net.py --config-file $(DEMO_CONFIG) OUTPUT_DIR output/demo_$(TASK)

# The linter (ruff.toml: flake8's rules, isort's order, %s-style logging); `make test` runs it first.
lint: install
	$(PY) -m ruff check .

# The linter, then the full suite, slow end-to-end runs included (what CI runs).
test: lint
	$(PY) -m pytest tests -q -ra --durations=15

# Only the fast unit tests.
test-fast: install
	$(PY) -m pytest tests -q -m "not slow"

benchmark: install
	$(PY) -m benchmarks

clean:
	rm -rf output build *.egg-info
