"""rpo-sft: supervised warm start before RL, with the RL run's own learner and prompt format.

    read rows -> tokenize (RL chat template, response + EOS) -> for each step: batch -> lr -> learner step -> log
    -> checkpoint -> final/ (a Hugging Face folder: `rpo-train model=path model.path=<output_dir>/final`)

The loss is the mean NLL of the response tokens over the whole optimizer batch. The data order is a seeded
permutation per epoch, so the step number alone says where the data stands (a resume continues bit-exactly)."""
from __future__ import annotations

import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import hydra
import torch
import torch.distributed as dist
from omegaconf import MISSING, DictConfig, OmegaConf
from tqdm import tqdm
from transformers import AutoTokenizer

from algorithms.core import aggregate_loss
from rpo_core.checkpoint import (CheckpointError, fsync_dir, fsync_tree, checkpoint_root, complete_checkpoints,
                                 is_complete, resolve_resume, rng_state, set_rng_state, PREFIX)
from rpo_core.common.batching import TrainBatch, to_train_batch
from rpo_core.common.checks import ConfigError, between, one_of, opt, typed
from rpo_core.common.types import RolloutBatch, Sample
from rpo_core.common.util import exit_2_on, step_generator
from rpo_core.components import seed_everything, setup_logging
from rpo_core.data import DataError, PromptTemplate, Skips, jsonl_objects
from rpo_core.distributed import configure_environment, init_distributed
from rpo_core.faults import pause_point
from rpo_core.learner import DeepSpeedLearner
from rpo_core.metrics import Console, MetricsLogger
from rpo_core.models import prepare_model
from rpo_core.schema import (DATA_SOURCES, DEVICES, MODEL_SOURCES, ArithmeticData, DataConfig, GGUFModel, LearnerConfig,
                             LoggerConfig, ModelConfig, OptimConfig, pick)
from rpo_core.train import USER_ERRORS

log = logging.getLogger("rpo")
LR_SCHEDULES = ("constant", "linear")


@dataclass(frozen=True)
class Example:
    """One training row, tokenized: the chat-templated prompt and the response ending in EOS."""

    line: int  # line number in sft.train_file (for messages)
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]


# =====================================================================================================================
# config
# =====================================================================================================================
@dataclass
class SFTOptions:
    """conf/sft.yaml's `sft` node, whose comments say what each option does."""

    train_file: str = MISSING
    output_dir: str = "outputs/sft/${now:%Y-%m-%d}/${now:%H-%M-%S}"
    epochs: int = opt(1, between(1))
    batch_size: int = opt(8, between(1))
    lr: float = opt(1.0e-4, between(0.0, strict_low=True))
    warmup_steps: int = opt(0, between(0))
    lr_schedule: str = opt("linear", one_of(LR_SCHEDULES))
    max_prompt_tokens: int = opt(512, between(1))
    max_response_tokens: int = opt(512, between(1))
    max_bad_fraction: float = opt(0.1, between(0.0, 1.0))
    save_every: int = opt(0, between(0))
    keep_last: int = opt(2, between(1))
    resume: Optional[str] = None  # null | auto | a checkpoint folder
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr="${sft.lr}", betas=[0.9, 0.999]))


@dataclass
class SFTConfig:
    """conf/sft.yaml."""

    seed: int = opt(0, between(0))
    device: str = opt("cpu", one_of(DEVICES))
    progress: bool = True
    sft: SFTOptions = field(default_factory=SFTOptions)
    model: ModelConfig = field(default_factory=GGUFModel)
    data: DataConfig = field(default_factory=ArithmeticData)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def validate_sft_config(cfg: DictConfig) -> DictConfig:
    """The config typed by its schema (`cfg` itself unchanged), or ConfigError on the first invalid option."""
    cfg = typed(cfg, SFTConfig(model=MODEL_SOURCES[pick(cfg, "model.source", MODEL_SOURCES)](),
                               data=DATA_SOURCES[pick(cfg, "data.source", DATA_SOURCES)]()))
    s = cfg.sft
    if not Path(s.train_file).expanduser().is_file():
        raise ConfigError(f"sft.train_file={s.train_file!r}: no such file (JSONL rows {{\"prompt\": ..., \"response\": ...}})")
    if s.max_prompt_tokens + s.max_response_tokens > cfg.model.max_model_len:
        raise ConfigError(f"sft.max_prompt_tokens + sft.max_response_tokens = {s.max_prompt_tokens + s.max_response_tokens} "
                          f"exceeds model.max_model_len={cfg.model.max_model_len}")
    if s.resume not in (None, "auto") and not is_complete(s.resume):
        raise ConfigError(f"sft.resume={s.resume!r} must be null, auto or the path of a complete checkpoint "
                          f"(a folder holding trainer.pt)")
    if cfg.learner.backend == "nccl" and cfg.device == "cpu":
        raise ConfigError("learner.backend='nccl' needs device=cuda; with device=cpu use learner.backend=gloo")
    if cfg.learner.shared_prefix:
        raise ConfigError("learner.shared_prefix shares a prompt among a group's samples; SFT rows come one per "
                          "prompt: set learner.shared_prefix=false")
    return cfg


