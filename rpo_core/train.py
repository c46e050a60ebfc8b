"""rpo-train: the RL loop. Each optimizer step runs the phases in order:

    rollout -> reward -> (advantage + update) -> sync -> cache -> eval -> log -> checkpoint

One rollout may feed several optimizer steps (RAPID's H mini-batches, `pending` below)."""
from __future__ import annotations

import hashlib
import logging
import sys
import time
from collections import deque
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from rpo_core.config import ConfigError, validate_config
from rpo_core.distributed import configure_environment
from rpo_core.faults import pause_point

log = logging.getLogger("rpo")


def _user_errors() -> tuple[type[BaseException], ...]:
    from cache import CacheError
    from rpo_core.checkpoint import CheckpointError
    from rpo_core.data import DataError
    from rpo_core.models import ModelNotFoundError
    from rpo_core.registry import UnknownNameError

    return (CacheError, CheckpointError, DataError, ModelNotFoundError, UnknownNameError, ConfigError)


# =====================================================================================================================
# phases
# =====================================================================================================================
def request_seed(seed: int, step: int, uid: str, salt: str) -> int:
    """Per-request sampling seed from (run seed, step, question): the same samples whatever the batch composition."""
    return int(hashlib.sha1(f"{seed}:{step}:{uid}:{salt}".encode()).hexdigest()[:8], 16)


def rollout_phase(run, problems, step: int, salt: str):
    """G samples per problem; under RPO, G suffixes after the kept prefix of each cached response."""
    from rollout.base import GenerationRequest
    from rpo_core.types import RolloutBatch, Sample

    cfg, G = run.cfg, run.cfg.rollout.group_size
    plans = run.rpo.plan(problems, run.step_generator(step, "truncate:" + salt)) if run.rpo else [None] * len(problems)
    requests, where = [], []
    for k, (p, plan) in enumerate(zip(problems, plans)):
        prefix = plan.prefix_ids if plan else []
        budget = plan.budget if plan else cfg.rollout.max_new_tokens
        if budget > 0:
            where.append(k)
            requests.append(GenerationRequest(list(p.prompt_ids) + prefix, G, budget, request_seed(cfg.seed, step, p.uid, salt)))
    generations = dict(zip(where, run.engine.generate(requests, cfg.rollout.temperature))) if requests else {}
    pause_point("rollout", step)
    samples, stats = [], {"rollout_tokens": 0, "prefix_tokens": 0, "cache_hits": 0, "truncated_tokens": 0}
    for k, (p, plan) in enumerate(zip(problems, plans)):
        prefix_ids, prefix_lp = (plan.prefix_ids, plan.prefix_logprobs) if plan else ([], [])
        if plan and plan.hit:
            stats["cache_hits"] += 1
            stats["truncated_tokens"] += plan.truncated
        for i in range(G):
            gen = generations[k][i] if k in generations else None
            new_ids, new_lp = (gen.token_ids, gen.logprobs) if gen else ([], [])
            finished = gen.finished if gen else bool(plan and plan.cached_finished)
            samples.append(Sample(
                uid=p.uid, prompt_ids=list(p.prompt_ids), response_ids=prefix_ids + new_ids,
                behavior_logprobs=prefix_lp + new_lp, prefix_len=len(prefix_ids), finished=finished,
                policy_step=step - 1, prefix_policy_step=plan.prefix_policy_step if plan else step - 1,
            ))
            stats["rollout_tokens"] += len(new_ids)
            stats["prefix_tokens"] += len(prefix_ids)
    texts = run.tokenizer.batch_decode([s.response_ids for s in samples], skip_special_tokens=True)
    for s, text in zip(samples, texts):
        s.text = text  # for the reward only; the token ids above are what is trained on
    return RolloutBatch(samples=samples, group_size=G, golds=[p.gold for p in problems]), stats


def reward_phase(run, batch) -> dict:
    """Correctness of the whole response (prefix + suffix) against the gold answer, plus configured shaping terms."""
    from rewards import compose_rewards

    G = batch.group_size
    golds = [gold for gold in batch.golds for _ in range(G)]
    scored = run.scorer.score([s.text for s in batch.samples], golds)
    lengths = [len(s.response_ids) for s in batch.samples]
    batch.rewards, batch.reward_parts = compose_rewards(scored.correct, scored.has_answer, lengths, G, run.cfg.reward)
    batch.correct = [float(c) for c in scored.correct]
    return dict(scored.stats)


def generate_and_score(run, n_prompts: int, step: int, stats: dict):
    """n prompts from the data order -> rewarded groups; accumulates rollout/reward times and counters in `stats`."""
    problems = run.sampler.next(n_prompts)
    stats["_rounds"] = stats.get("_rounds", 0) + 1
    with run.timer("rollout"):
        batch, rstats = rollout_phase(run, problems, step, salt=f"r{stats['_rounds']}")
    with run.timer("reward"):
        rstats.update(reward_phase(run, batch))
    for k, v in rstats.items():
        stats[k] = stats.get(k, 0) + v
    stats["_questions"] = stats.get("_questions", 0) + len(problems)
    return batch


def collect_phase(run, step: int, stats: dict) -> list:
    """Rank 0 generates and scores (the algorithm decides how many prompts and which groups to keep) and cuts the
    batch into mini-batches, one per optimizer step; every rank receives the same list."""
    minibatches = None
    if run.rank == 0:
        batch, algo_stats = run.algorithm.collect(lambda n: generate_and_score(run, n, step, stats))
        stats.update(algo_stats)
        minibatches = run.algorithm.split(batch)
    if run.world_size > 1:
        import torch.distributed as dist

        box = [minibatches]
        dist.broadcast_object_list(box, src=0)
        minibatches = box[0]
    return minibatches


