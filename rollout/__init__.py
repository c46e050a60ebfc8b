"""Rollout engines: `rollout=vllm` (default) or `rollout=hf`, both taking token ids and returning token ids."""
from rollout.base import Generation, GenerationRequest, RolloutEngine  # noqa: F401
from rpo_core.registry import Registry

ENGINES: Registry = Registry("rollout engine")


@ENGINES.register("vllm")
def _vllm(model_path, cfg, seed):
    from rollout.vllm_engine import VLLMEngine

    return VLLMEngine(model_path, cfg, seed)


@ENGINES.register("hf")
def _hf(model_path, cfg, seed):
    from rollout.hf_engine import HFEngine

    return HFEngine(model_path, cfg, seed)


def build_engine(cfg, model_path: str, seed: int) -> RolloutEngine:
    return ENGINES.get(cfg.name)(model_path, cfg, seed)
