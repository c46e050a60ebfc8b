"""Log-probabilities of the response tokens of a TrainBatch under a causal LM: the model's own forward, or the output
layer on real tokens only in checkpointed chunks, or the shared tokens of each group forwarded once (packed rows or the
decoder's key/value cache); all exact, the latter two cheaper in memory or compute."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from torch.utils.checkpoint import checkpoint

from rpo_core.common.batching import TrainBatch
from rpo_core.common.checks import ConfigError
from rpo_core.packing import in_row_order, learner_micro_batches, packed_groups, packed_mask

# Model config fields (and their "off" values) of architectures whose logits are not head(hidden): their forward
# soft-caps (Gemma 2) or rescales (Cohere, Granite) them, which the paths calling decoder and head directly would skip.
LOGIT_POSTPROCESSING = {"final_logit_softcapping": (None, 0, 0.0), "logit_scale": (None, 1, 1.0),
                        "logits_scaling": (None, 1, 1.0)}


def check_direct_head(model_config, cfg) -> None:
    """Raise ConfigError when learner.logprob_chunk or learner.shared_prefix would skip the model's logit
    post-processing (the plain path, logprob_chunk=0 without shared_prefix, runs the model's own forward)."""
    if not (cfg.logprob_chunk or cfg.shared_prefix):
        return
    text_config = getattr(model_config, "text_config", None)  # multimodal models keep the language model's here
    for field, off in LOGIT_POSTPROCESSING.items():
        value = next((v for v in (getattr(c, field, None) for c in (model_config, text_config)) if v not in off), None)
        if value is not None:
            raise ConfigError(f"this model's forward post-processes its logits ({field}={value}), which "
                              f"learner.logprob_chunk > 0 and learner.shared_prefix=true skip: set "
                              f"learner.logprob_chunk=0 learner.shared_prefix=false")


def response_logprobs(model, tb: TrainBatch, temperature: float, chunk: int = 0) -> torch.Tensor:
    """log pi(y_j | x, y_<j) = log softmax(logits_j / temperature)[y_j] for every response token j: [N, T], zero on
    padding.

    chunk > 0: the output layer and log-softmax run on the real response tokens only (no padding), `chunk` x rows
    positions at a time, each under activation checkpointing, so the [N, T, vocab] logits never exist at once (nor
    their fp32 copy and softmax for backward); the backward recomputes one chunk's logits at a time. Same values, a
    fraction of the memory, about one extra output-layer forward per step. chunk = 0: the model's own forward."""
    T = tb.response_mask.shape[1]
    targets = tb.input_ids[:, -T:]
    if not chunk:
        out = model(input_ids=tb.input_ids, attention_mask=tb.attention_mask, position_ids=tb.position_ids,
                    use_cache=False, logits_to_keep=T + 1)  # columns P-1 .. P+T-1; the first T predict the response
        return _token_logprobs(out.logits[:, :T], targets, temperature) * tb.response_mask
    hf = getattr(model, "module", model)  # a DeepSpeed engine wraps the Hugging Face model
    hidden = hf.get_decoder()(input_ids=tb.input_ids, attention_mask=tb.attention_mask, position_ids=tb.position_ids,
                              use_cache=False).last_hidden_state[:, -T - 1 : -1]
    return masked_head_logprobs(hf.get_output_embeddings(), hidden, targets, tb.response_mask, temperature, chunk)


def shared_prefix_logprobs(model, tb: TrainBatch, temperature: float, chunk: int = 64) -> torch.Tensor:
    """response_logprobs computed with the tokens a group's G samples share forwarded once: the prompt, and under RPO
    the kept prefix of the cached response. Exact (same values and gradients as the padded computation).

    Each group becomes one packed row [shared, suffix_1, ..., suffix_G] with a block attention mask (a suffix sees the
    shared tokens and its own earlier tokens) and positions that continue the shared part in every suffix, so the
    backward runs through the shared tokens once, accumulating what every suffix sends back. The groups' rows go
    through the decoder together, padded to the longest. The output layer, too, runs once per shared token. The rows
    of `tb` must be whole groups."""
    hf = getattr(model, "module", model)
    G, T = tb.group_size, tb.response_mask.shape[1]
    P = tb.input_ids.shape[1] - T
    input_ids = tb.input_ids.cpu()  # the packing is host work
    packs = packed_groups(input_ids, tb.attention_mask.cpu(), G, P)
    width = max(len(pack.ids) for pack in packs)

    def padded(field: str, value: int) -> torch.Tensor:
        return torch.stack([F.pad(getattr(pack, field), (0, width - len(pack.ids)), value=value) for pack in packs])

    device = tb.input_ids.device
    hidden = hf.get_decoder()(input_ids=padded("ids", 0).to(device),
                              attention_mask=packed_mask(padded("segments", -1), _float_dtype(hf)).to(device),
                              position_ids=padded("positions", 0).to(device), use_cache=False).last_hidden_state
    # row i's response token j is predicted by the state at index[i, j] of the groups' rows laid end to end
    index = torch.cat([pack.index + k * width for k, pack in enumerate(packs)])
    return _shared_state_logprobs(hf, hidden.flatten(0, 1), index, input_ids[:, P:], tb, temperature, chunk)


def cached_prefix_logprobs(model, tb: TrainBatch, temperature: float, chunk: int = 64) -> torch.Tensor:
    """shared_prefix_logprobs through the decoder's key/value cache instead of packed rows. Exact.

    The decoder runs once on every group's shared tokens, then on the G suffixes of each group, which attend to the
    shared tokens' cached keys and values (copied G times, with gradient, so the backward reaches the shared tokens
    through every suffix). Unlike a packed row it builds no [L, L] mask and computes no attention between the
    suffixes of a group, which is faster for long responses and costs those G copies in memory. Needs the model's
    cache, which transformers turns off under gradient checkpointing. The rows of `tb` must be whole groups."""
    hf = getattr(model, "module", model)
    G, T = tb.group_size, tb.response_mask.shape[1]
    P = tb.input_ids.shape[1] - T
    input_ids = tb.input_ids.cpu()  # the packing is host work
    packs = packed_groups(input_ids, tb.attention_mask.cpu(), G, P)
    shared = [pack.segments == 0 for pack in packs]
    suffixes = [pack.segments == k for pack in packs for k in range(1, G + 1)]
    owners = [pack for pack in packs for _ in range(G)]
    device = tb.input_ids.device

    def padded(parts: list[torch.Tensor], side: str) -> torch.Tensor:
        return pad_sequence(parts, batch_first=True, padding_side=side).to(device)

    prefix_mask = padded([torch.ones(int(s.sum()), dtype=torch.long) for s in shared], "left")
    suffix_mask = padded([torch.ones(int(s.sum()), dtype=torch.long) for s in suffixes], "right")
    decoder = hf.get_decoder()
    out = decoder(input_ids=padded([p.ids[s] for p, s in zip(packs, shared)], "left"), attention_mask=prefix_mask,
                  position_ids=padded([p.positions[s] for p, s in zip(packs, shared)], "left"), use_cache=True)
    prefix_hidden, cache = out.last_hidden_state, out.past_key_values
    del out
    cache.batch_repeat_interleave(G)  # one copy of a group's shared keys and values per suffix
    suffix_hidden = decoder(input_ids=padded([p.ids[s] for p, s in zip(owners, suffixes)], "right"),
                            attention_mask=torch.cat([prefix_mask.repeat_interleave(G, 0), suffix_mask], 1),
                            position_ids=padded([p.positions[s] for p, s in zip(owners, suffixes)], "right"),
                            past_key_values=cache, use_cache=True).last_hidden_state
    del cache  # the backward holds what it needs; the cache's own copies can go
    # Each group's packed positions [shared, suffix_1, ..., suffix_G], as rows of the two outputs laid end to end.
    prefix_at = prefix_mask.flatten().nonzero()[:, 0].cpu().split([int(s.sum()) for s in shared])
    suffix_at = (prefix_mask.numel() + suffix_mask.flatten().nonzero()[:, 0].cpu()).split(
        [int((pack.segments > 0).sum()) for pack in packs])
    tables = [torch.cat(parts) for parts in zip(prefix_at, suffix_at)]
    # (a padded response column's index points past its row's tokens; clamped, it is never read)
    index = torch.cat([table[pack.index.clamp(max=len(table) - 1)] for table, pack in zip(tables, packs)])
    hidden = torch.cat([prefix_hidden.flatten(0, 1), suffix_hidden.flatten(0, 1)])
    return _shared_state_logprobs(hf, hidden, index, input_ids[:, P:], tb, temperature, chunk)


def _shared_state_logprobs(hf, hidden: torch.Tensor, index: torch.Tensor, responses: torch.Tensor, tb: TrainBatch,
                           temperature: float, chunk: int) -> torch.Tensor:
    """[N, T] logprobs of the response tokens of `tb` (`responses`, its [N, T] response columns on the host), token j
    of row i predicted by hidden[index[i, j]] (zero on padding). A state predicting the same token in several rows
    (every kept-prefix token under RPO) is one (state, target) pair: its logprob is computed once and repeated, so
    its gradient adds up as before."""
    valid = tb.response_mask.bool().cpu()
    pairs = torch.stack([index[valid], responses[valid]])
    (states, targets), repeat = (t.to(hidden.device) for t in torch.unique(pairs, dim=1, return_inverse=True))
    logp = head_logprobs(hf.get_output_embeddings(), hidden[states], targets, temperature, chunk * tb.group_size)
    out = torch.zeros(valid.shape, dtype=logp.dtype, device=logp.device)
    out[valid.to(logp.device)] = logp[repeat]
    return out


def _float_dtype(model) -> torch.dtype:
    """The dtype of the model's floating-point weights (that of its additive attention mask)."""
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def masked_head_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, temperature: float,
                         chunk: int) -> torch.Tensor:
    """log softmax(head(h_j) / temperature)[y_j] where mask [N, T] is 1, 0 elsewhere, computed at those positions only
    (head_logprobs, chunk x N positions at a time)."""
    where = mask.bool()
    out = torch.zeros(mask.shape, dtype=torch.float32, device=hidden.device)
    out[where] = head_logprobs(head, hidden[where], targets[where], temperature, chunk * mask.shape[0])
    return out


