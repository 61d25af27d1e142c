# Fresh machine: `make demo` runs the embedded default end to end; `make test` runs the tests.
# Each target builds its own virtual environment first. torch is pinned and installed
# before anything that depends on it, so pip takes the CPU wheel instead of a CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
# llama.cpp (the local judge) is built for any x86-64 with AVX2 rather than for this CPU: a -march=native
# build segfaults in its AMX kernels on some Xeons (seen here), and pip would reuse such a wheel from its
# cache, hence --no-cache-dir. LLAMA_CMAKE_ARGS= (empty) builds it for this CPU.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install -q --disable-pip-version-check --no-cache-dir -e '.[test,local,lm]'
	touch $@

.PHONY: install demo demo-llm demo-encoder test test-fast lint format bench
install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/autointerp run

demo-llm: $(VENV)/.installed   # the embedded default with a larger sample labelled by the local LLM
	$(VENV)/bin/autointerp run --llm-minutes 30

demo-encoder: $(VENV)/.installed   # the sentence encoder all-MiniLM-L6-v2 as subject, as `make demo` ran before
	$(VENV)/bin/autointerp run --project project-encoder --model embedded:all-MiniLM-L6-v2 --sample-judge local \
	    --max-tokens 1000000 --n-features 4096 --train-tokens 400000 --epochs 3

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed   # everyday work: the suite without the tests marked slow (under three minutes)
	$(PY) -m pytest -q -m "not slow"

lint: $(VENV)/.installed   # CI runs this before the tests
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(VENV)/.installed
	cd bench && ../$(PY) gather_overhead.py
	cd bench && ../$(PY) gather_memory.py
	cd bench && ../$(PY) judge_throughput.py   # needs ./project from `make demo`
	$(PY) bench/local_judge.py --project project
