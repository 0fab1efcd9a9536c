# kmemopt: `make demo` and `make test` work on a fresh machine (they install what they need).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
KMEMOPT := $(VENV)/bin/kmemopt
SUITE ?= all
PYTEST_ARGS ?=

.PHONY: install browser demo test test-fast lint typecheck format bench samples clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

# The HTML report tests drive Debian's Chromium through playwright (which downloads no browser of its own).
# Installed here when missing and apt-get can (root); elsewhere those tests skip, except in CI (CI=true).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "note: no Chromium (apt-get install chromium): the browser tests of the HTML report will skip"; fi

demo: install
	$(KMEMOPT) profile sample_models/digits_cnn.keras --batch-size 64 --budget 512MiB

test: install browser
	$(PY) -m pytest -n 2 --dist loadfile --durations=40 $(PYTEST_ARGS)

# The fast tier (its target: under 5 minutes on a 2-core machine); its 20 slowest tests are listed, so a slow newcomer shows.
test-fast: install browser
	$(PY) -m pytest -n 2 --dist loadfile -m "not slow" --durations=20 $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check kmemopt tests benchmarks sample_models
	$(VENV)/bin/ruff format --check kmemopt tests benchmarks sample_models

typecheck: install
	$(VENV)/bin/mypy kmemopt

format: install
	$(VENV)/bin/ruff check --fix kmemopt tests benchmarks sample_models
	$(VENV)/bin/ruff format kmemopt tests benchmarks sample_models

bench: install
	$(PY) benchmarks/run.py --suite $(SUITE)

samples: install
	$(PY) sample_models/make_samples.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