# =====================================================================================================================
# data
# =====================================================================================================================
def read_rows(path: Path, max_bad_fraction: float) -> tuple[list[tuple[int, str, str]], Skips]:
    """(line, prompt, response) of every well-formed row; malformed rows are counted by reason and skipped
    (rpo_core.data's reasons), and more than `max_bad_fraction` of them is a DataError."""
    skips, rows = Skips(), []
    objects, n_lines = jsonl_objects(path, skips)
    for lineno, where, obj in objects:
        if not (isinstance(obj.get("prompt"), str) and isinstance(obj.get("response"), str)):
            skips.add("missing_field", f"{where}: needs string fields 'prompt' and 'response'")
            continue
        rows.append((lineno, obj["prompt"], obj["response"]))
    if not rows:
        raise DataError(f"sft.train_file={path} holds no usable rows ({n_lines} lines, skipped {dict(skips.counts)})")
    if skips.bad_rows > max_bad_fraction * n_lines:
        raise DataError(f"{skips.bad_rows} of {n_lines} rows of {path} are malformed (more than sft.max_bad_fraction="
                        f"{max_bad_fraction}): {dict(skips.counts)}; examples: {skips.examples}")
    return rows, skips


def sft_template(data_cfg, tokenizer) -> PromptTemplate:
    """The RL task's chat wrapping (data.system_prompt, data.use_chat_template) around a prompt that already is the
    user message: SFT and RL prompts are then the same tokens."""
    return PromptTemplate(OmegaConf.create({"prompt_template": "{question}", "system_prompt": data_cfg.system_prompt,
                                            "use_chat_template": data_cfg.use_chat_template}), tokenizer)


def tokenize_rows(rows, template: PromptTemplate, tokenizer, max_prompt: int, max_response: int,
                  path: Path) -> list[Example]:
    """Each row as an Example; the response ends with EOS, as a vLLM rollout that stopped does (it keeps the EOS
    token). An empty response or an over-long row is a DataError naming the line: a silent skip would hide it."""
    eos = tokenizer.eos_token_id
    examples = []
    for line, prompt, response in rows:
        where = f"{path}:{line}"
        if not response.strip():
            raise DataError(f"{where}: empty response (the model would learn to stop at once)")
        prompt_ids = template.ids(prompt)
        if len(prompt_ids) > max_prompt:
            raise DataError(f"{where}: the chat-templated prompt has {len(prompt_ids)} tokens > "
                            f"sft.max_prompt_tokens={max_prompt}")
        response_ids = tuple(tokenizer(response, add_special_tokens=False)["input_ids"]) + (eos,)
        if len(response_ids) > max_response:
            raise DataError(f"{where}: the response has {len(response_ids)} tokens (EOS included) > "
                            f"sft.max_response_tokens={max_response}")
        examples.append(Example(line, prompt_ids, response_ids))
    return examples


def load_examples(cfg: DictConfig, tokenizer, console: Console) -> list[Example]:
    path = Path(cfg.sft.train_file).expanduser()
    rows, skips = read_rows(path, cfg.sft.max_bad_fraction)
    if skips.counts:
        log.warning("sft data %s: skipped %s, e.g. %s", path, dict(skips.counts), skips.examples)
        console.say(f"sft data: skipped {sum(skips.counts.values())} malformed rows {dict(skips.counts)} (see train.log)")
    template = sft_template(cfg.data, tokenizer)
    examples = tokenize_rows(rows, template, tokenizer, cfg.sft.max_prompt_tokens, cfg.sft.max_response_tokens, path)
    console.say(f"sft data: {len(examples)} rows, {sum(len(e.response_ids) for e in examples)} response tokens")
    return examples


# =====================================================================================================================
# steps
# =====================================================================================================================
def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    return math.ceil(n_rows / batch_size)


