"""End to end through the real CLI: `rpo-train model=tiny data=parity` on real vLLM and real DeepSpeed, every algorithm,
RPO on/off. The parity task gives the random tiny model rewards that differ inside groups, so every run here has
nonzero advantages, and each test checks that the policy moved."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import child_env, run_cli

pytestmark = pytest.mark.full

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ["step", "reward_mean", "accuracy", "rollout_tokens", "time_rollout", "time_reward", "time_train",
            "time_sync", "time_step", "logprob_mismatch", "sync_bytes", "peak_rss_gb", "dead_groups",
            "rollout_tokens_per_s", "train_tokens_per_s"]
SMALL = ["model=tiny", "data=parity", "trainer.eval_size=8", "algorithm.train_batch_size=4", "rollout.group_size=4",
         "learner.optim.lr=1e-3", "trainer.progress=false"]


def rpo_train(out: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_cli("rpo_core.train", *SMALL, f"trainer.output_dir={out}", *overrides, check=check)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    from rpo_core.checkpoint import complete_checkpoints

    return load_file(complete_checkpoints(out)[-1] / "hf" / "model.safetensors")


def parity_prompt_tokens(model_path: str) -> int:
    """Tokens of a parity training prompt under the tiny model's tokenizer (all have the same count)."""
    from transformers import AutoTokenizer

    from conftest import compose
    from rpo_core.data import load_problems

    problems = load_problems(compose("model=tiny", "data=parity").data, AutoTokenizer.from_pretrained(model_path))
    lengths = {len(p.prompt_ids) for p in problems.train}
    assert len(lengths) == 1, lengths
    return lengths.pop()


def assert_policy_moved(out: Path, initial_path: str) -> None:
    """Nonzero rewards varied inside groups, gradients were nonzero, and the weights changed (weight decay is 0, so
    only the policy gradient can have moved them)."""
    rows = [r for r in metrics(out)[1:] if r.get("grad_norm") is not None]
    assert rows and all(r["grad_norm"] > 0 for r in rows), [r.get("grad_norm") for r in rows]
    assert any(0 < r["correct_mean"] < 1 for r in rows)
    w0, w1 = load_file(f"{initial_path}/model.safetensors"), final_weights(out)
    assert max((w1[k] - w0[k]).abs().max().item() for k in w0) > 1e-4, "the weights did not move"


def test_two_step_grpo_run_logs_every_phase(tmp_path, tiny_model_path):
    rpo_train(tmp_path, "trainer.total_steps=2", "learner.zero_stage=2")
    assert_policy_moved(tmp_path, tiny_model_path)
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert rows[0]["accuracy"] is not None  # evaluated before training
    for r in rows[1:]:
        missing = [k for k in REQUIRED if k not in r]
        assert not missing, missing
        assert r["rollout_tokens"] > 0 and r["time_step"] > 0
        assert r["rollout_tokens_per_s"] == pytest.approx(r["rollout_tokens"] / r["time_rollout"])
        # prompt + response tokens of the step's mini-batch per second of the train phase
        trained = r["samples"] * (parity_prompt_tokens(tiny_model_path) + r["response_len_mean"])
        assert r["train_tokens_per_s"] == pytest.approx(trained / r["time_train"])
        assert r["synced_tensors"] > 0
        # fp32 vLLM and fp32 learner score the same sampled tokens almost identically
        assert 0 <= r["logprob_mismatch"] < 1e-3
    assert rows[-1]["accuracy"] is not None  # evaluated at the end
    ckpt = tmp_path / "checkpoints" / "step_000002"
    assert (ckpt / "hf" / "model.safetensors").is_file() and (ckpt / "trainer.pt").is_file()


@pytest.mark.parametrize("algorithm", ["grpo", "dr_grpo", "dapo", "rapid"])
@pytest.mark.parametrize("rpo", [False, True])
def test_every_algorithm_runs_with_and_without_rpo(tmp_path, tiny_model_path, algorithm, rpo):
    extra = ["algorithm.inference_batch_size=8"] if algorithm == "rapid" else []
    extra += ["algorithm.max_gen_batches=2", "algorithm.mini_batches_per_rollout=2"] if algorithm == "dapo" else []
    rpo_train(tmp_path, f"algorithm={algorithm}", f"rpo.enabled={str(rpo).lower()}", "trainer.total_steps=2",
              "trainer.eval_every=0", *extra)
    assert_policy_moved(tmp_path, tiny_model_path)
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2]
    if rpo:
        assert all(r["cache_hit_rate"] == 1.0 for r in rows[1:] if r.get("cache_hit_rate") is not None)
        assert all(r["prefix_tokens"] > 0 for r in rows[1:] if r["rollout_tokens"])  # RAPID generates every H steps
        assert all(r["truncate_zero_share"] == 0 for r in rows[1:] if "truncate_zero_share" in r)  # m >= 1
    if algorithm in ("rapid", "dapo"):  # one rollout feeds 2 optimizer steps (RAPID: H = 8 / 4; DAPO: mu = 2)
        assert rows[1]["rollout_tokens"] > 0 and rows[2]["rollout_tokens"] == 0
    if algorithm == "rapid":
        assert rows[2]["staleness_mean"] == 1.0
    if algorithm == "dapo":  # the second step's ratio is to the policy before the first: it is no longer 1
        assert rows[1]["ratio_max"] == pytest.approx(1.0, abs=1e-5) and rows[2]["ratio_max"] > 1.0 + 1e-4


