# The two commands a newcomer needs: `make demo` and `make test`.
# Both create ./.venv on first use (torch is installed first; see scripts/bootstrap.sh).
PY := .venv/bin/python
DURATION ?= 20

.PHONY: setup demo test lint
setup:
	@bash scripts/bootstrap.sh

demo: setup
	$(PY) -m bridge demo --duration $(DURATION)

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check .
