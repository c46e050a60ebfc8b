"""rpo-train: the RL loop. Each optimizer step runs the phases in order:

    collect (plan -> rollout -> reward) -> update -> sync -> remember (planner) -> eval -> log -> checkpoint

One rollout may feed several optimizer steps (RAPID's H mini-batches wait in `state.pending`). The training clock
(`train_wall_s` in every metrics row) runs through everything but evaluation and checkpoints: trainer.time_budget_s
ends the run at the first step boundary past it, and trainer.save_every_s checkpoints on its grid."""
from __future__ import annotations

import logging
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import torch

from algorithms.core import count_constant_groups
from cache import CacheError
from rewards import compose_rewards
from rewards.shaping import word_counts
from rollout import GenerationRequest, SyncError
from rpo_core.checkpoint import (CheckpointError, TrainState, load_checkpoint, resolve_resume, save_checkpoint)
from rpo_core.common.batching import TrainBatch, to_train_batch
from rpo_core.common.registry import UnknownNameError
from rpo_core.common.types import Problem, RolloutBatch, Sample, StepResult
from rpo_core.common.util import stable_seed
from rpo_core.components import Components, build_components
from rpo_core.config import ConfigError, validate_config
from rpo_core.data import DataError
from rpo_core.distributed import configure_environment
from rpo_core.evaluate import greedy_eval
from rpo_core.faults import pause_point
from rpo_core.metrics import (PhaseTimer, TrainClock, format_step_line, host_cpu, peak_memory_gb,
                              reset_peak_memory)
from rpo_core.models import ModelNotFoundError
from rpo_core.packing import computed_rows

log = logging.getLogger(__name__)
# Bad input the user can fix: a message and exit code 2, not a traceback.
USER_ERRORS = (CacheError, CheckpointError, DataError, ModelNotFoundError, UnknownNameError, ConfigError)


@dataclass
class Tally:
    """What one step's generation rounds did (DAPO may run several): counted, then logged."""

    rounds: int = 0
    questions: int = 0
    counts: Counter = field(default_factory=Counter)


@dataclass(frozen=True)
class Update:
    """One optimizer step: the learner's result (result.skipped: a non-finite loss left the weights as they were) and
    what the step's row reports about it."""

    result: StepResult
    metrics: dict


@dataclass(frozen=True)
class Sync:
    """One weight sync, learner -> rollout engine. Failed (ok False): the engine kept the weights of engine_step."""

    ok: bool
    engine_step: int  # the policy step whose weights the engine holds after the sync
    tensors: int = 0  # tensors loaded
    bytes: int = 0  # bytes moved

    def metrics(self) -> dict:
        if not self.ok:
            return {"sync_failed": 1.0, "engine_step": self.engine_step}
        return {"synced_tensors": self.tensors, "sync_bytes": self.bytes, "engine_step": self.engine_step}


# =====================================================================================================================
# phases
# =====================================================================================================================
def rollout_phase(c: Components, problems: list[Problem], step: int, salt: str, tally: Tally) -> RolloutBatch:
    """G samples per problem, each continuing its plan's prefix (none: from the prompt) within the plan's budget.
    With rollout.placement=every_rank, rank 0 plans, each rank's engine generates every world_size-th question, and
    every rank ends with the whole batch (per-request seeds: the same samples as one engine)."""
    cfg, G = c.cfg, c.cfg.rollout.group_size
    plans = c.placement.planned(lambda: c.planner.plan(problems, step, salt))
    asked = c.placement.my_requests([k for k, plan in enumerate(plans) if plan.budget > 0])
    requests = [GenerationRequest(list(problems[k].prompt_ids) + list(plans[k].prefix_ids), G, plans[k].budget,
                                  stable_seed(cfg.seed, step, problems[k].uid, salt)) for k in asked]
    generated = c.engine.generate(requests, cfg.rollout.temperature) if requests else []
    generations = c.placement.merged(dict(zip(asked, generated)))
    pause_point("rollout", step)
    samples = []
    for k, (p, plan) in enumerate(zip(problems, plans)):
        for gen in generations.get(k, [None] * G):
            new_ids, new_lp = (gen.token_ids, gen.logprobs) if gen else ([], [])
            samples.append(Sample(
                uid=p.uid, prompt_ids=list(p.prompt_ids), response_ids=list(plan.prefix_ids) + new_ids,
                behavior_logprobs=list(plan.prefix_logprobs) + new_lp, prefix_len=len(plan.prefix_ids),
                prefix_in_loss=plan.prefix_in_loss, finished=gen.finished if gen else plan.finished_without_generation,
                policy_step=step - 1, prefix_policy_step=plan.prefix_policy_step if plan.prefix_ids else step - 1,
            ))
            tally.counts["rollout_tokens"] += len(new_ids)
    texts = c.tokenizer.batch_decode([s.response_ids for s in samples], skip_special_tokens=True)
    for s, text in zip(samples, texts):
        s.text = text  # for the reward only; the token ids above are what is trained on
    return RolloutBatch(samples=samples, group_size=G, golds=[p.gold for p in problems])


