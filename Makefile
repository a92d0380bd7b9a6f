# Two entry points for a fresh machine (Python 3.11): `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-unit install clean bench

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found; install Python 3.11 or run 'make PY=/path/to/python3.11'" >&2; exit 2; }
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar off -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m jobs.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra tests

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -ra tests/unit

clean:
	rm -rf $(VENV) *.egg-info
