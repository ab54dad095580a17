# savegame: every target makes and uses .venv, so a fresh clone needs only python3 (3.10+).
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev
PYTEST_WORKERS ?= 4

.PHONY: demo test lint bench soak clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/run.py

# Longer runs of the tests that draw at random: 500 histories per backend, 200 kills.
soak: $(STAMP)
	SAVEGAME_HISTORIES=500 SAVEGAME_KILLS=200 $(PY) -m pytest -n $(PYTEST_WORKERS) \
		--dist loadgroup --timeout 3600 -k "random_histories or kill_9 or torn or lost" \
		$(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