def reward_phase(c: Components, batch: RolloutBatch, tally: Tally) -> None:
    """Correctness of the whole response (prefix + suffix) against the gold answer, plus configured shaping terms."""
    G, texts = batch.group_size, [s.text for s in batch.samples]
    scored = c.scorer.score(texts, [gold for gold in batch.golds for _ in range(G)])
    lengths = [len(s.response_ids) for s in batch.samples]
    batch.rewards, batch.reward_parts = compose_rewards(scored.correct, scored.has_answer, lengths, G, c.cfg.reward,
                                                        word_counts=word_counts(texts),
                                                        char_counts=[len(t) for t in texts])
    batch.correct = [float(x) for x in scored.correct]
    tally.counts.update(scored.stats)
    # groups whose rewards are all equal carry no advantage (DAPO drops them; the others train on zeros)
    tally.counts["dead_groups"] += int(count_constant_groups(torch.tensor(batch.rewards), G))


def collect_phase(c: Components, state: TrainState, step: int, timer: PhaseTimer) -> tuple[list[RolloutBatch], dict]:
    """Generate and score (the algorithm decides how many prompts and which groups to keep) and cut the batch into
    mini-batches, one per optimizer step. rollout.placement=rank0: rank 0 does it and sends the list to the others;
    every_rank: every rank runs the same steps on the same data, each generating its share of every round."""
    tally, minibatches, stats = Tally(), None, {}

    def generate_and_score(n: int) -> RolloutBatch:
        problems, state.data = c.sampler.take(state.data, n)
        tally.rounds += 1
        tally.questions += len(problems)
        with timer("rollout"):
            batch = rollout_phase(c, problems, step, f"r{tally.rounds}", tally)
        with timer("reward"):
            reward_phase(c, batch, tally)
        return batch

    if c.placement.generates:
        batch, stats = c.algorithm.collect(generate_and_score)
        minibatches = c.algorithm.split(batch)
        stats.update(tally.counts,
                     rollout_tokens_per_sample=tally.counts["rollout_tokens"] / (tally.questions * batch.group_size))
    minibatches, state.data = c.placement.collected((minibatches, state.data))
    return minibatches, stats


def rollout_logp_phase(c: Components, minibatches: list[RolloutBatch], step: int) -> None:
    """pi_old for a rollout that feeds several optimizer steps: the learner's logprobs of every sample under the policy
    that generated them, taken before the first of those steps. Each rank computes its own shards, leaving out the
    groups its updates will skip (NaN there: never read); all ranks then hold every sample's (so the checkpointed
    pending mini-batches are complete)."""
    mine = {}
    for k, mb in enumerate(minibatches):
        groups, G = c.placement.my_groups(mb.num_groups), mb.group_size
        if not groups:
            continue
        tb = train_batch(c, mb, step)
        rows = computed_rows(tb, skipped_groups(c, c.algorithm.prepare(tb)))
        logp = torch.full(tb.response_mask.shape, float("nan"))
        logp[rows] = c.learner.logprobs(tb.select(rows))
        for row, i in enumerate(g * G + j for g in groups for j in range(G)):
            mine[(k, i)] = logp[row, : len(mb.samples[i].response_ids)].tolist()
    for part in c.placement.gather(mine):
        for (k, i), lp in part.items():
            minibatches[k].samples[i].rollout_logprobs = lp