def batch_rows(n_rows: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Row numbers of optimizer step `step` (1-based): epoch e = (step-1) // steps_per_epoch reads a permutation
    seeded by (seed, e) in order, batch_size rows per step."""
    per_epoch = steps_per_epoch(n_rows, batch_size)
    epoch, k = divmod(step - 1, per_epoch)
    order = torch.randperm(n_rows, generator=step_generator(seed, epoch, "sft_order"))
    return order[k * batch_size : (k + 1) * batch_size].tolist()


def learning_rate(step: int, total: int, lr: float, warmup: int, schedule: str) -> float:
    """lr * s/W for s <= W; then lr (constant) or lr * (S - s + 1)/(S - W) (linear), s = step, S = total, W = warmup."""
    if step <= warmup:
        return lr * step / warmup
    return lr if schedule == "constant" else lr * (total - step + 1) / (total - warmup)


def to_batch(examples: list[Example], pad_id: int) -> TrainBatch:
    """The rows as the learner's batch (groups of one; loss_mask = response tokens)."""
    samples = [Sample(uid=str(e.line), prompt_ids=list(e.prompt_ids), response_ids=list(e.response_ids),
                      behavior_logprobs=[0.0] * len(e.response_ids)) for e in examples]
    return to_train_batch(RolloutBatch(samples=samples, group_size=1, rewards=[0.0] * len(samples)), pad_id, step=1)


def nll_loss(logp: torch.Tensor, tb: TrainBatch) -> tuple[torch.Tensor, dict]:
    """-sum_it m log p / sum_it m over the micro-batch `tb`; the learner weights it by its token share
    (token_level=True), so the step's loss is the mean NLL over every response token of the batch."""
    loss = aggregate_loss(-logp, tb.loss_mask, "token-mean")
    return loss, {"loss": loss.detach()}


def set_lr(learner: DeepSpeedLearner, lr: float) -> None:
    for group in learner.engine.optimizer.param_groups:
        group["lr"] = lr


def train_step(learner: DeepSpeedLearner, examples: list[Example], rows: list[int], pad_id: int, lr: float,
               rank: int, world_size: int) -> dict:
    """One optimizer step on `rows` (each rank takes every world_size-th of them)."""
    set_lr(learner, lr)
    tb = to_batch([examples[i] for i in rows[rank::world_size]], pad_id)
    result = learner.train_step(tb, nll_loss, token_level=True)
    return {"loss": result.stats.get("loss"), "lr": lr, "grad_norm": result.grad_norm,
            "update_skipped": float(result.skipped)}


@torch.no_grad()
def mean_nll(learner: DeepSpeedLearner, examples: list[Example], pad_id: int) -> float:
    """Mean NLL of the examples' response tokens under the learner's current weights (no update)."""
    tb = to_batch(examples, pad_id)
    logp = learner.logprobs(tb)
    return float(aggregate_loss(-logp, tb.loss_mask, "token-mean"))


# =====================================================================================================================
# checkpoints
# =====================================================================================================================
def save_checkpoint(learner: DeepSpeedLearner, tokenizer, out: Path, step: int, run: dict, keep_last: int) -> Path:
    """<out>/checkpoints/step_NNNNNN/ {hf/, deepspeed/, trainer.pt}, written under a temporary name and renamed when
    complete (trainer.pt last: rpo_core.checkpoint.is_complete)."""
    final = checkpoint_root(out) / f"{PREFIX}{step:06d}"
    tmp = final.with_name(f".tmp-{final.name}")
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    save_hf(learner, tokenizer, tmp / "hf")
    learner.save(str(tmp / "deepspeed"))
    if dist.get_rank() == 0:
        torch.save({"step": step, **run, "rng": rng_state()}, tmp / "trainer.pt")
        publish(tmp, final)
        for old in complete_checkpoints(out)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def save_hf(learner: DeepSpeedLearner, tokenizer, folder: Path) -> None:
    """The learner's full weights with the model's config and the tokenizer: a folder transformers, vLLM and
    `rpo-train model=path` load. Every rank gathers (ZeRO-3); rank 0 writes."""
    weights = dict(learner.full_weights())
    if dist.get_rank() == 0:
        learner.engine.module.save_pretrained(folder, state_dict=weights)
        tokenizer.save_pretrained(folder)


def publish(tmp: Path, final: Path) -> None:
    """`tmp` becomes `final` in one rename (replacing an older one), flushed to disk first."""
    fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.replace(final)
    fsync_dir(final.parent)


def restore(learner: DeepSpeedLearner, path: Path, run: dict) -> int:
    """Load a checkpoint's learner state and RNG; the step it ended. The rows, batch size and seed must be this
    run's: the step number is the data position only for the same data order."""
    saved = torch.load(path / "trainer.pt", weights_only=False)
    differs = {k: (saved.get(k), v) for k, v in run.items() if saved.get(k) != v}
    if differs:
        raise CheckpointError(f"checkpoint {path} was written by a different run (checkpoint, now): {differs}")
    learner.load(str(path / "deepspeed"))
    set_rng_state(saved["rng"])
    return saved["step"]


def publish_final(checkpoint: Path, out: Path) -> Path:
    """<out>/final: the last checkpoint's Hugging Face folder, copied and renamed into place."""
    final = out / "final"
    if dist.get_rank() == 0:
        tmp = out / ".tmp-final"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(checkpoint / "hf", tmp)
        publish(tmp, final)
    dist.barrier()
    return final


# =====================================================================================================================
# the run
# =====================================================================================================================
def sft(cfg: DictConfig) -> Path:
    """Train; return the final model folder."""
    cfg = validate_sft_config(cfg)
    out = Path(cfg.sft.output_dir)
    setup_logging(out)
    seed_everything(cfg.seed)
    rank, world_size = init_distributed(cfg.learner.backend)
    console = Console(cfg.progress and rank == 0)
    model_path = prepare_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = load_examples(cfg, tokenizer, console)
    if cfg.sft.batch_size < world_size:
        raise ConfigError(f"sft.batch_size={cfg.sft.batch_size} gives some of the {world_size} ranks no rows")
    learner = DeepSpeedLearner(model_path, cfg.learner, cfg.sft.optim, temperature=1.0, world_size=world_size)
    run = {"rows": len(examples), "batch_size": cfg.sft.batch_size, "seed": cfg.seed}
    total = cfg.sft.epochs * steps_per_epoch(len(examples), cfg.sft.batch_size)
    path = resolve_resume(cfg.sft.resume, out)
    done = restore(learner, path, run) if path else 0
    logger = MetricsLogger(out, cfg.logger, OmegaConf.to_container(cfg, resolve=True)) if rank == 0 else None
    if rank == 0:
        OmegaConf.save(cfg, out / "config.yaml", resolve=True)
        logger.truncate_after(done)  # no step logged twice
    if path:
        console.say(f"resumed from {path} at step {done} of {total}")
    try:
        checkpoint = train_loop(cfg, learner, tokenizer, examples, pad_id, run, done, total, logger, rank, world_size)
    finally:
        if logger is not None:
            logger.close()
    final = publish_final(checkpoint or path, out)
    console.say(f"final model: {final}")
    return final


def train_loop(cfg, learner, tokenizer, examples, pad_id, run, done, total, logger, rank, world_size):
    """Steps done+1 .. total; returns the last checkpoint written (None if no step ran)."""
    out, s, checkpoint = Path(cfg.sft.output_dir), cfg.sft, None
    per_epoch = steps_per_epoch(len(examples), s.batch_size)
    for step in tqdm(range(done + 1, total + 1), desc="sft", unit="step", file=sys.stdout, dynamic_ncols=True,
                     disable=not (cfg.progress and rank == 0), initial=done, total=total):
        start = time.perf_counter()
        rows = batch_rows(len(examples), s.batch_size, cfg.seed, step)
        lr = learning_rate(step, total, s.lr, s.warmup_steps, s.lr_schedule)
        record = train_step(learner, examples, rows, pad_id, lr, rank, world_size)
        elapsed = time.perf_counter() - start
        tokens = sum(len(examples[i].response_ids) for i in rows)
        if logger is not None:
            logger.log({"step": step, "epoch": (step - 1) // per_epoch, **record, "tokens": tokens,
                        "tokens_per_s": tokens / elapsed, "time_step": elapsed})
        if (s.save_every and step % s.save_every == 0) or step == total:
            checkpoint = save_checkpoint(learner, tokenizer, out, step, run, s.keep_last)
        pause_point("sft_step", step)  # crash tests: step done, logged and maybe saved; the next not begun
    return checkpoint


# An absolute path: the config folder sits beside the packages, whether run as `rpo-sft` or `python -m`.
@hydra.main(version_base=None, config_path=str(Path(__file__).resolve().parents[1] / "conf"), config_name="sft")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        validate_sft_config(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    configure_environment(cfg.device)
    exit_2_on(USER_ERRORS, sft, cfg)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
