# Set-up and main commands. Each target creates .venv and installs what it needs.
#   make demo   -- the main job on the shipped default
#   make test   -- the fast test tier (the slow tier: make test-slow; CI runs both)
# TORCH selects the torch build installed before the project. The default is the CPU wheel
# (2.13.0); on a GPU machine use e.g. `make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install demo demo-bc test test-slow lint docs clean lerobot-check

$(BIN)/dpft: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/dpft

# Main job: fine-tune the shipped mixed-data peg-insert-side base (0.55 success) with DSRL-NA for 20k
# env steps, evaluating the base (N(0, I) noise and zero noise) before and the fine-tuned policy after,
# on the same 100 episodes (about 8 minutes on 2 CPU cores; TensorBoard: tensorboard --logdir runs/demo).
demo: install
	rm -rf runs/demo
	$(BIN)/dpft eval --policy shipped:metaworld-peg-insert-side-v3-mh --task metaworld:peg-insert-side-v3 --episodes 100 --envs 10
	$(BIN)/dpft eval --policy shipped:metaworld-peg-insert-side-v3-mh --task metaworld:peg-insert-side-v3 --episodes 100 --envs 10 --zero-noise
	$(BIN)/dpft finetune dsrl --config experiments/configs/demo_dsrl.yaml
	$(BIN)/dpft eval --policy runs/demo/dsrl --task metaworld:peg-insert-side-v3 --episodes 100 --envs 10

# The same pipeline from scratch: collect noisy expert demos, BC-train a diffusion policy, evaluate.
demo-bc: install
	rm -rf runs/demo_bc
	$(BIN)/dpft collect --config experiments/configs/demo_collect.yaml
	$(BIN)/dpft train-bc --config experiments/configs/demo_bc.yaml
	$(BIN)/dpft eval --policy runs/demo_bc/bc --task metaworld:push-v3 --episodes 20

test: install
	$(BIN)/pytest -q -m "not slow"

test-slow: install
	$(BIN)/pytest -q -m slow
	DPFT_FUZZ_EXAMPLES=200 $(BIN)/pytest -q -p no:cacheprovider tests/test_fuzz.py

# The docs site (MkDocs Material) into site/, warnings as errors.
docs: install
	$(BIN)/pip install --quiet -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .venv-lerobot-* runs

# The live LeRobot round trip (tests/test_lerobot_live.py) in LeRobot 0.3.3 and 0.4.4 environments
# beside the CPU torch (tests/lerobot/make_env.sh says how they avoid a CUDA download).
LEROBOT_VERSIONS := 0.3.3 0.4.4
lerobot-check: install
	for v in $(LEROBOT_VERSIONS); do PYTHON=$(PYTHON) TORCH="$(TORCH)" tests/lerobot/make_env.sh $$v .venv-lerobot-$$v; done
	DPFT_LEROBOT_ENVS="$(foreach v,$(LEROBOT_VERSIONS),$(v)=.venv-lerobot-$(v))" $(BIN)/pytest -q tests/test_lerobot_live.py
