# The two things a new user runs (README): the demo loop and the tests. Both install what is missing first.
VENV := .venv

.PHONY: install dev test test-fast demo docs
install: $(VENV)/.installed-all
dev: $(VENV)/.installed-dev

$(VENV)/.installed-all: pyproject.toml install.sh
	./install.sh
$(VENV)/.installed-dev: pyproject.toml install.sh
	./install.sh --dev

test: dev
	$(VENV)/bin/pytest -q

test-fast: dev
	$(VENV)/bin/pytest -q -m "not slow"

demo:
	$(MAKE) -C recipes demo

# docs/cli.md from every command's --help (tests/test_docs.py fails when it is stale)
docs: dev
	$(VENV)/bin/python -m eexp.cli.reference > docs/cli.md

# Every benchmark in one table (bench/run: eexp's figure, a baseline measured in the same run, ratio, target, met or
# missed; about 15 minutes on 2 cores). make bench BENCH_ARGS="--quick" (a few minutes) or "--json".
.PHONY: bench
bench: dev
	bench/run $(BENCH_ARGS)
