"""The transformers rollout engine's rollout.ignore_eos: responses run to the token budget, with the model's own
logprobs (EOS is not masked), for the fixed-length timing runs of experiments/gpu_check.sh."""
from __future__ import annotations

from conftest import compose
from rollout import GenerationRequest
from rollout.hf_engine import HFEngine
from rpo_core.models import prepare_model


def test_ignore_eos_generates_to_the_budget_with_the_models_logprobs():
    cfg = compose("model=smollm2_135m", "rollout=hf")
    path = prepare_model(cfg.model)
    plain = HFEngine(path, cfg.rollout, seed=0)
    prompt = plain.tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 3? Answer with just the number."}],
                                                 add_generation_prompt=True, tokenize=False)
    request = GenerationRequest(plain.tokenizer(prompt).input_ids, n=1, max_new_tokens=16, seed=0)
    stopped = plain.generate([request], temperature=0.0)[0][0]
    assert stopped.finished and len(stopped.token_ids) < 16, stopped  # greedy "5"-like answer, then EOS
    assert plain.model.device.type == "cpu"

    cfg.rollout.ignore_eos = True
    forced = HFEngine(path, cfg.rollout, seed=0).generate([request], temperature=0.0)[0][0]
    assert len(forced.token_ids) == 16 and not forced.finished
    n = len(stopped.token_ids)  # the same tokens and logprobs up to and including the EOS, then more
    assert forced.token_ids[:n] == stopped.token_ids
    assert forced.logprobs[:n] == stopped.logprobs
