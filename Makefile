# Two commands from a clean clone: `make run` (the main job) and `make test` (the test suite).
# Both create .venv with the tested stack on first use (scripts/ensure_venv.sh).
PY := .venv/bin/python

.PHONY: venv run test bench format clean-data

venv:
	@bash scripts/ensure_venv.sh

# Main job: train Mask R-CNN R18-FPN from scratch on the synthetic long-tailed default,
# evaluate, print AP / APr / APc / APf (box and mask).
run: venv
	$(PY) tools/train_net.py --config-file configs/synthetic/main.yaml $(ARGS)

test: venv
	$(PY) -m pytest tests -q $(PYTEST_ARGS)

# The benchmark (README "Results"): cost of each head, then accuracy of every method with 2 seeds
# (about 2 hours on a 2-core CPU; resumable). BENCH_ARGS go to the accuracy part.
bench: venv
	$(PY) benchmarks/bench_cost.py --steps 30 --out output/bench_cost
	$(PY) benchmarks/bench_accuracy.py --seeds 0 1 --out output/bench_accuracy $(BENCH_ARGS)

# black and isort at line length 100 (pyproject.toml)
format:
	$(PY) -m pip install -q black isort
	$(PY) -m isort balms_det tools benchmarks tests setup.py
	$(PY) -m black balms_det tools benchmarks tests setup.py

clean-data:
	rm -rf datasets/synthetic
