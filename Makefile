# savegame: every target makes and uses .venv, so a fresh clone needs only python3 (3.10+).
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev
PYTEST_WORKERS ?= 4

.PHONY: demo test lint bench soak clean test-redis-versions

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(PY) examples/demo.py

# The tests start the console script and Python in hundreds of subprocesses; compiling the
# sources first spares each of them that work where bytecode is not written as it goes
# (PYTHONDONTWRITEBYTECODE).
test: $(STAMP)
	$(PY) -m compileall -q src tests
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/run.py

# Longer runs of the tests that draw at random: 500 histories per backend, 200 kills.
soak: $(STAMP)
	SAVEGAME_HISTORIES=500 SAVEGAME_KILLS=200 SAVEGAME_CONTENTION_ROUNDS=4000 \
		$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup --timeout 3600 \
		-k "random_histories or kill_9 or torn or lost or saving_and_deleting_one_session" \
		$(PYTEST_ARGS)

# The Redis tests on each line of redis-py that pyproject admits, each in a venv of its own
# (.venv-redis-<version>): they differ in how a cluster client makes its node connections
# and in what a connection retries by default. Python 3.10 gets redis-py 8.1 at most.
REDIS_VERSIONS ?= 5.0 6.4 7.4 8.1 8.2
test-redis-versions:
	set -e; for v in $(REDIS_VERSIONS); do \
		test -x .venv-redis-$$v/bin/python || python3 -m venv .venv-redis-$$v; \
		.venv-redis-$$v/bin/python -m pip install -q -e '.[dev]' "redis==$$v.*"; \
		SAVEGAME_REQUIRE_SERVICES=1 .venv-redis-$$v/bin/python -m pytest -n $(PYTEST_WORKERS) \
			--dist loadgroup tests/test_redis.py tests/conformance -k redis $(PYTEST_ARGS); \
	done

clean:
	rm -rf $(VENV) .venv-redis-* .pytest_cache .mypy_cache .ruff_cache
