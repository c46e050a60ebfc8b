"""Everything a run is built from, once, out of the config: engine, learner, algorithm, scorer, data, planner, logger.

The loop in `rpo_core.train` reads these and never replaces them; what changes from step to step is in
`rpo_core.checkpoint.TrainState`."""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoTokenizer

from algorithms import Algorithm, build_algorithm
from algorithms.rpo import build_planner
from rewards import build_scorer
from rollout import GenerationRequest, RolloutEngine, build_engine
from rpo_core.common.types import Problem, RolloutPlanner, Sample
from rpo_core.common.util import stable_seed
from rpo_core.data import load_problems
from rpo_core.distributed import Placement, init_distributed
from rpo_core.learner import DeepSpeedLearner, ReferenceModel
from rpo_core.metrics import Console, MetricsLogger, PhaseTimer
from rpo_core.models import prepare_model
from rpo_core.sampler import PromptSampler

log = logging.getLogger("rpo")


@dataclass(frozen=True)
class Components:
    cfg: DictConfig
    placement: Placement  # which rank does what, and the collectives between them
    output_dir: Path
    model_path: str
    tokenizer: object
    pad_id: int
    sampler: PromptSampler  # the training split in its seeded order
    eval_problems: list[Problem]  # the fixed held-out problems of every evaluation
    algorithm: Algorithm
    learner: DeepSpeedLearner
    reference: Optional[ReferenceModel]  # the KL penalty's frozen initial policy (kl_coef > 0)
    engine: Optional[RolloutEngine]  # rank 0 generates (every rank with rollout.placement=every_rank)
    scorer: Optional[object]  # where the engine is: RewardScorer (math) or another rewards.SCORERS entry
    planner: Optional[RolloutPlanner]  # rank 0: FullRollout, or PartialRollout when rpo.enabled (it owns the cache)
    logger: Optional[MetricsLogger]  # rank 0 writes metrics.jsonl
    console: Console

    def close(self) -> None:
        for part in (self.logger, self.scorer, self.planner, self.engine):
            if part is not None:
                part.close()


def build_components(cfg: DictConfig) -> Components:
    output_dir = Path(cfg.trainer.output_dir)
    setup_logging(output_dir)
    seed_everything(cfg.seed)
    rank, world_size = init_distributed(cfg.learner.backend)
    placement = Placement(rank, world_size, every_rank_generates=cfg.rollout.placement == "every_rank")
    console = Console(cfg.trainer.progress and rank == 0)
    if rank == 0:
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
    console.say(f"output dir: {output_dir}")

    model_path = prepare_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    splits = load_problems(cfg.data, tokenizer)
    eval_problems = splits.test[: cfg.trainer.eval_size] if cfg.trainer.eval_size else splits.test
    console.say(f"data {cfg.data.name}: {len(splits.train)} train / {len(splits.test)} test "
                f"(skipped: {splits.skipped.get('total', 0)})")
    algorithm = build_algorithm(cfg.algorithm, cfg.rollout.max_new_tokens, cfg.rpo.prefix_ratio,
                                engine_matches_learner=cfg.rollout.dtype == cfg.learner.dtype)

    timer = PhaseTimer()
    with timer("engine"):
        engine = build_engine(cfg.rollout, model_path, cfg.seed) if placement.generates else None
    console.say(f"rollout engine {cfg.rollout.name} ready in {timer.times['time_engine']:.1f}s")
    with timer("learner"):
        learner = DeepSpeedLearner(model_path, cfg.learner, cfg.learner.optim, cfg.rollout.temperature, world_size)
    console.say(f"DeepSpeed ZeRO-{cfg.learner.zero_stage} learner ready in {timer.times['time_learner']:.1f}s")
    reference = (ReferenceModel(model_path, cfg.learner, cfg.rollout.temperature, learner.device)
                 if algorithm.needs_reference else None)
    scorer = build_scorer(cfg.reward, cfg.data) if placement.generates else None

    planner = None
    if rank == 0:  # the planner (and RPO's cache) lives with the engine
        planner = build_planner(cfg, model_path, tokenizer)
        cache_init = planner.initialize(splits.train, lambda problems: initial_responses(cfg, engine, problems),
                                        batch_size=cfg.cache.init_batch_size,
                                        progress=console.show and cfg.cache.init_progress,
                                        reward=lambda p, s: float(scorer.score([s.text], [p.gold]).correct[0]))
        if cache_init:
            console.say(f"RPO cache: {cache_init}")
    logger = MetricsLogger(output_dir, cfg.logger, OmegaConf.to_container(cfg, resolve=True)) if rank == 0 else None
    return Components(
        cfg=cfg, placement=placement, output_dir=output_dir, model_path=model_path, tokenizer=tokenizer,
        pad_id=pad_id, sampler=PromptSampler(splits.train, cfg.seed), eval_problems=eval_problems,
        algorithm=algorithm, learner=learner, reference=reference, engine=engine, scorer=scorer, planner=planner,
        logger=logger, console=console,
    )


def initial_responses(cfg, engine: RolloutEngine, problems: list[Problem]) -> list[Sample]:
    """One response per question from the initial policy (no correctness filter), as the paper's cache init."""
    requests = [GenerationRequest(list(p.prompt_ids), 1, cfg.rollout.max_new_tokens, stable_seed(cfg.seed, "init", p.uid))
                for p in problems]
    gens = engine.generate(requests, cfg.rpo.init_temperature)
    return [Sample(uid=p.uid, prompt_ids=list(p.prompt_ids), response_ids=g[0].token_ids,
                   behavior_logprobs=g[0].logprobs, finished=g[0].finished, policy_step=0, text=g[0].text)
            for p, g in zip(problems, gens)]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup_logging(output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(output_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    log.setLevel(logging.INFO)
