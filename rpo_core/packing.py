"""How the learner lays out a TrainBatch (host tensors, no model): each group's shared-prefix packed row and its block
mask, the plan of micro-batches, the rows a step computes, and micro-batch results put back in the batch's row order."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from rpo_core.common.batching import TrainBatch


class PackedGroup(NamedTuple):
    """One group's packed row [shared, suffix_1, ..., suffix_G]: token ids, positions and segments (0 shared, k suffix
    k), each [L]; and for every row's response token j the packed index of the state that predicts it, [G, T]."""
    ids: torch.Tensor
    positions: torch.Tensor
    segments: torch.Tensor
    index: torch.Tensor


def packed_groups(input_ids: torch.Tensor, attention_mask: torch.Tensor, G: int, P: int) -> list[PackedGroup]:
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
    """Number of leading tokens every sequence of `seqs` shares."""
    n = min(len(s) for s in seqs)
    same = torch.stack([s[:n] for s in seqs]).eq(seqs[0][:n]).all(dim=0)
    return int(n if same.all() else same.int().argmin())


def packed_mask(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, L, L] additive mask of packed rows (segments [B, L]: 0 shared, k suffix k, -1 padding): causal inside
    the shared part and inside each suffix, and every suffix sees the whole shared part; nothing else. (Padding,
    last in its row, sees the shared part and itself, so no row of the softmax is empty.)"""
    L = segments.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    allowed = causal & ((segments[:, :, None] == segments[:, None]) | (segments[:, None] == 0))
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


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
    packs = packed_groups(tb.input_ids.cpu(), tb.attention_mask.cpu(), tb.group_size, P)
    return torch.tensor([len(pack.ids) for pack in packs])


def learner_micro_batches(tb: TrainBatch, cfg) -> list[tuple[torch.Tensor, TrainBatch]]:
    """(row numbers, rows trimmed to their own widths) of each micro-batch, as the learner config `cfg` cuts them."""
    return [(index, tb.select(index).trimmed())
            for index in micro_batches(tb, cfg.micro_batch_size, cfg.shared_prefix, cfg.micro_batch_tokens)]


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


def in_row_order(chunks: list[torch.Tensor], order: list[torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
    """Micro-batch results (rows `order[k]` of the batch, trimmed) as one [N, T] tensor in the batch's row order;
    NaN on rows no micro-batch computed."""
    out = torch.full(shape, float("nan"))
    out[torch.cat(order)] = torch.cat([F.pad(c, (0, shape[1] - c.shape[1])) for c in chunks])
    return out