def update_phase(c: Components, batch: RolloutBatch, step: int) -> Update:
    """Advantages and one optimizer step of the algorithm's loss over this rank's share of `batch`."""
    tb = train_batch(c, batch, step)
    if c.reference is not None:
        tb.ref_logp = c.reference.logprobs(tb)
    tb = c.algorithm.prepare(tb)
    result = c.learner.train_step(tb, c.algorithm.loss, c.algorithm.token_level, inert_groups=skipped_groups(c, tb))
    pause_point("update", step)  # weights updated; engine, planner, metrics and checkpoint not yet
    # vLLM vs learner on the freshly generated tokens, both under the policy that generated them (with several steps per
    # rollout: the learner's logprobs taken before the first; RAPID's later steps also see the policy's drift)
    learner_logp = tb.rollout_logp if tb.rollout_logp is not None else result.logprobs
    computed = ~learner_logp.isnan()  # rows of inert groups were not computed (learner.skip_inert_groups)
    fresh = tb.response_mask * (1 - tb.prefix_mask) * computed
    mismatch = ((learner_logp - tb.behavior_logp).nan_to_num().abs() * fresh).sum() / fresh.sum().clamp(min=1)
    return Update(result, {
        **result.stats, "grad_norm": result.grad_norm, "update_skipped": float(result.skipped),
        "logprob_mismatch": float(mismatch), "learner_rows_skipped": len(tb) - result.rows_computed,
        "response_len_mean": float(tb.response_mask.sum(1).mean()),
        # RAPID forms its advantages inside the loss (they depend on the current policy) and reports them there
        "advantage_abs_mean": result.stats.get("advantage_abs_mean", float(tb.advantages.abs().mean()))})


def train_batch(c: Components, batch: RolloutBatch, step: int) -> TrainBatch:
    """This rank's share of `batch` (whole groups), as the learner trains on it at `step`."""
    mine = batch if c.placement.world_size == 1 else batch.select_groups(c.placement.my_groups(batch.num_groups))
    return to_train_batch(mine, c.pad_id, step)


def skipped_groups(c: Components, tb: TrainBatch) -> Optional[torch.Tensor]:
    """[B] bool: the groups of a prepared `tb` the update leaves out (Algorithm.inert_groups, when
    learner.skip_inert_groups); None: all are computed."""
    return c.algorithm.inert_groups(tb) if c.cfg.learner.skip_inert_groups else None


def sync_phase(c: Components, state: TrainState) -> Sync:
    """Learner weights -> rollout engine. Every rank walks the parameters (a collective under ZeRO-3); rank 0 loads.

    A failed sync leaves the engine on the weights it had: the run goes on (rollouts carry their own behaviour
    logprobs, so the ratio stays right), says so, and counts it; trainer.max_bad_steps failures in a row stop it."""
    moved = [0]
    weights = _counting_bytes(c.learner.full_weights(), moved)
    try:
        loaded = c.engine.load_weights(weights) if c.engine is not None else sum(1 for _ in weights)
        if loaded != c.learner.num_parameters:
            raise SyncError(f"got {loaded} of {c.learner.num_parameters} tensors")
    except SyncError as e:
        state.sync_failures += 1
        log.warning("weight sync after step %d failed: %s. The rollout engine keeps the weights of step %d.",
                    state.step, e, state.engine_step)
        if state.sync_failures >= c.cfg.trainer.max_bad_steps:
            raise RuntimeError(f"{state.sync_failures} weight syncs in a row failed (trainer.max_bad_steps); "
                               f"last error: {e}") from e
        return Sync(ok=False, engine_step=state.engine_step)
    state.sync_failures, state.engine_step = 0, state.step
    return Sync(ok=True, engine_step=state.step, tensors=loaded, bytes=moved[0])


def _counting_bytes(named_tensors, total: list[int]):
    for name, t in named_tensors:
        total[0] += t.numel() * t.element_size()
        yield name, t


