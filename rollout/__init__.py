"""Rollout engines: `rollout=vllm` (default) or `rollout=hf`, both taking token ids and returning token ids."""
from rollout.base import Generation, GenerationRequest, RolloutEngine, SyncError  # noqa: F401
from rollout.hf_engine import HFEngine
from rollout.vllm_engine import VLLMEngine
from rpo_core.common.registry import Registry

ENGINES: Registry = Registry("rollout engine")
PLACEMENTS = ("rank0", "every_rank")  # rollout.placement: which trainer ranks host an engine
ENGINES.register("vllm")(VLLMEngine)
ENGINES.register("hf")(HFEngine)


def build_engine(cfg, model_path: str, seed: int) -> RolloutEngine:
    return ENGINES.get(cfg.name)(model_path, cfg, seed)