@pytest.mark.parametrize("shared_prefix", [False, True])
def test_kl_penalty_measures_drift_from_the_reference(tmp_path, tiny_model_path, shared_prefix):
    """The reference model scores the batch like the learner: KL 0 before the first update, > 0 after it."""
    rpo_train(tmp_path, "algorithm.kl_coef=0.1", "trainer.total_steps=2", "trainer.eval_every=0",
              f"learner.shared_prefix={str(shared_prefix).lower()}")
    rows = metrics(tmp_path)
    assert abs(rows[1]["kl"]) < 1e-6 and rows[2]["kl"] > 1e-6


def test_dapo_dynamic_sampling_keeps_and_drops_groups(tmp_path, tiny_model_path):
    """Parity rewards leave some groups of 4 all-equal (P = 1/8 each): DAPO must drop those and keep the rest."""
    rpo_train(tmp_path, "algorithm=dapo", "trainer.total_steps=2", "trainer.eval_every=0",
              "algorithm.mini_batches_per_rollout=1", "algorithm.max_gen_batches=3")
    rows = [r for r in metrics(tmp_path)[1:] if "dapo_groups_kept" in r]
    assert sum(r["dapo_groups_dropped"] for r in rows) > 0 and all(r["dapo_groups_kept"] == 4 for r in rows)
    assert all(r["dead_groups"] == r["dapo_groups_dropped"] for r in rows)  # what was generated, before the filter
    assert_policy_moved(tmp_path, tiny_model_path)


@pytest.mark.parametrize("algorithm", ["grpo", "dapo"])
def test_rpo_with_a_question_drawn_twice_in_a_step(tmp_path, tiny_model_path, algorithm):
    """Two training questions and batches of four: every step draws each question twice (as DAPO's extra rounds do at
    an epoch boundary). The cache update writes one entry per question, and the run goes on."""
    rpo_train(tmp_path, f"algorithm={algorithm}", "rpo.enabled=true", "data.n_train=2", "trainer.total_steps=2",
              "trainer.eval_every=0", *(["algorithm.max_gen_batches=3"] if algorithm == "dapo" else []))
    rows = metrics(tmp_path)[1:]
    assert [r["step"] for r in rows] == [1, 2] and all(0 < r["cache_written"] <= 2 for r in rows), rows
    assert_policy_moved(tmp_path, tiny_model_path)


def test_unknown_algorithm_lists_the_registered_ones(tmp_path):
    proc = rpo_train(tmp_path, "algorithm.name=ppo", check=False)
    assert proc.returncode == 2
    assert "algorithm.name='ppo' is not one of: dapo, dr_grpo, grpo, rapid" in proc.stderr


def test_missing_model_path_says_where_it_looked(tmp_path):
    proc = rpo_train(tmp_path, "model=path", f"model.path={tmp_path / 'nope'}", check=False)
    assert proc.returncode != 0
    assert str(tmp_path / "nope") in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("script,args", [("rpo-train", ["learner.zero_stage=9"]), ("rpo-cache", ["--help"]),
                                         ("rpo-report", ["--help"])])
def test_console_scripts_are_installed_and_start(script, args):
    """The entry points of setup.py resolve to importable modules (an editable install that misses a package fails)."""
    exe = Path(sys.executable).parent / script
    if not exe.exists():
        pytest.skip(f"{script} is not installed next to {sys.executable}")
    proc = subprocess.run([str(exe), *args], cwd="/", capture_output=True, text=True, timeout=120, env=child_env())
    assert "ModuleNotFoundError" not in proc.stderr, proc.stderr[-2000:]
    if script == "rpo-train":
        assert proc.returncode == 2 and "learner.zero_stage=9" in proc.stderr, proc.stderr[-2000:]
    else:
        assert proc.returncode == 0, proc.stderr[-2000:]