def update_phase(run, batch, step: int) -> dict:
    """Advantages and one optimizer step of the algorithm's loss over `batch`."""
    from rpo_core.batching import to_train_batch

    tb = to_train_batch(batch, run.pad_id, step, prefix_in_loss=run.cfg.rpo.prefix_in_loss)
    if run.reference is not None:
        tb.ref_logp = run.reference.logprobs(tb)
    tb = run.algorithm.prepare(tb)
    stats = run.learner.train_step(tb, run.algorithm.loss)
    pause_point("update", step)  # weights updated; engine, cache, metrics and checkpoint not yet
    logp = stats.pop("_logp")
    # vLLM vs learner on the freshly generated tokens, before this update
    fresh = tb.response_mask * (1 - tb.prefix_mask)
    stats["logprob_mismatch"] = ((logp - tb.behavior_logp).abs() * fresh).sum() / fresh.sum().clamp(min=1)
    stats["response_len_mean"] = tb.response_mask.sum(1).mean()
    stats["advantage_abs_mean"] = tb.advantages.abs().mean()
    return stats


def sync_phase(run, step: int) -> dict:
    """Copy the learner's weights into the rollout engine (all ranks gather under ZeRO-3; rank 0 loads)."""
    return run.sync_engine(step)


def cache_phase(run, batch, step: int) -> dict:
    written = run.rpo.update(batch, step, run.step_generator(step, "cache")) if run.rpo else 0
    return {"cache_written": written}


def eval_phase(run, step: int) -> dict:
    """Greedy accuracy on the held-out problems (fixed order, temperature 0)."""
    from rollout.base import GenerationRequest

    problems = run.eval_problems
    requests = [GenerationRequest(list(p.prompt_ids), 1, run.cfg.trainer.eval_max_new_tokens, 0) for p in problems]
    gens = run.engine.generate(requests, temperature=0.0)
    texts = [g[0].text for g in gens]
    scored = run.scorer.score(texts, [p.gold for p in problems])
    return {"accuracy": sum(scored.correct) / max(1, len(problems)),
            "eval_response_len": sum(len(g[0].token_ids) for g in gens) / max(1, len(gens))}


# =====================================================================================================================
# the loop
# =====================================================================================================================
def train(cfg: DictConfig) -> dict:
    from rpo_core.run import Run

    run = Run.build(cfg)
    try:
        return _train(run)
    finally:
        run.close()


def _train(run) -> dict:
    cfg = run.cfg
    total = cfg.trainer.total_steps
    if run.start_step == 0 and run.rank == 0:
        record = {"step": 0, **eval_phase(run, 0)}
        if run.cache_init:  # one-off cost, reported apart from training time as the RPO paper does
            record.update(cache_init_seconds=run.cache_init["seconds"], cache_init_tokens=run.cache_init["generated_tokens"])
        run.logger.log(record)
        run.say(f"step    0 | accuracy before training {record['accuracy']:.3f} on {len(run.eval_problems)} problems")
    pending: deque = run.pending  # mini-batches generated but not yet trained on (RAPID: H per rollout)
    bad_steps = 0
    last = {}
    for step in run.progress(range(run.start_step + 1, total + 1)):
        run.timer = run.new_timer()
        t0 = time.perf_counter()
        stats: dict = {}
        if not pending:
            pending.extend(collect_phase(run, step, stats))
        mb = pending.popleft()
        if mb.num_groups > 0:
            with run.timer("train"):
                stats.update(update_phase(run, run.shard(mb), step))
            with run.timer("sync"):
                stats.update(sync_phase(run, step))
            if run.rank == 0:
                with run.timer("cache"):
                    stats.update(cache_phase(run, mb, step))
            bad_steps = bad_steps + 1 if stats.get("update_skipped") else 0
        else:
            stats["empty_batch"] = 1.0  # nothing to train on (every group had equal rewards): no update, no sync
        if stats.get("update_skipped") and bad_steps >= cfg.trainer.max_bad_steps:
            raise RuntimeError(f"{bad_steps} consecutive updates skipped for a non-finite loss (trainer.max_bad_steps)")
        if run.rank == 0 and ((cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0) or step == total):
            with run.timer("eval"):
                stats.update(eval_phase(run, step))
        if run.rank == 0:
            last = run.logger.log(run.step_record(step, mb, stats, time.perf_counter() - t0))
            run.say_step(last)
        run.maybe_checkpoint(step, pending)
    return last


# An absolute path: the config folder sits beside the packages, whether run as `rpo-train` or `python -m`.
@hydra.main(version_base=None, config_path=str(Path(__file__).resolve().parents[1] / "conf"), config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    if hc.mode is not None and hc.mode.name == "MULTIRUN":  # each sweep job writes into its own sweep sub-directory
        OmegaConf.update(cfg, "trainer.output_dir", hc.runtime.output_dir, force_add=True)
    try:
        validate_config(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    configure_environment(cfg.device)
    multirun = hc.mode is not None and hc.mode.name == "MULTIRUN"
    try:
        train(cfg)
    except Exception as e:
        _record_failure(cfg, e)
        if multirun:  # one failed job must not end the sweep: the report shows it as a failed row
            return
        if isinstance(e, _user_errors()):  # bad input the user can fix: a message, not a traceback
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
            sys.exit(2)
        raise


def _record_failure(cfg, e: Exception) -> None:
    import traceback

    out = Path(cfg.trainer.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tb = "".join(traceback.format_exception(e)[-8:])
    (out / "error.txt").write_text(f"{type(e).__name__}: {e}\n\n{tb}")
    log.error("run failed: %s: %s", type(e).__name__, e)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
