# The two things a new user runs (README): the demo loop and the tests. Both install what is missing first.
VENV := .venv

.PHONY: install dev test test-all test-recipes demo docs
install: $(VENV)/.installed-all
dev: $(VENV)/.installed-dev

$(VENV)/.installed-all: pyproject.toml install.sh
	./install.sh
$(VENV)/.installed-dev: pyproject.toml install.sh
	./install.sh --dev

# The fast tier: unit and in-process tests (tiny models, stubs). On a fresh clone `dev` runs ./install.sh --dev
# first, whose two compiles (llama-cpp-python, llama-server) take longer than the tests; both steps' times, measured
# from a fresh clone, are in docs/install.md. Which tests are slow is decided in tests/conftest.py (by module and
# fixture), not here. In parallel as test-all (a worker a core, up to 4): on 2 quiet cores 268 s, against 441 s in
# one process (2026-11-29, AMD EPYC, 1,099 tests).
test: dev
	$(VENV)/bin/pytest -q -n auto --maxprocesses 4 --dist loadgroup -m "not slow" $(PYTEST_ARGS)

# Everything but the recipe runs, the slow tests too (JVM, browser, llama-server, the demo's recipe, wheels): what CI
# runs (.ci/run). The tests run in parallel, one worker process per core up to 4 (pytest-xdist): the tests of a
# module that builds a fixture once for the module stay in one worker, the others go to whichever is free; each
# worker has its own empty cache and one OpenMP thread (tests/conftest.py). The 40 slowest tests are listed at the
# end, so CI's log says where its time went, and so are the fast-tier tests that took longer than the fast tier
# allows (EEXP_TIER_CHECK: a note for developers, which `make test` leaves out).
test-all: dev
	EEXP_TIER_CHECK=1 $(VENV)/bin/pytest -q -n auto --maxprocesses 4 --dist loadgroup --durations=40 -m "not recipes" \
	  $(PYTEST_ARGS)

# The recipe runs, on request: every config's header command, the SmolLM2, scaling and RL recipes, end to end at a
# tiny size (tests/conftest.py's RECIPE_RUNS: the 13 config runs of tests/test_recipe_configs.py alone took over 35
# minutes serially on 2 cores, November 2026). Run it when a recipe or a config changes.
test-recipes: dev
	$(VENV)/bin/pytest -q -n auto --maxprocesses 4 --dist loadgroup --durations=20 -m recipes $(PYTEST_ARGS)

demo:
	$(MAKE) -C recipes demo

# docs/cli.md and the man pages man/*.1 from every command's --help, the pages with what eexp/cli/man/PAGE.roff adds,
# and README.md's results table from docs/results/README.md's
# (tests/test_docs.py and tests/test_results_index.py fail when one is stale)
docs: dev
	$(VENV)/bin/python -m eexp.cli.reference > docs/cli.md
	$(VENV)/bin/python -m eexp.cli.reference --man man
	$(VENV)/bin/python docs/results/readme_table.py

# Every benchmark in one table (bench/run: eexp's figure, a baseline measured in the same run, ratio, target, met or
# missed; the last run took 6.8 minutes on 2 quiet cores and 13.3 under a load of 8-9: docs/results/performance.md).
# make bench BENCH_ARGS="--quick" (a few minutes) or "--json".
.PHONY: bench
bench: dev
	bench/run $(BENCH_ARGS)
