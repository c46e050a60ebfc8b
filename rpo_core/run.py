"""Everything one training run holds, built once from the config: engine, learner, data, reward, cache, logger."""
from __future__ import annotations

import hashlib
import os
import logging
import random
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from rpo_core.metrics import MetricsLogger, PhaseTimer, format_step_line

log = logging.getLogger("rpo")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup_logging(output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler = logging.FileHandler(output_dir / "train.log")
    handler.setFormatter(fmt)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    log.setLevel(logging.INFO)


class ReferenceModel:
    """Frozen copy of the initial policy for the KL penalty (loaded only when algorithm.kl_coef > 0)."""

    def __init__(self, model_path: str, micro_batch_size: int, temperature: float):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval().requires_grad_(False)
        self.micro, self.temperature = micro_batch_size, temperature

    @torch.no_grad()
    def logprobs(self, tb):
        from rpo_core.learner import _cat_padded, response_logprobs

        return _cat_padded([response_logprobs(self.model, tb.rows(i, i + self.micro), self.temperature)
                            for i in range(0, len(tb), self.micro)])


class Run:
    @classmethod
    def build(cls, cfg: DictConfig) -> "Run":
        self = cls()
        self.cfg = cfg
        self.t_start = time.perf_counter()
        self.output_dir = Path(cfg.trainer.output_dir)
        setup_logging(self.output_dir)
        seed_everything(cfg.seed)
        self._print = cfg.trainer.progress
        self.rank = int(os.environ.get("RANK", 0))
        OmegaConf.save(cfg, self.output_dir / "config.yaml", resolve=True)
        self.say(f"output dir: {self.output_dir}")

        from rpo_core.distributed import init_distributed

        self.rank, self.world_size = init_distributed(cfg.learner.backend)

        from algorithms import build_algorithm
        from rpo_core.data import load_problems
        from rpo_core.models import prepare_model
        from transformers import AutoTokenizer

        self.model_path = prepare_model(cfg.model)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        splits = load_problems(cfg.data, self.tokenizer)
        self.train_problems, self.test_problems = splits.train, splits.test
        self.eval_problems = self.test_problems[: cfg.trainer.eval_size] if cfg.trainer.eval_size else self.test_problems
        self.say(f"data {cfg.data.name}: {len(self.train_problems)} train / {len(self.test_problems)} test "
                 f"(skipped: {splits.skipped.get('total', 0) if isinstance(splits.skipped, dict) else splits.skipped})")
        self.algorithm = build_algorithm(cfg.algorithm)

        from rollout import build_engine
        from rpo_core.learner import DeepSpeedLearner
        from rewards import RewardScorer

        t = time.perf_counter()
        self.engine = build_engine(cfg.rollout, self.model_path, cfg.seed) if self.rank == 0 else None
        self.say(f"rollout engine {cfg.rollout.name} ready in {time.perf_counter() - t:.1f}s")
        t = time.perf_counter()
        self.learner = DeepSpeedLearner(self.model_path, cfg.learner, cfg.learner.optim, cfg.rollout.temperature,
                                        self.world_size)
        self.say(f"DeepSpeed ZeRO-{cfg.learner.zero_stage} learner ready in {time.perf_counter() - t:.1f}s")
        self.reference = (ReferenceModel(self.model_path, cfg.learner.micro_batch_size, cfg.rollout.temperature)
                          if self.algorithm.needs_reference else None)
        r = cfg.reward
        # The dataset knows how its answers are written; reward.style only applies when it does not say.
        self.scorer = None if self.rank else RewardScorer(
            style=cfg.data.get("answer_style") or r.style, num_workers=r.num_workers, timeout_s=r.timeout_s,
            max_answer_chars=r.max_answer_chars, memory_mb=r.memory_mb, cache_size=r.cache_size, rel_tol=r.rel_tol)

        from rpo_core.sampler import PromptSampler

        self.sampler = PromptSampler(self.train_problems, cfg.seed)
        self.pending = deque()
        self.start_step = 0
        self.engine_step, self.sync_failures = 0, 0  # policy step whose weights the rollout engine holds
        self.rpo = None
        self.cache_init = {}
        if cfg.rpo.enabled and self.rank == 0:  # the cache lives with the engine, on rank 0
            self._build_rpo()
        self._maybe_resume()
        self.logger = (MetricsLogger(self.output_dir, cfg.logger, OmegaConf.to_container(cfg, resolve=True),
                                     resume_step=self.start_step) if self.rank == 0 else None)
        self.timer = PhaseTimer()
        return self

    # ---------------------------------------------------------------- checkpoints
    def _maybe_resume(self) -> None:
        from rpo_core.checkpoint import load_checkpoint, resolve_resume

        path = resolve_resume(self.cfg.trainer.resume, self.output_dir)
        if path is None:
            return
        self.start_step, pending = load_checkpoint(self, path)
        self.pending = deque(pending)
        synced = self.sync_engine(self.start_step)
        if "sync_failed" in synced:
            raise RuntimeError(f"could not load the weights of {path} into the rollout engine (see train.log)")
        self.say(f"resumed from {path} at step {self.start_step} ({len(self.pending)} pending mini-batches, "
                 f"{synced['synced_tensors']} tensors synced into the rollout engine)")

    def maybe_checkpoint(self, step: int, pending) -> None:
        every, total = self.cfg.trainer.save_every, self.cfg.trainer.total_steps
        if (every and step % every == 0) or step == total:
            from rpo_core.checkpoint import save_checkpoint

            from rpo_core.faults import pause_point

            path = save_checkpoint(self, step, pending, pause=lambda point: pause_point(f"checkpoint_{point}", step))
            self.say(f"checkpoint {path}")

    # ---------------------------------------------------------------- RPO
    def _build_rpo(self) -> None:
        from algorithms.rpo import PartialRollout
        from cache import TrajectoryCache, initialize_cache, model_fingerprint, tokenizer_fingerprint

        cfg = self.cfg
        fingerprint = {"model": model_fingerprint(self.model_path), "tokenizer": tokenizer_fingerprint(self.tokenizer),
                       "dataset": cfg.data.name}
        self.cache = TrajectoryCache(cfg.cache.path, fingerprint, synchronous=cfg.cache.synchronous)
        self.rpo = PartialRollout(cfg.rpo, self.cache, cfg.rollout.max_new_tokens)
        if cfg.rpo.init == "upfront":
            self.cache_init = initialize_cache(self.cache, self.train_problems, self._generate_initial,
                                               batch_size=cfg.cache.init_batch_size,
                                               progress=self._print and cfg.cache.init_progress)
            self.say(f"RPO cache: {self.cache_init}")

    def _generate_initial(self, problems):
        """One response per question from the initial policy (no correctness filter), as the paper's cache init."""
        from rollout.base import GenerationRequest
        from rpo_core.types import Sample

        reqs = [GenerationRequest(list(p.prompt_ids), 1, self.cfg.rollout.max_new_tokens,
                                  int(hashlib.sha1(f"{self.cfg.seed}:init:{p.uid}".encode()).hexdigest()[:8], 16))
                for p in problems]
        gens = self.engine.generate(reqs, self.cfg.rpo.init_temperature)
        return [Sample(uid=p.uid, prompt_ids=list(p.prompt_ids), response_ids=g[0].token_ids,
                       behavior_logprobs=g[0].logprobs, finished=g[0].finished, policy_step=0, text=g[0].text)
                for p, g in zip(problems, gens)]

    # ---------------------------------------------------------------- helpers the loop uses
    def step_generator(self, step: int, salt: str) -> torch.Generator:
        """Randomness of one step's choices as a function of (seed, step): identical after a resume."""
        g = torch.Generator()
        g.manual_seed(int(hashlib.sha1(f"{self.cfg.seed}:{step}:{salt}".encode()).hexdigest()[:15], 16))
        return g

    def sync_engine(self, step: int) -> dict:
        """Learner weights -> rollout engine. Every rank walks the parameters (a collective under ZeRO-3).

        A failed sync leaves the engine on the weights it had: the run goes on (rollouts carry their own behaviour
        logprobs, so the ratio stays right), says so, and counts it; trainer.max_bad_steps failures in a row stop it."""
        from rollout.base import SyncError

        weights = self.learner.full_weights()
        try:
            loaded = self.engine.load_weights(weights) if self.engine is not None else sum(1 for _ in weights)
            if loaded != self.learner.num_parameters:
                raise SyncError(f"got {loaded} of {self.learner.num_parameters} tensors")
        except SyncError as e:
            self.sync_failures += 1
            log.warning("weight sync after step %d failed: %s. The rollout engine keeps the weights of step %d.",
                        step, e, self.engine_step)
            if self.sync_failures >= self.cfg.trainer.max_bad_steps:
                raise RuntimeError(f"{self.sync_failures} weight syncs in a row failed (trainer.max_bad_steps); "
                                   f"last error: {e}") from e
            return {"sync_failed": 1.0, "engine_step": self.engine_step}
        self.sync_failures, self.engine_step = 0, step
        return {"synced_tensors": loaded, "engine_step": step}

    def shard(self, batch):
        """This rank's share of a mini-batch: whole groups, round-robin (advantages need the whole group)."""
        if self.world_size == 1:
            return batch
        return batch.select_groups(list(range(self.rank, batch.num_groups, self.world_size)))

    def new_timer(self) -> PhaseTimer:
        return PhaseTimer()

    def progress(self, steps):
        if not self._print or self.rank != 0:
            return steps
        from tqdm import tqdm

        return tqdm(steps, desc="train", unit="step", file=sys.stdout, dynamic_ncols=True)

    def say(self, message: str) -> None:
        log.info(message)
        if self._print and self.rank == 0:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stdout)

    def say_step(self, record: dict) -> None:
        self.say(format_step_line(record))

    def step_record(self, step: int, mb, stats: dict, step_time: float) -> dict:
        n = len(mb.samples)
        questions = stats.pop("_questions", 0)
        record = {
            "step": step,
            "reward_mean": float(np.mean(mb.rewards)) if n else None,
            "correct_mean": float(np.mean(mb.correct)) if n else None,
            "accuracy": stats.pop("accuracy", None),
            "samples": n,
            "rollout_tokens": stats.pop("rollout_tokens", 0),
            "prefix_tokens": stats.pop("prefix_tokens", 0),
            **self.timer.times,
            "time_step": step_time,
            "wall_time": time.perf_counter() - self.t_start,
        }
        for part, values in mb.reward_parts.items():
            record[f"reward_{part}"] = float(np.mean(values)) if values else None
        if questions:
            record["rollout_tokens_per_sample"] = record["rollout_tokens"] / (questions * mb.group_size)
        hits = stats.pop("cache_hits", 0)
        if self.rpo is not None:
            record["cache_hit_rate"] = hits / questions if questions else None
        record.update(stats)
        return record

    def close(self) -> None:
        for closer in (getattr(self, "logger", None), getattr(self, "scorer", None), getattr(self, "cache", None),
                       getattr(self, "engine", None)):
            if closer is not None:
                closer.close()
