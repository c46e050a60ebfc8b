"""After an optimizer step and a sync, vLLM scores a fixed sequence like the learner does (ZeRO-0 and ZeRO-3)."""
from __future__ import annotations

import pytest
import torch

from conftest import compose, fresh_world_group

pytestmark = pytest.mark.full


@pytest.fixture(scope="module", params=["subprocess", "inproc"])
def engine(request, tiny_model_path, dist):
    from rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine(tiny_model_path, compose("model=tiny", f"rollout.engine_process={request.param}").rollout, 0)
    yield engine
    engine.llm.llm_engine.engine_core.shutdown()


def _fixed_batch(tokenizer):
    from rpo_core.common.batching import to_train_batch
    from rpo_core.common.types import RolloutBatch, Sample

    prompt = tokenizer("What is 2 + 3?")["input_ids"]
    response = tokenizer(" The answer is 5.")["input_ids"]
    s = Sample(uid="q", prompt_ids=prompt, response_ids=response, behavior_logprobs=[0.0] * len(response))
    return to_train_batch(RolloutBatch([s], group_size=1, rewards=[1.0]), pad_id=0, step=1), prompt, response


@pytest.mark.parametrize("stage", [0, 3])
def test_sync_makes_vllm_match_the_learner(engine, tiny_model_path, stage):
    from rpo_core.learner import DeepSpeedLearner
    from rpo_core.logprobs import response_logprobs

    fresh_world_group()  # an in-process vLLM engine built by an earlier test may have replaced the process groups
    cfg = compose("model=tiny", f"learner.zero_stage={stage}", "learner.optim.lr=1e-2")
    learner = DeepSpeedLearner(tiny_model_path, cfg.learner, cfg.learner.optim, temperature=1.0)
    engine.load_weights(learner.full_weights())  # start both from the same weights (earlier tests may have moved vLLM)
    tb, prompt, response = _fixed_batch(engine.tokenizer)
    before = torch.tensor(engine.sequence_logprobs(prompt, response))

    # one real optimizer step: maximise the logprob of the fixed response
    learner.train_step(tb, lambda logp, mb: (-(logp * mb.loss_mask).sum() / mb.loss_mask.sum(), {}), token_level=True)
    with torch.no_grad():
        learner_after = response_logprobs(learner.engine, tb, 1.0)[0]
    stale = torch.tensor(engine.sequence_logprobs(prompt, response))
    assert torch.allclose(stale, before), "vLLM changed before any sync"

    loaded = engine.load_weights(learner.full_weights())
    synced = torch.tensor(engine.sequence_logprobs(prompt, response))

    assert loaded == learner.num_parameters
    assert (learner_after - before).abs().max() > 1e-2, "the update did not move the learner"
    assert torch.allclose(synced, learner_after, atol=2e-4), (synced - learner_after).abs().max()
    assert not torch.allclose(synced, before, atol=1e-3)


def _scaled_weights(path, scale):
    from safetensors.torch import load_file
    import glob

    weights = {}
    for f in sorted(glob.glob(f"{path}/*.safetensors")):
        weights.update(load_file(f))
    return {name: t * scale for name, t in weights.items()}


def test_a_failed_sync_leaves_the_engine_on_its_previous_weights(engine, tiny_model_path):
    """Non-finite, misshaped or missing weights are refused before vLLM is touched."""
    from rollout.base import SyncError

    engine.load_weights(_scaled_weights(tiny_model_path, 1.0).items())
    tb, prompt, response = _fixed_batch(engine.tokenizer)
    before = torch.tensor(engine.sequence_logprobs(prompt, response))

    poisoned = _scaled_weights(tiny_model_path, 1.5)
    name = sorted(poisoned)[-1]
    poisoned[name] = poisoned[name].clone()
    poisoned[name].view(-1)[0] = float("nan")
    with pytest.raises(SyncError, match="non-finite"):
        engine.load_weights(poisoned.items())
    assert torch.equal(torch.tensor(engine.sequence_logprobs(prompt, response)), before)

    # every tensor but the last (in load order) is valid and different: without the check vLLM would load those
    misshaped = _scaled_weights(tiny_model_path, 1.5)
    misshaped[name] = torch.zeros(misshaped[name].numel() + 3)
    with pytest.raises(SyncError, match="wrong name or shape"):
        engine.load_weights(misshaped.items())
    partial = _scaled_weights(tiny_model_path, 1.5)
    del partial[name]
    with pytest.raises(SyncError, match="missing"):
        engine.load_weights(partial.items())
    assert torch.equal(torch.tensor(engine.sequence_logprobs(prompt, response)), before)

    # and a good sync still goes through afterwards
    engine.load_weights(_scaled_weights(tiny_model_path, 1.5).items())
    assert not torch.allclose(torch.tensor(engine.sequence_logprobs(prompt, response)), before, atol=1e-3)
