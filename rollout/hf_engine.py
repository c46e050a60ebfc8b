"""Rollouts with transformers `generate`: same interface as the vLLM engine, for comparison and debugging."""
from __future__ import annotations

import os
from typing import Iterable, Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rollout.base import Generation, GenerationRequest, stage_weights
from rpo_core.common.util import DTYPES


class HFEngine:
    def __init__(self, model_path: str, cfg, seed: int):
        self.device = engine_device(cfg.device)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=DTYPES.get(cfg.dtype, "auto")).eval()
        self.model.to(self.device)
        self.ignore_eos = cfg.ignore_eos
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(_as_list(self.model.generation_config.eos_token_id) or [self.tokenizer.eos_token_id])
        self.seed = seed

    @torch.no_grad()
    def generate(self, requests: list[GenerationRequest], temperature: float) -> list[list[Generation]]:
        # One padded batch for all requests (left padding); each request's own budget is applied afterwards.
        flat = [r for r in requests for _ in range(r.n)]
        budget = max(r.max_new_tokens for r in requests)
        width = max(len(r.prompt_ids) for r in flat)
        input_ids = torch.full((len(flat), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for i, r in enumerate(flat):
            input_ids[i, width - len(r.prompt_ids) :] = torch.tensor(list(r.prompt_ids))
            attention[i, width - len(r.prompt_ids) :] = 1
        seed = requests[0].seed if requests and requests[0].seed is not None else self.seed
        torch.manual_seed(seed)
        greedy = temperature == 0
        # eos_token_id=None: no stop at EOS (the model's generation config would otherwise supply its EOS ids)
        stop_at = {"eos_token_id": None} if self.ignore_eos else {}
        out = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention.to(self.device),
            max_new_tokens=budget,
            do_sample=not greedy,
            temperature=None if greedy else temperature,
            top_p=None,
            top_k=None,
            pad_token_id=self.pad_id,
            output_scores=True,
            return_dict_in_generate=True,
            **stop_at,
        )
        new = out.sequences[:, width:]
        logprobs = self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        gens, k = [], 0
        for r in requests:
            group = []
            for _ in range(r.n):
                ids, lps = new[k].tolist(), logprobs[k].tolist()
                stop = None if self.ignore_eos else next((j + 1 for j, t in enumerate(ids) if t in self.eos_ids), None)
                keep = min(stop or len(ids), r.max_new_tokens)
                finished = stop is not None and stop <= r.max_new_tokens
                text = self.tokenizer.decode(ids[:keep], skip_special_tokens=True)
                group.append(Generation(token_ids=ids[:keep], logprobs=lps[:keep], finished=finished, text=text))
                k += 1
            gens.append(group)
        return gens

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        params = dict(self.model.named_parameters())
        # all-or-nothing: a bad tensor leaves the current weights in place
        staged = stage_weights(named_tensors, {name: tuple(p.shape) for name, p in params.items()})
        with torch.no_grad():
            for name, tensor in staged.items():
                params[name].copy_(tensor)
        return len(staged)

    def close(self) -> None:
        pass

    @torch.no_grad()
    def sequence_logprobs(self, prompt_ids: Sequence[int], response_ids: Sequence[int]) -> list[float]:
        ids = torch.tensor([list(prompt_ids) + list(response_ids)], device=self.device)
        logp = torch.log_softmax(self.model(ids).logits[0, :-1].float(), dim=-1)
        targets = ids[0, 1:]
        token_logp = logp.gather(-1, targets[:, None])[:, 0]
        return token_logp[len(prompt_ids) - 1 :].tolist()


def engine_device(name: str) -> torch.device:
    """rollout.device as a torch device: cuda is this rank's GPU (LOCAL_RANK, set by the launcher or rpo-train)."""
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if name == "cuda" else torch.device(name)


def _as_list(x):
    return x if isinstance(x, list) else ([] if x is None else [x])
