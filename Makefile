# The two commands: `make demo` (the main job) and `make test` (every check).
# Each tested pair of Airflow and amazon provider versions gets its own virtualenv, pinned by its
# constraints file (constraints/<airflow>-<amazon>.txt, written by `make constraints`). `make demo`
# and the development tools use the newest pair's, .venv.

PYTHON ?= python3.11
NEWEST := 3.3.2-9.39.0
FLOOR := 3.0.6-9.12.0
MIDDLE := 3.2.1-9.25.0 3.3.1-9.34.0
# The lowest tested pair with human-in-the-loop tasks (Airflow 3.1+): the approval tests run there too.
HITL_LOWEST := 3.2.1-9.25.0
PAIRS := $(NEWEST) $(FLOOR) $(MIDDLE)
PYTEST_ARGS ?=

VENV := .venv
BIN := $(VENV)/bin
venv = $(if $(filter $(1),$(NEWEST)),$(VENV),.venv-$(1))

.PHONY: demo test lint typecheck pytest pytest-newest pytest-floor pytest-middle install install-all \
	constraints emulator bench reliability clean

# One rule per pair: .venv (newest) and .venv-<pair>, each with the project installed editable.
define PAIR_VENV
$(call venv,$(1))/.installed: pyproject.toml constraints/$(1).txt
	@test -x $(call venv,$(1))/bin/python || $(PYTHON) -m venv $(call venv,$(1))
	$(call venv,$(1))/bin/python -m pip install --quiet --upgrade "pip>=26"
	$(call venv,$(1))/bin/python -m pip install --quiet -c constraints/$(1).txt -e ".[testing,dev]"
	@touch $$@
endef
$(foreach pair,$(PAIRS),$(eval $(call PAIR_VENV,$(pair))))

STAMP := $(VENV)/.installed
FLOOR_STAMP := $(call venv,$(FLOOR))/.installed
MIDDLE_STAMPS := $(foreach pair,$(MIDDLE),$(call venv,$(pair))/.installed)

install: $(STAMP)

install-all: $(STAMP) $(FLOOR_STAMP) $(MIDDLE_STAMPS)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

test: lint typecheck pytest

# ruff and mypy with each end's pinned tools and Airflow.
lint: $(STAMP) $(FLOOR_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(call venv,$(FLOOR))/bin/ruff check .

typecheck: $(STAMP) $(FLOOR_STAMP)
	$(BIN)/mypy
	$(call venv,$(FLOOR))/bin/mypy

pytest: pytest-newest pytest-floor pytest-middle

# The whole suite on the newest pair and on the floor; the middle pairs run what depends on
# Airflow's version: unit, integration (the emulator's own tests apart) and the example DAGs,
# and the lowest with human-in-the-loop tasks the approval tests.
pytest-newest: $(STAMP)
	$(BIN)/pytest -q -n 2 --dist loadgroup $(PYTEST_ARGS)

pytest-floor: $(FLOOR_STAMP)
	$(call venv,$(FLOOR))/bin/pytest -q -n 2 --dist loadgroup $(PYTEST_ARGS)

pytest-middle: $(MIDDLE_STAMPS)
	@set -e; for pair in $(MIDDLE); do \
		echo "== Airflow and amazon $$pair"; \
		.venv-$$pair/bin/pytest -q -n 2 --dist loadgroup -m "not emulator" \
			tests/unit tests/integration tests/system/test_examples.py \
			$$( [ "$$pair" = "$(HITL_LOWEST)" ] && echo tests/system/test_approval.py ) $(PYTEST_ARGS); \
	done

# Run the emulator in the foreground (prints its endpoint).
emulator: $(STAMP)
	$(BIN)/python -m airflow_sm_callback.testing

# Performance figures (not part of `make test`): see docs/performance.md. The trigger-level
# scenarios of this project's trigger run on the newest pair and on the floor (Airflow's shared
# streams, and the provider's own shared poll below 3.3), into the same tables; the comparison
# with the amazon provider's trigger, the masking table and the end-to-end runs on the newest.
BENCH_PAIRS ?= $(NEWEST) $(FLOOR)

bench: $(foreach pair,$(BENCH_PAIRS),$(call venv,$(pair))/.installed)
	@set -e; for pair in $(BENCH_PAIRS); do \
		venv=$$( [ "$$pair" = "$(NEWEST)" ] && echo $(VENV) || echo .venv-$$pair ); \
		extra=$$( [ "$$pair" = "$(NEWEST)" ] || echo "--kinds ours --skip-e2e --skip-masking" ); \
		echo "== Airflow and amazon $$pair"; \
		$$venv/bin/python -m pip install --quiet -c constraints/$$pair.txt -e ".[bench]"; \
		$$venv/bin/python -m bench $$extra $(BENCH_ARGS); \
	done

# Reliability on another tested pair: PAIR=<pair> (the newest by default).
PAIR ?= $(NEWEST)
PAIR_VENV := $(call venv,$(PAIR))

# Faults, bad input and load against real Airflow processes (not part of `make test`, which runs
# a fast subset): writes docs/reliability.md. Starts PostgreSQL and Redis from Debian's packages.
reliability: $(PAIR_VENV)/.installed
	$(PAIR_VENV)/bin/python -m tests.reliability $(RELIABILITY_ARGS)

# Regenerate the constraints files from fresh installs (Airflow's own practice); PAIRS="..." for some.
constraints:
	@set -e; for pair in $(PAIRS); do $(PYTHON) scripts/constraints.py $$pair; done

clean:
	rm -rf $(VENV) .venv-* .pytest_cache .mypy_cache .ruff_cache build *.egg-info
