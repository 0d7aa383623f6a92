# devtest-router: `make run` shows the demo, `make test` runs every test. See README.md.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO := build/demo

.PHONY: run demo test deps lint goldens bench docs dist clean

$(BIN)/devtest-router: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# What is missing of Debian's nginx-light, etcd-server, curl, openssl, chromium, pipx, libcap2-bin
# and systemd, promtool (unpacked from Debian's prometheus package, not installed) and the
# wheelhouse the README's test installs from (WHEELHOUSE; scripts/install-deps says more).
deps:
	scripts/install-deps

# The main job on the bundled demo registry: routing table, problems, and the diff an apply
# would make (the check and nginx's test of the staged file run, as in a real apply).
run: $(BIN)/devtest-router deps
	mkdir -p $(DEMO)
	$(BIN)/devtest-router check --config fixtures/demo/config.yaml fixtures/demo/snapshot.json
	$(BIN)/devtest-router apply --dry-run --config fixtures/demo/config.yaml \
		--output $(DEMO)/devtest-router.conf fixtures/demo/snapshot.json; \
	status=$$?; [ $$status -le 1 ] || exit $$status

# The whole frontend on loopback until Ctrl-C: etcd, nginx on 127.0.0.1:$(DEMO_PORT), the
# watcher (domain localhost) and two demo branches; docs/local-mode.md. DEMO_DIR: its files.
# `exec`: the demo is make's own child, so the SIGTERM make passes on reaches it (and not a
# shell that would die of it and leave the demo running).
DEMO_PORT ?= 8080
demo: $(BIN)/devtest-router deps
	exec env DEMO_PORT=$(DEMO_PORT) $(BIN)/python scripts/demo

test: $(BIN)/devtest-router deps
	$(BIN)/ruff check generator tests
	$(BIN)/mypy
	HYPOTHESIS_PROFILE=ci $(BIN)/pytest

# Rewrite the golden files from the current generator: only on purpose, then review the diff.
goldens: $(BIN)/devtest-router
	$(BIN)/pytest -n 0 tests/test_golden.py --update-goldens
	git status --short fixtures

# The benchmark suite (bench/run.py; docs/performance.md says what each figure means):
# bench/results.json, bench/results.md and docs/performance.png. BENCH_ARGS=--quick: smaller.
bench: $(BIN)/devtest-router deps
	bash bench/install-deps $(BIN)/pip
	$(BIN)/python bench/run.py $(BENCH_ARGS)
	$(BIN)/python bench/plot.py

# docs/configuration.md from schema/config.schema.json and the CLI's flags (tests/test_docs.py
# fails when it is out of date).
docs: $(BIN)/devtest-router
	$(BIN)/python -m generator.cli.reference --output docs/configuration.md

# The sdist and the wheel (built from the sdist) into $(DIST), then `twine check` on both.
# python -m build fetches hatchling into an isolated environment; offline, add
# BUILD_ARGS=--no-isolation (it then uses the venv's). Install: README.md, "Install".
DIST ?= dist
BUILD_ARGS ?=
dist: $(BIN)/devtest-router
	rm -f $(DIST)/devtest_router-*.whl $(DIST)/devtest_router-*.tar.gz
	$(BIN)/python -m build $(BUILD_ARGS) --outdir $(DIST) .
	$(BIN)/twine check --strict $(DIST)/devtest_router-*.whl $(DIST)/devtest_router-*.tar.gz

lint: $(BIN)/devtest-router
	$(BIN)/ruff check generator tests
	$(BIN)/ruff format --check generator tests
	$(BIN)/mypy

clean:
	rm -rf build dist $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
