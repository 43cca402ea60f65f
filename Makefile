# leakbook: two commands. `make book` builds the HTML book, `make test` tests it all.
# Everything installs into .venv with pip; torch comes from the pinned CPU build.

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
JB      := $(VENV)/bin/jupyter-book
STAMP   := $(VENV)/.installed-stamp
export OMP_NUM_THREADS ?= 2
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: install book test unit notebooks build-strict browser times lab clean student bench \
        grade student-book

install: $(STAMP) _vendor/.complete

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[book,test,lab]'
	touch $(STAMP)

_vendor/.complete: scripts/vendor.sh
	bash scripts/vendor.sh

## make book STUDENT=1 [CHAPTERS="01 02"]: the book without solutions (and
## without the instructor guide) in _build/student/_build/html
book: install
ifeq ($(STUDENT),1)
	$(PY) -m grading book $(if $(CHAPTERS),--chapters "$(CHAPTERS)")
else
	$(JB) build . --keep-going
	@echo
	@echo "The book is built. Open _build/html/index.html in a browser,"
	@echo "or serve it: $(PY) -m http.server -d _build/html 8000"
endif

## make test: unit tests, every notebook under nbval, a strict book build,
## the execution times, and a real-browser check of the built site.
test: install unit notebooks build-strict times student-book browser
	@echo "make test: all checks passed"

unit: install
	$(PY) -m pytest -q tests

## every chapter, and every student copy (its check cells must raise)
notebooks: install student
	$(PY) -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env \
	    --nbval-cell-timeout=300 --timeout=900 -n 2 --dist loadfile \
	    chapters student

build-strict: install
	$(JB) build . --all -W --keep-going

times: install
	$(PY) scripts/exec_times.py

browser: install
	bash scripts/ensure_chromium.sh
	$(PY) -m pytest -q -p no:cacheprovider browser_tests

lab: install
	$(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) chapters/

## make student: student copies of the chapters (and their data) in student/
student: install
	$(PY) -m grading student

## make grade SUBMISSIONS=DIR [SALT=secret]: autograde submitted student copies
## with nbgrader; CSV and feedback in _build/grading (see instructor.md)
grade: install
	@test -n "$(SUBMISSIONS)" || { echo "usage: make grade SUBMISSIONS=DIR [SALT=secret]"; exit 2; }
	$(PY) -m grading grade "$(SUBMISSIONS)" $(if $(SALT),--salt "$(SALT)")

student-book: install
	$(PY) -m grading book

clean:
	rm -rf _build

## make bench: regenerate every chapters/data/*.json (see README for the time)
bench: install
	$(PY) scripts/bench.py $(BENCH)