def eval_phase(c: Components) -> dict:
    """Greedy accuracy on the held-out problems (fixed order, temperature 0), as rpo-eval measures it."""
    result = greedy_eval(c.engine, c.scorer, c.eval_problems, c.cfg.trainer.eval_max_new_tokens)
    return {"accuracy": result.accuracy, "eval_response_len": result.response_len,
            "eval_direct_answer_share": result.direct_answer_share, "eval_digest": result.digest}


def step_record(mb: RolloutBatch, stats: dict, timer: PhaseTimer, t_step: float, t_run: float) -> dict:
    record = {
        "step": stats.pop("step"),
        "reward_mean": float(np.mean(mb.rewards)) if mb.samples else None,
        "correct_mean": float(np.mean(mb.correct)) if mb.samples else None,
        "accuracy": stats.pop("accuracy", None),
        "samples": len(mb.samples),
        "rollout_tokens": stats.pop("rollout_tokens", 0),
        **timer.times,
        "time_step": time.perf_counter() - t_step,
        "wall_time": time.perf_counter() - t_run,
        "peak_rss_gb": peak_memory_gb(),  # the trainer process during this step (the engine's processes not included)
    }
    # generated tokens per second of the rollout phase; prompt + response tokens of the mini-batch (inert groups the
    # learner skipped included) per second of the train phase (every rank's share: the system's throughput); null on a
    # step without that phase
    trained = sum(len(s.prompt_ids) + len(s.response_ids) for s in mb.samples)
    record["rollout_tokens_per_s"] = _per_second(record["rollout_tokens"], record.get("time_rollout"))
    record["train_tokens_per_s"] = _per_second(trained, record.get("time_train"))
    record.update({f"reward_{part}": float(np.mean(v)) if v else None for part, v in mb.reward_parts.items()})
    return record | stats


def _per_second(count: float, seconds: float | None) -> float | None:
    return count / seconds if seconds else None


# =====================================================================================================================
# the loop
# =====================================================================================================================
def train(cfg: DictConfig) -> dict:
    cfg = validate_config(cfg)  # whoever calls: the config typed by its schemas, every option present
    clock = TrainClock()  # started before the engine and the planner's initialization: both count as training time
    c = build_components(cfg)
    try:
        state = resume(c)
        clock.resume_from(state.train_wall_s)
        return _train(c, state, clock)
    finally:
        c.close()


def resume(c: Components) -> TrainState:
    """A fresh state, or the one of the checkpoint trainer.resume names (engine weights and metrics follow it)."""
    path = resolve_resume(c.cfg.trainer.resume, c.output_dir)
    state = TrainState() if path is None else load_checkpoint(c, path)
    if c.logger is not None:
        c.logger.truncate_after(state.step if path else -1)  # no step logged twice
    if path is not None:
        if not sync_phase(c, state).ok:
            raise RuntimeError(f"could not load the weights of {path} into the rollout engine (see train.log)")
        c.console.say(f"resumed from {path} at step {state.step} ({len(state.pending)} pending mini-batches)")
    return state


