"""rpo-sft: rows in, response-only NLL, the same prompts as RL, refusals with the row number, checkpoints that resume
bit-exactly and a final/ folder transformers loads."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import ROOT, child_env, compose, fresh_world_group
from rpo_core.data import DataError, PromptTemplate
from rpo_core.learner import DeepSpeedLearner
from rpo_core.sft import (Example, batch_rows, learning_rate, mean_nll, nll_loss, publish_final, read_rows,
                          save_checkpoint, sft_template, to_batch, tokenize_rows, train_step)

QUESTIONS = ["3 + 4", "9 * 2", "8 - 5", "6 + 6", "7 * 3", "5 - 1", "2 + 9", "4 * 4"]
TEMPLATE = "What is {question}? Answer with just the number."


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def good_rows() -> list[dict]:
    """Responses of different lengths, so a per-token mean and a mean of per-row means differ."""
    return [{"prompt": TEMPLATE.replace("{question}", q), "response": f"{q} = {eval(q)}" + " Done." * (k % 3)}
            for k, q in enumerate(QUESTIONS)]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    return AutoTokenizer.from_pretrained(tiny_model_path)


@pytest.fixture(scope="module")
def examples(tokenizer, tmp_path_factory) -> list[Example]:
    path = write_rows(tmp_path_factory.mktemp("rows") / "rows.jsonl", good_rows())
    rows, _ = read_rows(path, 0.0)
    return tokenize_rows(rows, sft_template(compose("data=arithmetic").data, tokenizer), tokenizer, 512, 512, path)


def hand_nll(model, examples: list[Example]) -> float:
    """Mean over every response token of the batch of -log p(token | prompt, earlier response tokens), one row at a
    time through the model's own forward (no padding, no learner code)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples:
            ids = torch.tensor([e.prompt_ids + e.response_ids])
            logits = model(input_ids=ids).logits[0, len(e.prompt_ids) - 1 : -1].float()
            total += -F.log_softmax(logits, -1).gather(-1, torch.tensor(e.response_ids)[:, None]).sum().item()
            count += len(e.response_ids)
    return total / count


def sft_cfg(**learner):
    cfg = compose("model=tiny")  # only its learner node: the SFT run builds its optimizer from sft.optim
    node = OmegaConf.merge(cfg.learner, learner)
    optim = OmegaConf.create({"lr": 1e-3, "betas": [0.9, 0.999], "weight_decay": 0.0, "eps": 1e-8, "grad_clip": 1.0})
    return node, optim


def make_learner(path: str, **learner) -> DeepSpeedLearner:
    node, optim = sft_cfg(**learner)
    fresh_world_group()
    return DeepSpeedLearner(path, node, optim, temperature=1.0)


