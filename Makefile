# leakbook: two commands. `make book` builds the HTML book, `make test` tests it all.
# Everything installs into .venv with pip; torch comes from the pinned CPU build.

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
JB      := $(VENV)/bin/jupyter-book
STAMP   := $(VENV)/.installed-stamp
export OMP_NUM_THREADS ?= 2
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: install book test unit notebooks build-strict browser times lab clean student bench

install: $(STAMP) _vendor/.complete

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[book,test,lab]'
	touch $(STAMP)

_vendor/.complete: scripts/vendor.sh
	bash scripts/vendor.sh

book: install
	$(JB) build . --keep-going
	@echo
	@echo "The book is built. Open _build/html/index.html in a browser,"
	@echo "or serve it: $(PY) -m http.server -d _build/html 8000"

## make test: unit tests, every notebook under nbval, a strict book build,
## the execution times, and a real-browser check of the built site.
test: install unit notebooks build-strict times browser
	@echo "make test: all checks passed"

unit: install
	$(PY) -m pytest -q tests

notebooks: install
	$(PY) -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env \
	    --nbval-cell-timeout=300 --timeout=900 -n 2 --dist loadfile \
	    chapters

build-strict: install
	$(JB) build . --all -W --keep-going

times: install
	$(PY) scripts/exec_times.py

browser: install
	bash scripts/ensure_chromium.sh
	$(PY) -m pytest -q -p no:cacheprovider browser_tests

lab: install
	$(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) chapters/

student: install
	$(PY) scripts/strip_solutions.py

clean:
	rm -rf _build

## make bench: regenerate every chapters/data/*.json (see README for the time)
bench: install
	$(PY) scripts/bench.py $(BENCH)