def _train(c: Components, state: TrainState, clock: TrainClock) -> dict:
    cfg, total, t_run, last, main = c.cfg, c.cfg.trainer.total_steps, time.perf_counter(), {}, c.placement.is_main
    if state.step == 0 and main:
        with clock.off():
            record = {"step": 0, **eval_phase(c)}
    if state.step == 0:  # start-up (engine, learner, the planner's initialization) is training time, on every rank
        state.train_wall_s = training_time(c, clock)
    if state.step == 0 and main:
        record.update(train_wall_s=state.train_wall_s, host_cpu=host_cpu(), **c.planner.startup_metrics())
        c.logger.log(record)
        c.console.say(f"step    0 | accuracy before training {record['accuracy']:.3f} on {len(c.eval_problems)} problems")
    resumed_at = state.step
    for step in c.console.progress(range(state.step + 1, total + 1)):
        timer, t_step, stats = PhaseTimer(), time.perf_counter(), {"step": step}
        if resumed_at and step == resumed_at + 1:
            stats["host_cpu"] = host_cpu()  # the host of every attempt of a run is on record
        trained_before = state.train_wall_s
        reset_peak_memory()
        if not state.pending:
            state.pending, collected = collect_phase(c, state, step, timer)
            stats.update(collected)
            if len(state.pending) > 1 and c.algorithm.needs_rollout_logp:
                with timer("rollout_logp"):
                    rollout_logp_phase(c, state.pending, step)
        mb = state.pending.pop(0)
        state.step = step
        if mb.num_groups > 0:
            with timer("train"):
                update = update_phase(c, mb, step)
            with timer("sync"):
                sync = sync_phase(c, state)
            if main:
                with timer("cache"):  # remember: the planner keeps what this step taught
                    c.planner.update(mb, step)
            stats.update(update.metrics, **sync.metrics())
            state.bad_steps = state.bad_steps + 1 if update.result.skipped else 0
            if state.bad_steps >= cfg.trainer.max_bad_steps:
                raise RuntimeError(f"{state.bad_steps} consecutive updates skipped for a non-finite loss "
                                   f"(trainer.max_bad_steps)")
        else:
            stats["empty_batch"] = 1.0  # nothing to train on (every group had equal rewards): no update, no sync
        state.train_wall_s = stats["train_wall_s"] = training_time(c, clock)
        out_of_time = bool(cfg.trainer.time_budget_s) and state.train_wall_s >= cfg.trainer.time_budget_s
        final = step == total or out_of_time
        if main and ((cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0) or final):
            with timer("eval"), clock.off():
                stats.update(eval_phase(c))
        if main:
            last = c.logger.log(step_record(mb, stats | c.planner.metrics(), timer, t_step, t_run))
            c.console.say(format_step_line(last))
        if final or on_save_grid(cfg.trainer, step, trained_before, state.train_wall_s):
            with clock.off():
                path = save_checkpoint(c, state, pause=lambda point: pause_point(f"checkpoint_{point}", step))
            c.console.say(f"checkpoint {path}")
        if out_of_time:
            c.console.say(f"time budget reached: {state.train_wall_s:.0f}s of training >= trainer.time_budget_s="
                          f"{cfg.trainer.time_budget_s} after step {step}")
            break
    return last


def training_time(c: Components, clock: TrainClock) -> float:
    """Rank 0's training clock, on every rank: the budget and the checkpoint grid must stop every rank at one step."""
    return c.placement.broadcast(clock.seconds())


def on_save_grid(trainer_cfg, step: int, trained_before: float, trained: float) -> bool:
    """A checkpoint after this step: every save_every steps, or when the training clock crossed a multiple of
    save_every_s during it."""
    by_steps = bool(trainer_cfg.save_every) and step % trainer_cfg.save_every == 0
    grid = trainer_cfg.save_every_s
    return by_steps or bool(grid) and int(trained // grid) > int(trained_before // grid)


# An absolute path: the config folder sits beside the packages, whether run as `rpo-train` or `python -m`.
@hydra.main(version_base=None, config_path=str(Path(__file__).resolve().parents[1] / "conf"), config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    multirun = hc.mode is not None and hc.mode.name == "MULTIRUN"
    if multirun:  # each sweep job writes into its own sweep sub-directory
        OmegaConf.update(cfg, "trainer.output_dir", hc.runtime.output_dir, force_add=True)
    try:
        validate_config(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    configure_environment(cfg.device)
    retire_failure_record(Path(cfg.trainer.output_dir))
    try:
        train(cfg)
    except Exception as e:
        _record_failure(cfg, e)
        if multirun:  # one failed job must not end the sweep: the report shows it as a failed row
            return
        if isinstance(e, USER_ERRORS):
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
            sys.exit(2)
        raise


def retire_failure_record(out: Path) -> None:
    """A run started again in a folder that holds an earlier attempt's error.txt: keep that record as
    error.previous.txt, so the folder no longer reads as failed once this attempt completes (rpo-report)."""
    try:
        (out / "error.txt").replace(out / "error.previous.txt")
    except FileNotFoundError:  # no earlier failure, or another rank moved it first
        pass


def _record_failure(cfg, e: Exception) -> None:
    out = Path(cfg.trainer.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tb = "".join(traceback.format_exception(e)[-8:])
    (out / "error.txt").write_text(f"{type(e).__name__}: {e}\n\n{tb}")
    log.error("run failed: %s: %s", type(e).__name__, e)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
