# Two commands from a clean clone: `make run` (the main job) and `make test` (the test suite).
# Both create .venv with the tested stack on first use (scripts/ensure_venv.sh).
PY := .venv/bin/python

.PHONY: venv run test smoke clean-data

venv:
	@bash scripts/ensure_venv.sh

# Main job: train Mask R-CNN R18-FPN from scratch on the synthetic long-tailed default,
# evaluate, print AP / APr / APc / APf (box and mask).
run: venv
	$(PY) tools/train_net.py --config-file configs/synthetic/main.yaml $(ARGS)

test: venv
	$(PY) -m pytest tests -q $(PYTEST_ARGS)

clean-data:
	rm -rf datasets/synthetic
