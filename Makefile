# One venv for everything; torch/torchvision pinned to the CPU build by constraints.txt.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DATA    ?= ../shared/datasets/fashion-products
DEMO    ?= artifacts/demo
PORT    ?= 8000

.PHONY: install demo explore test test-fast test-reliability bench bench-all lint browser clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[all,dev,ray]"
	touch $(STAMP)

install: $(STAMP)

## Debian's chromium for the real-browser tests (playwright cannot download browsers here)
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: browser tests will be skipped"

demo: install
	$(BIN)/multitag demo --data-root $(DATA) --out $(DEMO)
	@echo "next: make explore   (serves $(DEMO)/catalog at http://127.0.0.1:$(PORT)/)"

## the explorer over the demo's catalogue; builds what is missing first (the whole demo if it has no model yet)
explore: install
	$(BIN)/multitag demo --explore --data-root $(DATA) --out $(DEMO) --port $(PORT)

test: install browser
	$(BIN)/python -m pytest -q

## no real data, every module (docs/testing.md): 137 CPU-s, was 360 (busy shared 2-core host; budget: 3 min on a quiet one)
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not browser"

## hostile input, SIGKILL at commit/publish points, two writers (part of `make test` too)
test-reliability: install
	$(BIN)/python -m pytest -q -m reliability

## core tagger, then int8 / bf16 / fp32 side by side on the model it trained (bench/precision.md)
bench: install
	$(BIN)/python -m multitag.bench.core --out bench
	$(BIN)/python -m multitag.bench.precision --out bench --model bench/bench-model

## every benchmark (source shift: ~25 min incl. training the default tagger if bench/bench-model-shift is missing; extra views: heads of that tagger on its whole training split, one encoder pass per view, see bench/views.md; embeddings: ~25 min; k-means: see bench/kmeans.md; index: ~5 min incl. 1M vectors; catalogue: ~5 min incl. a headless browser; service load: ~3 min; full-size frozen vs fine-tuned taggers, each with 1 and 3 head sets: ~75 min; head training, 3 head sets separate vs batched: bench/train.md; unlabelled catalogue: see bench/unlabelled.md)
bench-all: bench
	$(BIN)/python -m multitag.bench.embed --out bench
	$(BIN)/python -m multitag.bench.kmeans --out bench --tree
	$(BIN)/python -m multitag.bench.index --out bench
	$(BIN)/python -m multitag.bench.catalog --out bench
	$(BIN)/python -m multitag.bench.serve --out bench
	$(BIN)/python -m multitag.bench.study --out bench
	$(BIN)/python -m multitag.bench.shift --out bench
	$(BIN)/python -m multitag.bench.views --out bench --train-rows all --stop-rows all --shifts "mirror,JPEG q60,JPEG q30,grey background,upscale 4x,white canvas 2x"
	$(BIN)/python -m multitag.bench.train --out bench
	$(BIN)/python -m multitag.bench.unlabelled --out bench --layouts umap,tsne
	$(BIN)/python -c "from pathlib import Path; from multitag.bench.core import write_benchmarks_md; write_benchmarks_md(Path('bench'))"

## style (ruff) and the package's layer / cycle / torch-free contracts (import-linter, pyproject.toml)
lint: install
	$(BIN)/ruff check src tests research examples tools
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
