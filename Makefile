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

# The benchmark (docs/RESULTS.md): cost of each head side by side; accuracy of the main table with
# 3 seeds (paired intervals); the Label Over-Smoothing sweep and the Meta Reweigher study from the
# same stage-1 models (seed 0, per-class intervals); the logit diagnostics. About 2 hours on a
# 2-core CPU; every part resumes where it stopped. BENCH_ARGS end every accuracy command (options,
# then KEY VALUE config overrides).
BENCH := $(PY) benchmarks/bench_accuracy.py --out output/bench_accuracy
bench: venv
	$(BENCH) --seeds 0 1 2 --methods main $(BENCH_ARGS)
	$(BENCH) --seeds 0 --methods los_sweep --baselines decoupled_softmax --report los_sweep $(BENCH_ARGS)
	$(BENCH) --seeds 0 --methods meta_study --report meta_study \
		--baselines balms_published_no_meta balms_published_no_meta_it300 \
		balms_published_no_meta_it900 $(BENCH_ARGS)
	$(PY) benchmarks/bench_diagnostics.py --out output/bench_accuracy --seeds 0 --methods \
		softmax decoupled_softmax decoupled_balanced_softmax decoupled_los_d0.5 \
		decoupled_los_d0.9 decoupled_los_d0.9_fg balanced_softmax seesaw eqlv2 sigmoid_rfs \
		balms_published
	$(PY) benchmarks/bench_cost.py --steps 30 --out output/bench_cost

# black and isort at line length 100 (pyproject.toml)
format:
	$(PY) -m pip install -q black isort
	$(PY) -m isort balms_det tools benchmarks tests setup.py
	$(PY) -m black balms_det tools benchmarks tests setup.py

clean-data:
	rm -rf datasets/synthetic
