"""The DeepSpeed ZeRO learner: logprobs of rollout tokens, one optimizer step per call, full weights for sync."""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from transformers import AutoModelForCausalLM

from rpo_core.batching import TrainBatch

LossFn = Callable[[torch.Tensor, TrainBatch], tuple[torch.Tensor, dict]]


def response_logprobs(model, tb: TrainBatch, temperature: float) -> torch.Tensor:
    """log pi(y_j | x, y_<j) / for every response token j: [N, T], zero on padding."""
    T = tb.response_mask.shape[1]
    out = model(
        input_ids=tb.input_ids,
        attention_mask=tb.attention_mask,
        position_ids=tb.position_ids,
        use_cache=False,
        logits_to_keep=T + 1,  # the logits at columns P-1 .. P+T-1; only the first T predict response tokens
    )
    logits = out.logits[:, :T].float() / temperature
    targets = tb.input_ids[:, -T:]
    logp = logits.gather(-1, targets[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)
    return logp * tb.response_mask


class DeepSpeedLearner:
    """One DeepSpeed engine over a Hugging Face causal LM; ZeRO stage 0-3 from config."""

    def __init__(self, model_path: str, cfg, optim_cfg, temperature: float, world_size: int = 1):
        import deepspeed

        self.cfg, self.temperature, self.world_size = cfg, temperature, world_size
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.dtype]
        # Built normally (not under zero.Init, which skips transformers' weight init) and partitioned by initialize().
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        # A plain torch optimizer: DeepSpeed's fused/CPU Adam would JIT-compile for a minute or more.
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=optim_cfg.lr,
            betas=tuple(optim_cfg.betas),
            weight_decay=optim_cfg.weight_decay,
            eps=optim_cfg.eps,
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

    # ---------------------------------------------------------------- forward
    @torch.no_grad()
    def logprobs(self, tb: TrainBatch) -> torch.Tensor:
        """Learner logprobs of the batch's response tokens, micro-batch by micro-batch, no gradient."""
        chunks = [
            response_logprobs(self.engine, tb.rows(i, i + self.cfg.micro_batch_size), self.temperature)
            for i in range(0, len(tb), self.cfg.micro_batch_size)
        ]
        return _cat_padded(chunks)

    # ---------------------------------------------------------------- update
    def train_step(self, tb: TrainBatch, loss_fn: LossFn) -> dict:
        """One optimizer step on `tb`: gradients accumulated over micro-batches, each weighted by its share.

        loss_fn(logp, micro) must return the loss of `micro` normalised as if it were the whole batch; we weight it by
        the micro-batch's share (token share for token-mean, row share otherwise), which makes the sum of the micro
        losses equal the full-batch loss exactly."""
        mb = self.cfg.micro_batch_size
        # Normalisers over the whole mini-batch, across ranks when each rank holds a shard of it.
        totals = torch.tensor([tb.loss_mask.sum().item(), float(len(tb))])
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(totals)
        tokens_total, rows_total = totals[0].clamp(min=1), totals[1].clamp(min=1)
        stats_sum: dict[str, float] = {}
        logps, finite = [], True
        for i in range(0, len(tb), mb):
            micro = tb.rows(i, i + mb)
            logp = response_logprobs(self.engine, micro, self.temperature)
            loss, stats = loss_fn(logp, micro)
            share = micro.loss_mask.sum() / tokens_total if stats.pop("_token_level") else len(micro) / rows_total
            logps.append(logp.detach())
            if not torch.isfinite(loss):
                finite = False  # a non-finite loss would poison the weights: no backward, and no step below
                continue
            # DeepSpeed averages gradients over ranks; each rank holds 1/world of the batch.
            self.engine.backward(loss * share * self.world_size)
            for k, v in stats.items():
                stats_sum[k] = stats_sum.get(k, 0.0) + float(v) * float(share) * self.world_size
        norm = None
        if finite and self.cfg.zero_stage < 2:  # full gradients sit in .grad until step(); ZeRO-2/3 report their own
            grads = [p.grad.float() for p in self.engine.module.parameters() if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else None
        if finite:
            self.engine.step()
            norm = self.engine.get_global_grad_norm() if norm is None else norm
        else:
            self.engine.zero_grad()
        stats_sum.update(
            grad_norm=float("nan") if norm is None else float(norm),
            update_skipped=float(not finite),
            lr=float(self.engine.get_lr()[0]),
        )
        stats_sum["_logp"] = _cat_padded(logps)
        return stats_sum

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


def _cat_padded(chunks: list[torch.Tensor]) -> torch.Tensor:
    T = max(c.shape[1] for c in chunks)
    return torch.cat([torch.nn.functional.pad(c, (0, T - c.shape[1])) for c in chunks])