def head_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor, temperature: float, size: int) -> torch.Tensor:
    """log softmax(head(h_i) / temperature)[y_i] for hidden [n, H], targets [n]: [n] in fp32.

    size > 0: `size` positions at a time, each under activation checkpointing (the backward recomputes one chunk's
    logits); 0: all at once, the logits kept for the backward (no recompute, more memory)."""
    if not len(targets):
        return torch.zeros(0, dtype=torch.float32, device=hidden.device)
    recompute = size > 0 and torch.is_grad_enabled()
    size = size or len(targets)
    return torch.cat([checkpoint(_head_logprobs, head, hidden[s : s + size], targets[s : s + size], temperature,
                                 use_reentrant=False)
                      if recompute else _head_logprobs(head, hidden[s : s + size], targets[s : s + size], temperature)
                      for s in range(0, len(targets), size)])


def _head_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(head(h_i) / temperature)[y_i], all positions at once."""
    return _token_logprobs(head(hidden), targets, temperature)


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / temperature)[target], in fp32."""
    logits = logits.float() if temperature == 1.0 else logits.float() / temperature  # no [n, vocab] pass for 1.0
    return logits.gather(-1, targets[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)


SHARED_PREFIX_MODES = {"packed": shared_prefix_logprobs, "kv_cache": cached_prefix_logprobs}


def policy_logprobs(model, micro: TrainBatch, temperature: float, cfg) -> torch.Tensor:
    """response_logprobs, or with learner.shared_prefix its shared-prefix form in learner.shared_prefix_mode (same
    values; `micro` must then hold whole groups). `cfg`: the learner config."""
    if cfg.shared_prefix:
        return SHARED_PREFIX_MODES[cfg.shared_prefix_mode](model, micro, temperature, cfg.logprob_chunk)
    return response_logprobs(model, micro, temperature, cfg.logprob_chunk)


@torch.no_grad()
def batched_logprobs(model, tb: TrainBatch, cfg, temperature: float, device="cpu") -> torch.Tensor:
    """policy_logprobs over the whole batch, micro-batch by micro-batch on `device` (as the learner config `cfg` cuts
    them), without gradient: [N, T] on the host, in the batch's row order."""
    order, logps = [], []
    for index, micro in learner_micro_batches(tb, cfg):
        order.append(index)
        logps.append(policy_logprobs(model, micro.to(device), temperature, cfg).cpu())
    return in_row_order(logps, order, shape=tuple(tb.response_mask.shape))
