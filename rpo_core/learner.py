"""The DeepSpeed ZeRO learner (logprobs of rollout tokens, one optimizer step per call, full weights for sync) and
the frozen reference model of the KL penalty."""
from __future__ import annotations

from typing import Callable, Iterator, NamedTuple, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from torch.utils.checkpoint import checkpoint
from transformers import AutoModelForCausalLM

from rpo_core.common.batching import TrainBatch
from rpo_core.common.checks import ConfigError
from rpo_core.common.types import StepResult
from rpo_core.common.util import DTYPES

LossFn = Callable[[torch.Tensor, TrainBatch], tuple[torch.Tensor, dict]]
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
    """log pi(y_j | x, y_<j) / for every response token j: [N, T], zero on padding.

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
    packs = _packed_groups(input_ids, tb.attention_mask.cpu(), G, P)
    width = max(len(pack.ids) for pack in packs)

    def padded(field: str, value: int) -> torch.Tensor:
        return torch.stack([F.pad(getattr(pack, field), (0, width - len(pack.ids)), value=value) for pack in packs])

    device = tb.input_ids.device
    hidden = hf.get_decoder()(input_ids=padded("ids", 0).to(device),
                              attention_mask=_packed_mask(padded("segments", -1), _float_dtype(hf)).to(device),
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
    packs = _packed_groups(input_ids, tb.attention_mask.cpu(), G, P)
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


class PackedGroup(NamedTuple):
    """One group's packed row [shared, suffix_1, ..., suffix_G]: token ids, positions and segments (0 shared, k suffix
    k), each [L]; and for every row's response token j the packed index of the state that predicts it, [G, T]."""
    ids: torch.Tensor
    positions: torch.Tensor
    segments: torch.Tensor
    index: torch.Tensor


def _packed_groups(input_ids: torch.Tensor, attention_mask: torch.Tensor, G: int, P: int) -> list[PackedGroup]:
    """The packed row of every group of G consecutive rows (host tensors)."""
    return [_packed_group(input_ids[g : g + G], attention_mask[g : g + G], P) for g in range(0, len(input_ids), G)]


def _packed_group(input_ids: torch.Tensor, attention_mask: torch.Tensor, P: int) -> PackedGroup:
    """The packed row of a group's rows (prompts left-padded to P, responses right-padded)."""
    T = input_ids.shape[1] - P
    seqs = [ids[mask.bool()] for ids, mask in zip(input_ids, attention_mask)]  # prompt + response, unpadded
    shared = min(_common_prefix(seqs), min(len(s) for s in seqs) - 1)  # every row keeps at least one token of its own
    suffixes = [s[shared:] for s in seqs]
    ids = torch.cat([seqs[0][:shared], *suffixes])
    positions = torch.cat([torch.arange(shared), *[torch.arange(shared, len(s)) for s in seqs]])
    segments = torch.cat([torch.zeros(shared, dtype=torch.long)] +
                         [torch.full((len(s),), k + 1, dtype=torch.long) for k, s in enumerate(suffixes)])
    starts = torch.tensor([shared + sum(len(x) for x in suffixes[:k]) for k in range(len(seqs))])
    before = torch.arange(T) + int(attention_mask[0, :P].sum()) - 1  # position of the state predicting token j
    index = torch.where(before[None] < shared, before[None], starts[:, None] + (before[None] - shared))
    return PackedGroup(ids, positions, segments, index)


def _common_prefix(seqs: list[torch.Tensor]) -> int:
    n = min(len(s) for s in seqs)
    same = torch.stack([s[:n] for s in seqs]).eq(seqs[0][:n]).all(dim=0)
    return int(n if same.all() else same.int().argmin())


def _packed_mask(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, L, L] additive mask of packed rows (segments [B, L]: 0 shared, k suffix k, -1 padding): causal inside
    the shared part and inside each suffix, and every suffix sees the whole shared part; nothing else. (Padding,
    last in its row, sees the shared part and itself, so no row of the softmax is empty.)"""
    L = segments.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    allowed = causal & ((segments[:, :, None] == segments[:, None]) | (segments[:, None] == 0))
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def _float_dtype(model) -> torch.dtype:
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


def micro_batches(tb: TrainBatch, size: int, shared_prefix: bool, tokens: int = 0) -> list[torch.Tensor]:
    """Row numbers of each micro-batch of `tb`: every `size` rows in order (whole groups with shared_prefix), or with
    tokens > 0 whole groups sorted by length and cut before the decoder's input passes `tokens`, so short groups share
    a micro-batch instead of being padded to the long ones. That input is rows x (longest prompt + longest response)
    (the trimmed micro-batch), or with shared_prefix groups x the longest packed row. (Whole groups: RAPID's group
    baseline is computed inside the loss.)"""
    if not tokens:
        size = max(1, size // tb.group_size) * tb.group_size if shared_prefix else size
        return [torch.arange(i, min(i + size, len(tb))) for i in range(0, len(tb), size)]
    G = tb.group_size
    T = tb.response_mask.shape[1]
    prompt_len = tb.attention_mask[:, :-T].sum(1).view(-1, G).amax(1)
    response_len = tb.response_mask.sum(1).view(-1, G).amax(1)
    packed_len = packed_lengths(tb) if shared_prefix else None

    def input_tokens(units: list[int]) -> int:
        if shared_prefix:
            return len(units) * int(packed_len[units].max())
        return len(units) * G * int(prompt_len[units].max() + response_len[units].max())

    cuts = [[]]
    for u in torch.argsort(packed_len if shared_prefix else prompt_len + response_len, stable=True).tolist():
        if cuts[-1] and input_tokens(cuts[-1] + [u]) > tokens:
            cuts.append([])
        cuts[-1].append(u)
    return [torch.cat([torch.arange(u * G, (u + 1) * G) for u in cut]) for cut in cuts]


def packed_lengths(tb: TrainBatch) -> torch.Tensor:
    """Length of each group's packed row (shared tokens once, then every row's own suffix): [groups]."""
    P = tb.input_ids.shape[1] - tb.response_mask.shape[1]
    packs = _packed_groups(tb.input_ids.cpu(), tb.attention_mask.cpu(), tb.group_size, P)
    return torch.tensor([len(pack.ids) for pack in packs])


def learner_micro_batches(tb: TrainBatch, cfg) -> list[tuple[torch.Tensor, TrainBatch]]:
    """(row numbers, rows trimmed to their own widths) of each micro-batch, as the learner config `cfg` cuts them."""
    return [(index, tb.select(index).trimmed())
            for index in micro_batches(tb, cfg.micro_batch_size, cfg.shared_prefix, cfg.micro_batch_tokens)]


@torch.no_grad()
def batched_logprobs(model, tb: TrainBatch, cfg, temperature: float, device="cpu") -> torch.Tensor:
    """policy_logprobs over the whole batch, micro-batch by micro-batch on `device` (as the learner config `cfg` cuts
    them), without gradient: [N, T] on the host, in the batch's row order."""
    order, logps = [], []
    for index, micro in learner_micro_batches(tb, cfg):
        order.append(index)
        logps.append(policy_logprobs(model, micro.to(device), temperature, cfg).cpu())
    return _in_row_order(logps, order, shape=tuple(tb.response_mask.shape))


def combine_stats(parts: list[tuple[dict, float]]) -> dict[str, float]:
    """Micro-batch stats -> mini-batch stats: `*_max` by max, `*_min` by min, the rest weighted by each share (of
    the shares given: the mean over the micro-batches computed)."""
    out: dict[str, float] = {}
    total = sum(share for _, share in parts) or 1.0
    for stats, share in parts:
        share = share / total
        for k, v in stats.items():
            v = float(v)
            if k.endswith("_max"):
                out[k] = max(out.get(k, -float("inf")), v)
            elif k.endswith("_min"):
                out[k] = min(out.get(k, float("inf")), v)
            else:
                out[k] = out.get(k, 0.0) + v * share
    return out


class ReferenceModel:
    """Frozen copy of the initial policy for the KL penalty (loaded only when algorithm.kl_coef > 0)."""

    def __init__(self, model_path: str, learner_cfg, temperature: float, device="cpu"):
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval().requires_grad_(False)
        self.model.to(device)
        self.cfg, self.temperature, self.device = learner_cfg, temperature, device

    def logprobs(self, tb: TrainBatch) -> torch.Tensor:
        return batched_logprobs(self.model, tb, self.cfg, self.temperature, self.device)


class DeepSpeedLearner:
    """One DeepSpeed engine over a Hugging Face causal LM; ZeRO stage 0-3 from config."""

    def __init__(self, model_path: str, cfg, optim_cfg, temperature: float, world_size: int = 1):
        import deepspeed

        self.cfg, self.temperature, self.world_size = cfg, temperature, world_size
        # Built normally (not under zero.Init, which skips transformers' weight init) and partitioned by initialize().
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=DTYPES[cfg.dtype])
        check_direct_head(model.config, cfg)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        # torch's fused AdamW (CPU and CUDA): DeepSpeed's own fused/CPU Adam would JIT-compile for a minute or more,
        # and torch's default (foreach) takes 3-4x its time on the CPU, through whole-model temporaries.
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=optim_cfg.lr,
            betas=tuple(optim_cfg.betas),
            weight_decay=optim_cfg.weight_decay,
            eps=optim_cfg.eps,
            fused=True,
        )
        ds_config = {
            "train_micro_batch_size_per_gpu": 1,  # nominal: micro-batching is done here, see train_step
            "gradient_accumulation_steps": 1,
            "managed_gradient_accumulation": False,  # step() is the accumulation boundary, whatever the micro count
            "gradient_clipping": optim_cfg.grad_clip,
            "zero_optimization": {"stage": cfg.zero_stage, "overlap_comm": False, "contiguous_gradients": False},
            "bf16": {"enabled": cfg.dtype == "bfloat16"},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        self.engine.train()
        self.device = self.engine.device  # where DeepSpeed put the model (cpu, or this rank's cuda device)

    def logprobs(self, tb: TrainBatch) -> torch.Tensor:
        """The current policy's logprobs of the batch, no gradient (pi_old before several steps on one rollout)."""
        return batched_logprobs(self.engine, tb, self.cfg, self.temperature, self.device)

    def train_step(self, tb: TrainBatch, loss_fn: LossFn, token_level: bool,
                   inert_groups: Optional[torch.Tensor] = None) -> StepResult:
        """One optimizer step on `tb`: gradients accumulated over micro-batches, each weighted by its share.

        loss_fn(logp, micro) must return the loss of `micro` normalised as if it were the whole batch; we weight it by
        the micro-batch's share (token share when the loss is a token mean, row share otherwise), which makes the sum of
        the micro losses equal the full-batch loss exactly. inert_groups [B] bool (Algorithm.inert_groups): groups
        whose loss and gradient are exactly zero; they stay in the normalisers but are not computed, so the step is
        the whole batch's (their logprobs come back NaN, the stats cover the computed rows)."""
        # Normalisers over the whole mini-batch, across ranks when each rank holds a shard of it.
        totals = self._reduced([tb.loss_mask.sum().item(), float(len(tb))])
        tokens_total, rows_total = totals[0].clamp(min=1).item(), totals[1].clamp(min=1).item()
        rows = computed_rows(tb, inert_groups)
        micros = [(rows[index], micro) for index, micro in learner_micro_batches(tb.select(rows), self.cfg)]
        parts, logps, order, finite = [], [], [], True
        for k, (index, micro) in enumerate(self._same_count_on_every_rank(micros)):
            repeat = k >= len(micros)  # a zero-weight pass that only keeps this rank in step with the others
            micro = micro.to(self.device)
            logp = policy_logprobs(self.engine, micro, self.temperature, self.cfg)
            loss, stats = loss_fn(logp, micro)
            share = 0.0 if repeat else float(micro.loss_mask.sum().item() / tokens_total if token_level
                                             else len(micro) / rows_total)
            if not repeat:
                logps.append(logp.detach().cpu())
                order.append(index)
            if not torch.isfinite(loss):  # it would poison the weights: no step below, on any rank
                finite, loss, share = False, logp.nan_to_num().sum(), 0.0  # a zero-weight backward only
            # DeepSpeed averages gradients over ranks; each rank holds 1/world of the batch.
            self.engine.backward(loss * share * self.world_size)
            if share:
                parts.append((stats, share * self.world_size))
        norm = None
        if self.cfg.zero_stage < 2:  # full gradients sit in .grad until step(); ZeRO-2/3 report their own
            grads = [p.grad.float() for p in self.engine.module.parameters() if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else None
            finite = finite and (norm is None or bool(torch.isfinite(norm)))  # a finite loss can still give NaN grads
        # one rank's non-finite loss skips the step everywhere (every rank still ran each backward, where ZeRO-2/3
        # reduce): all step, or none, so the ranks keep the same weights
        finite = bool(self._reduced([float(finite)], dist.ReduceOp.MIN).item())
        if finite:
            self.engine.step()
            # ZeRO-1/2/3 check their partitioned gradients' norm themselves and skip a non-finite step on every rank
            finite = self.engine.was_step_applied()
            norm = (self.engine.get_global_grad_norm() if finite else float("nan")) if norm is None else norm
        else:
            self._drop_gradients()
        stats = combine_stats(parts)
        stats["lr"] = float(self.engine.get_lr()[0])
        return StepResult(logprobs=_in_row_order(logps, order, shape=tuple(tb.response_mask.shape)), stats=stats,
                          skipped=not finite, grad_norm=float("nan") if norm is None else float(norm),
                          rows_computed=len(rows))

    def _drop_gradients(self) -> None:
        """Forget the gradients accumulated for a step that will not be taken. ZeRO-1/2 hold them, reduced, in the
        optimizer's partitions, which engine.zero_grad() leaves in place (the next step would add them in): they are
        cleared the way the overflow branch of DeepSpeed's ZeRO step clears them."""
        self.engine.zero_grad()
        if self.cfg.zero_stage in (1, 2):
            zero = self.engine.optimizer
            zero.zero_grad(set_to_none=True)
            zero._release_preflattened_grad_buffers()
            for held in (zero.averaged_gradients, zero.all_grad_tensors):  # reduced at the step, accumulated until it
                for group in held:
                    held[group] = None

    def _reduced(self, values: list[float], op=dist.ReduceOp.SUM) -> torch.Tensor:
        """`values` reduced over every rank (as they are with one rank); on this rank's device (nccl: the GPU)."""
        out = torch.tensor(values, device=self.device)
        if self.world_size > 1:
            dist.all_reduce(out, op=op)
        return out

    def _same_count_on_every_rank(self, micros: list) -> list:
        """`micros`, followed by repeats of its first micro-batch until every rank has as many: ZeRO-2/3 reduce
        gradients in each backward, a collective every rank must join (ranks' shards can cut into different counts)."""
        count = int(self._reduced([len(micros)], dist.ReduceOp.MAX).item())
        return micros + [micros[0]] * (count - len(micros))

    # ---------------------------------------------------------------- weights out
    def full_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, full tensor) for every parameter; under ZeRO-3 gathered one parameter at a time (a collective)."""
        if self.cfg.zero_stage == 3:
            import deepspeed

            for name, p in self.engine.module.named_parameters():
                with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                    yield name, p.data.detach().clone()
        else:
            for name, p in self.engine.module.named_parameters():
                yield name, p.data.detach()

    @property
    def num_parameters(self) -> int:
        return sum(1 for _ in self.engine.module.named_parameters())

    def save(self, folder: str) -> None:
        """Weights and optimizer state, per ZeRO partition (every rank writes its part)."""
        self.engine.save_checkpoint(folder, tag="state")

    def load(self, folder: str) -> None:
        self.engine.load_checkpoint(folder, tag="state", load_optimizer_states=True, load_lr_scheduler_states=True)


def computed_rows(tb: TrainBatch, inert_groups: Optional[torch.Tensor]) -> torch.Tensor:
    """Row numbers of the groups not marked inert (all rows without a mask). If every group is inert the first is
    computed anyway: every parameter then gets its (zero) gradient, so Adam still steps (its momentum moves the
    weights) as on the whole batch, and every rank joins the gradient reduction."""
    if inert_groups is None:
        return torch.arange(len(tb))
    live = ~inert_groups.bool().cpu()
    if not live.any() and len(live):
        live[0] = True
    return (live.nonzero() * tb.group_size + torch.arange(tb.group_size)).reshape(-1)


def _in_row_order(chunks: list[torch.Tensor], order: list[torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
    """Micro-batch results (rows `order[k]` of the batch, trimmed) as one [N, T] tensor in the batch's row order;
    NaN on rows no micro-batch computed."""
    out = torch.full(shape, float("nan"))
    out[torch.cat(order)] = torch.cat([F.pad(c, (0, shape[1] - c.shape[1])) for c in chunks])
    return out
