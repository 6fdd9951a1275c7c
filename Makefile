# Two commands from a clean clone: `make run` (the main job) and `make test` (the test suite).
# Both create .venv with the tested stack on first use (scripts/ensure_venv.sh).
PY := .venv/bin/python

.PHONY: venv run test bench bench-startup format clean-data sanitize golden gpu-check gpu-check-dry-run

venv:
	@bash scripts/ensure_venv.sh

# Main job: train Mask R-CNN R18-FPN from scratch on the synthetic long-tailed default,
# evaluate, print AP / APr / APc / APf (box and mask).
run: venv
	$(PY) tools/train_net.py --config-file configs/synthetic/main.yaml $(ARGS)

# The suite in PYTEST_WORKERS processes (pytest-xdist; a test file's tests stay in one process,
# in order): 2 use both cores of a 2-core CI machine. PYTEST_WORKERS=0 runs it in this process.
PYTEST_WORKERS ?= 2
test: venv
	$(PY) -m pytest tests -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The benchmark (docs/RESULTS.md): cost of each head side by side; accuracy of the main table with
# 3 seeds (paired intervals); the Label Over-Smoothing sweep and the Meta Reweigher study from the
# same stage-1 models (seed 0, per-class intervals); the sampler prior against the dataset prior
# (3 seeds), the Meta Reweigher with it at 300 iterations (3 seeds) and a TAU sweep (seed 0); the
# logit diagnostics. About 3 hours on a quiet 2-core CPU; every part resumes where it stopped. BENCH_ARGS end every accuracy command (options,
# then KEY VALUE config overrides).
BENCH := $(PY) benchmarks/bench_accuracy.py --out output/bench_accuracy
bench: venv
	$(BENCH) --seeds 0 1 2 --methods main $(BENCH_ARGS)
	$(BENCH) --seeds 0 --methods los_sweep --baselines decoupled_softmax --report los_sweep $(BENCH_ARGS)
	$(BENCH) --seeds 0 --methods meta_study --report meta_study \
		--baselines balms_published_no_meta balms_published_no_meta_it300 \
		balms_published_no_meta_it900 $(BENCH_ARGS)
	$(BENCH) --seeds 0 1 2 --methods sampler_prior --report sampler_prior \
		--baselines softmax_rfs balanced_softmax_rfs balms_published_control $(BENCH_ARGS)
	$(BENCH) --seeds 0 1 2 --methods meta_sampler_prior --report meta_sampler_prior \
		--baselines balms_published_sampler_prior_no_meta_it300 balms_published_control_it300 \
		$(BENCH_ARGS)
	$(BENCH) --seeds 0 --methods tau_sweep --report tau_sweep \
		--baselines softmax_rfs balanced_softmax_rfs $(BENCH_ARGS)
	$(PY) benchmarks/bench_diagnostics.py --out output/bench_accuracy --seeds 0 --methods \
		softmax decoupled_softmax decoupled_balanced_softmax decoupled_los_d0.5 \
		decoupled_los_d0.9 decoupled_los_d0.9_fg balanced_softmax seesaw eqlv2 sigmoid_rfs \
		balms_published
	$(PY) benchmarks/bench_cost.py --steps 30 --out output/bench_cost

# Start-up cost at LVIS size (docs/RESULTS.md): generates LVIS-v1-size annotation files (10k and
# 100k images, no images) under datasets/lvis_like/ (650 MB) and builds each path in a fresh
# process; needs about 7 GB of memory and an hour on 2 cores.
bench-startup: venv
	$(PY) benchmarks/bench_startup.py --images 10000 100170 --rounds 2 --out output/bench_startup

# The evaluation engine's compiled core (balms_det/lvis_eval/csrc and its Cython binding) built
# with AddressSanitizer and UndefinedBehaviorSanitizer (gcc) into a temporary copy of the package,
# and the engine's tests run against it (libasan preloaded into the Python host process, leak
# detection off: Python's own allocations are not freed at exit; libstdc++ preloaded too, or
# ASan cannot intercept the C++ exceptions of the reference engine's libraries). Not part of
# `make test`; the in-place core and the installed package are left as they are, the temporary
# folder removed. See docs/EVALUATION.md.
SAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
SAN_TESTS := tests/test_eval_core.py tests/test_eval_hostile.py tests/test_eval_golden.py \
	tests/test_eval_boundary.py tests/test_fast_lvis.py
sanitize: venv
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	cp -r balms_det "$$tmp/"; rm -f "$$tmp"/balms_det/lvis_eval/_core*.so; \
	inc=$$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['include'])"); \
	ext=$$($(PY) -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))"); \
	$(PY) -m cython -3 balms_det/lvis_eval/_core.pyx -o "$$tmp/_core.c"; \
	gcc -shared -fPIC -O1 -g -D_GNU_SOURCE -ffp-contract=off $(SAN_FLAGS) -I"$$inc" \
		-Ibalms_det/lvis_eval "$$tmp/_core.c" balms_det/lvis_eval/csrc/*.c \
		-o "$$tmp/balms_det/lvis_eval/_core$$ext"; \
	repo=$$(pwd); py=$(abspath $(PY)); cd "$$tmp"; \
	export LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libstdc++.so)" \
		PYTHONPATH="$$tmp" \
		ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1; \
	$$py -c "import balms_det.lvis_eval._core as c; assert c.__file__.startswith('$$tmp'), \
		c.__file__; print('sanitized core:', c.__file__)"; \
	$$py -m pytest $(addprefix "$$repo"/,$(SAN_TESTS)) -q -p no:cacheprovider $(PYTEST_ARGS)

# The GPU check (docs/GPU.md): on a CUDA machine with Python 3.12 and PyTorch, no network, after
# scripts/prepare_gpu_check.sh DETECTRON2_SOURCE filled .gpu_check/ here: builds Detectron2,
# installs the wheels, runs every LOSS with AMP fp16/bf16, the Meta Reweigher, evaluation, the
# sync count and the LVIS-size step-time ratios; prints one table (GPU_CHECK_ARGS: e.g.
# --out DIR). gpu-check-dry-run: the same on this machine's CPU, up to the first CUDA call.
gpu-check:
	bash scripts/gpu_check.sh $(GPU_CHECK_ARGS)

gpu-check-dry-run: venv
	bash scripts/gpu_check.sh --dry-run $(GPU_CHECK_ARGS)

# black and isort at line length 100 (pyproject.toml)
format:
	$(PY) -m pip install -q black isort
	$(PY) -m isort balms_det tools benchmarks tests setup.py
	$(PY) -m black balms_det tools benchmarks tests setup.py

clean-data:
	rm -rf datasets/synthetic

# The golden outputs of the 5,000-image set (tests/golden_eval.py; the 500-image set is in the
# suite): the engine's numbers, bit for bit, against those frozen before its rewrite.
golden: venv
	BALMS_GOLDEN_LARGE=1 $(PY) -m pytest tests/test_eval_golden.py -q -p no:cacheprovider \
		-k large $(PYTEST_ARGS)
