# `make demo` and `make test` set up .venv/ on first use (CPU build of torch where there is no GPU):
# the demo the package alone, the tests the dev extra too (`make setup`).
VENV   := .venv
PY     := $(VENV)/bin/python
BASE   := $(VENV)/.base-stamp
STAMP  := $(VENV)/.installed-stamp
TORCH  ?= torch==2.13.0
# Where no local CPU wheel is configured for pip, e.g. TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL ?=
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: setup demo test test-slow lint clean

setup: $(STAMP)

# The package alone: what `make demo` needs.
$(BASE): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	@if $(PY) -c "import torch" 2>/dev/null; then \
		echo "torch already installed"; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		$(PY) -m pip install "$(TORCH)"; \
	else \
		echo "no GPU: installing the CPU build of torch"; \
		$(PY) -m pip install "$(TORCH)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)); \
	fi
	$(PY) -m pip install -e .
	touch $(BASE)

# With the dev extra: tests, lint and every optional feature.
$(STAMP): $(BASE)
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

# DEMO_ARGS: more flags for the training (the tests shorten it); DEMO_DIR: where it trains.
DEMO_DIR  ?= runs/demo
DEMO_ARGS ?=
demo: $(BASE)
	$(VENV)/bin/seqgen pretrain --config configs/text_lm/demo.yaml --overwrite true \
		--out_dir $(DEMO_DIR) $(DEMO_ARGS)
	@seed=0; for prompt in "ROMEO:" "First Citizen:" "KING HENRY:"; do \
		seed=$$((seed + 1)); echo "--- sample: $$prompt"; \
		$(VENV)/bin/seqgen generate --ckpt $(DEMO_DIR) --prompt "$$prompt" \
			--max_new_tokens 80 --temperature 0.8 --top_k 50 --seed $$seed; \
	done

lint: $(STAMP)
	$(VENV)/bin/ruff format --check seqgen tasks tests benchmarks
	$(VENV)/bin/ruff check seqgen tasks tests benchmarks

test: $(STAMP) lint
	$(PY) -m pytest -q

# benchmarks end to end, multi-process and killed runs, learning tests
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs
