# Two commands do all set-up on a fresh machine (see README):
#   make demo   compress a sample archive and rehydrate it again (local folders, local Ray, no servers)
#   make test   run the test suite (starts its own SeaweedFS S3, local Ray and Prefect harness)
#   make test-fast   the tests that need none of those services (under 3 minutes on 2 cores)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv test test-fast demo eval bench clean

$(BIN)/taid: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: pip then takes the local CPU build instead of a multi-GB CUDA one
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $(BIN)/taid

venv: $(BIN)/taid

test: venv
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not services"

demo: venv
	$(BIN)/python -m flows.demo

eval: venv
	$(BIN)/taid eval --model taid-x2 --data tests/data/Set5
	$(BIN)/taid eval --model taid-x4 --data tests/data/Set5

# every benchmark, each writing JSON + Markdown (+ PNG) under benchmarks/results/ (about an hour on 2 cores)
bench: venv
	$(BIN)/python benchmarks/quality.py
	$(BIN)/python benchmarks/rate_distortion.py
	$(BIN)/python benchmarks/fidelity.py
	$(BIN)/python benchmarks/residual_coders.py
	$(BIN)/python benchmarks/inference_cost.py
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/throughput_archive.py
	$(BIN)/python benchmarks/utilization.py
	$(BIN)/python benchmarks/measure.py
	$(BIN)/python benchmarks/perceptual.py --rd-images 4
	$(BIN)/python benchmarks/band_coders.py
	$(BIN)/python benchmarks/rehydrate_latency.py
	$(BIN)/python benchmarks/finetune_domain.py
	$(BIN)/python benchmarks/serve_latency.py
	$(BIN)/python benchmarks/scale.py --keys 1000000 --keys 10000000 --seaweedfs 100000

clean:
	rm -rf $(VENV) .pytest_cache runs