# ------------------------------------------------------------------------------------------------ unit: schedule
def test_learning_rate_warmup_then_constant_or_linear():
    assert [learning_rate(s, 6, 1.0, 2, "constant") for s in range(1, 7)] == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert [learning_rate(s, 6, 1.0, 2, "linear") for s in range(1, 7)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    assert [learning_rate(s, 3, 2.0, 0, "linear") for s in range(1, 4)] == pytest.approx([2.0, 4 / 3, 2 / 3])


def test_every_epoch_reads_every_row_once_in_a_seeded_order():
    epoch = lambda seed, e: [i for s in range(3 * e + 1, 3 * e + 4) for i in batch_rows(10, 4, seed, s)]  # noqa: E731
    assert sorted(epoch(0, 0)) == sorted(epoch(0, 1)) == list(range(10))
    assert [len(batch_rows(10, 4, 0, s)) for s in (1, 2, 3)] == [4, 4, 2]  # the last batch is the remainder
    assert epoch(0, 0) == epoch(0, 0) and epoch(0, 0) != epoch(0, 1) and epoch(0, 0) != epoch(1, 0)


# ---------------------------------------------------------------------------------------------------- unit: data
def test_malformed_rows_are_counted_and_skipped(tmp_path):
    rows = good_rows()[:6] + ["{not json", "[1, 2]", json.dumps({"prompt": "x"}), json.dumps({"prompt": 1, "response": "y"})]
    path = write_rows(tmp_path / "rows.jsonl", rows)
    path.write_bytes(path.read_bytes() + b'{"prompt": "\xff", "response": "z"}\n\n')  # not UTF-8; a blank line
    kept, skips = read_rows(path, 0.5)
    assert [line for line, _, _ in kept] == [1, 2, 3, 4, 5, 6]
    assert dict(skips.counts) == {"bad_json": 1, "not_an_object": 1, "missing_field": 2, "not_utf8": 1}
    assert any("rows.jsonl:9" in e for e in skips.examples["missing_field"])
    with pytest.raises(DataError, match=r"5 of 11 rows .* sft.max_bad_fraction=0.4"):
        read_rows(path, 0.4)


@pytest.mark.parametrize("row,message", [
    ({"prompt": "hi", "response": " \n"}, r"rows.jsonl:3: empty response"),
    ({"prompt": "word " * 300, "response": "ok"}, r"rows.jsonl:3: the chat-templated prompt has \d+ tokens > sft.max_prompt_tokens=64"),
    ({"prompt": "hi", "response": "word " * 100}, r"rows.jsonl:3: the response has \d+ tokens \(EOS included\) > sft.max_response_tokens=64"),
])
def test_empty_or_overlong_rows_are_refused_with_their_line(tokenizer, tmp_path, row, message):
    path = write_rows(tmp_path / "rows.jsonl", good_rows()[:2] + [row])
    rows, _ = read_rows(path, 0.0)
    with pytest.raises(DataError, match=message):
        tokenize_rows(rows, sft_template(compose("data=arithmetic").data, tokenizer), tokenizer, 64, 64, path)


def test_prompts_are_the_rl_prompts_and_responses_end_with_eos(tokenizer, examples):
    rl = PromptTemplate(compose("data=arithmetic").data, tokenizer)
    for q, e in zip(QUESTIONS, examples):
        assert e.prompt_ids == rl.ids(q)  # the RL prompt of the same question, token for token
    data = compose("data=arithmetic", "data.system_prompt=Be brief.").data
    sft = sft_template(data, tokenizer)
    assert sft.ids(TEMPLATE.replace("{question}", QUESTIONS[0])) == PromptTemplate(data, tokenizer).ids(QUESTIONS[0])
    assert "Be brief." in tokenizer.decode(sft.ids("x"))  # the task's system prompt is followed
    for row, e in zip(good_rows(), examples):
        assert e.response_ids == tuple(tokenizer(row["response"], add_special_tokens=False)["input_ids"]) + (
            tokenizer.eos_token_id,)  # what a vLLM rollout that stopped holds: the text's tokens, then EOS


def test_refused_row_exits_2_with_its_line(tmp_path):
    path = write_rows(tmp_path / "rows.jsonl", good_rows()[:2] + [{"prompt": "hi", "response": ""}])
    done = subprocess.run([sys.executable, "-m", "rpo_core.sft", "model=tiny", f"sft.train_file={path}",
                           f"sft.output_dir={tmp_path / 'out'}"], cwd=ROOT, env=child_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "rows.jsonl:3: empty response" in done.stderr and "Traceback" not in done.stderr
    missing = subprocess.run([sys.executable, "-m", "rpo_core.sft", "model=tiny", f"sft.train_file={tmp_path / 'no.jsonl'}",
                              f"sft.output_dir={tmp_path / 'out'}"], cwd=ROOT, env=child_env(), capture_output=True,
                             text=True, timeout=300)
    assert missing.returncode == 2 and "sft.train_file=" in missing.stderr and "no such file" in missing.stderr


# ------------------------------------------------------------------------------------------ unit: loss and learner
def test_loss_is_the_mean_nll_of_response_tokens_over_the_batch(dist, tiny_model_path, tokenizer, examples):
    """The learner's loss (micro-batches of one row, so the aggregation across micro-batches is exercised) equals the
    hand-computed mean over the batch's response tokens; the prompt tokens carry none of it."""
    learner = make_learner(tiny_model_path, micro_batch_size=1)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    expected = hand_nll(reference, examples)
    per_row_mean = sum(hand_nll(reference, [e]) for e in examples) / len(examples)
    assert abs(expected - per_row_mean) > 1e-3  # the two aggregations differ on these rows
    pad = tokenizer.pad_token_id
    assert mean_nll(learner, examples, pad) == pytest.approx(expected, rel=1e-5)
    record = train_step(learner, examples, list(range(len(examples))), pad, 1e-3, rank=0, world_size=1)
    assert record["loss"] == pytest.approx(expected, rel=1e-5)  # the step's loss, before its update
    assert mean_nll(learner, examples, pad) < expected  # and the update lowered it


def test_final_folder_loads_and_holds_the_learner_weights(dist, tiny_model_path, tokenizer, examples, tmp_path):
    learner = make_learner(tiny_model_path)
    before = {n: t.clone() for n, t in learner.full_weights()}
    learner.train_step(to_batch(examples, tokenizer.pad_token_id), nll_loss, token_level=True)
    weights = dict(learner.full_weights())
    assert any(not torch.equal(before[n], t) for n, t in weights.items())  # the step moved them
    ckpt = save_checkpoint(learner, tokenizer, tmp_path, 1, {"rows": 8, "batch_size": 8, "seed": 0}, keep_last=1)
    final = publish_final(ckpt, tmp_path)
    assert not any(p.name.startswith(".tmp") for p in tmp_path.rglob("*"))
    model = AutoModelForCausalLM.from_pretrained(final)
    loaded = dict(model.named_parameters())
    assert loaded.keys() == weights.keys()
    for name, t in weights.items():
        assert torch.equal(loaded[name].data, t), name
    assert hand_nll(model, examples) == pytest.approx(mean_nll(learner, examples, tokenizer.pad_token_id), rel=1e-5)
    assert AutoTokenizer.from_pretrained(final).chat_template == tokenizer.chat_template


# --------------------------------------------------------------------------------------------------- end to end
def run_sft(out: Path, train_file: Path, *overrides: str, env: dict | None = None, wait: bool = True):
    cmd = [sys.executable, "-m", "rpo_core.sft", "model=tiny", f"sft.train_file={train_file}", f"sft.output_dir={out}",
           "sft.batch_size=3", "sft.epochs=3", "sft.lr=3e-3", "sft.warmup_steps=2", "progress=false", *overrides]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env or child_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
    done = subprocess.run(cmd, cwd=ROOT, env=env or child_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def train_file(tmp_path_factory) -> Path:
    return write_rows(tmp_path_factory.mktemp("e2e") / "rows.jsonl", good_rows())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, train_file) -> Path:
    out = tmp_path_factory.mktemp("e2e") / "whole"
    run_sft(out, train_file)
    return out


@pytest.mark.full
def test_sft_lowers_the_loss_of_its_rows(uninterrupted, tiny_model_path, examples):
    rows = metrics(uninterrupted)
    assert [r["step"] for r in rows] == list(range(1, 10))  # 3 epochs of ceil(8 / 3) steps
    assert [r["epoch"] for r in rows] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert {"loss", "tokens", "tokens_per_s", "lr", "grad_norm", "time_step"} <= rows[0].keys()
    assert sum(r["tokens"] for r in rows[:3]) == sum(len(e.response_ids) for e in examples)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    tuned = AutoModelForCausalLM.from_pretrained(uninterrupted / "final", dtype=torch.float32)
    before, after = hand_nll(base, examples), hand_nll(tuned, examples)
    assert after < before - 1.0, (before, after)


@pytest.mark.full
def test_a_killed_run_resumes_bit_exactly(uninterrupted, train_file, tiny_model_path, tmp_path):
    """Killed after step 5 (checkpoint at step 4), resumed with sft.resume=auto: the same final weights and the same
    per-step losses as the run that was never stopped."""
    out = tmp_path / "killed"
    flag = tmp_path / "paused"
    proc = run_sft(out, train_file, "sft.save_every=2", env=child_env(RPO_PAUSE_AT="sft_step:5", RPO_PAUSE_FILE=str(flag)),
                   wait=False)
    deadline = time.time() + 300
    while not flag.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "the run never reached step 5"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "final").exists() and [r["step"] for r in metrics(out)] == [1, 2, 3, 4, 5]
    run_sft(out, train_file, "sft.save_every=2", "sft.resume=auto")
    whole, resumed = load_file(uninterrupted / "final" / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    start = load_file(Path(tiny_model_path) / "model.safetensors")
    assert any(not torch.equal(start[k], whole[k]) for k in whole)  # training moved the weights
    drop = ("time_step", "tokens_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in metrics(out)] == \
           [{k: v for k, v in r.items() if k not in drop} for r in metrics(uninterrupted)]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000008", "step_000009"]  # keep_last=2



@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_scheduled_lr_is_the_one_the_optimizer_steps_with(dist, tiny_model_path, tokenizer, examples, dtype):
    """set_lr reaches the optimizer DeepSpeed wraps for each dtype: lr 0 leaves the weights as they were."""
    learner = make_learner(tiny_model_path, dtype=dtype)
    before = {n: t.clone() for n, t in learner.full_weights()}
    rows = list(range(len(examples)))
    record = train_step(learner, examples, rows, tokenizer.pad_token_id, 0.0, rank=0, world_size=1)
    assert record["lr"] == learner.engine.get_lr()[0] == 0.0
    assert all(torch.equal(before[n], t) for n, t in learner.full_weights())
    train_step(learner, examples, rows, tokenizer.pad_token_id, 1e-3, rank=0, world_size=1)
    assert learner.engine.get_lr()[0] == 1e-3
    assert any(not torch.equal(before[n], t) for n, t in learner.full_weights())
