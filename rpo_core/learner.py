"""The DeepSpeed ZeRO learner (logprobs of rollout tokens, one optimizer step per call, full weights for sync) and
the frozen reference model of the KL penalty. The tensor math they run is in rpo_core.logprobs (log-probabilities)
and rpo_core.packing (packed rows, micro-batch plans)."""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM

from rpo_core.common.batching import TrainBatch
from rpo_core.common.types import StepResult
from rpo_core.common.util import DTYPES
from rpo_core.logprobs import batched_logprobs, check_direct_head, policy_logprobs
from rpo_core.packing import combine_stats, computed_rows, in_row_order, learner_micro_batches

LossFn = Callable[[torch.Tensor, TrainBatch], tuple[torch.Tensor, dict]]


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
        return StepResult(logprobs=in_row_order(logps, order, shape=tuple(tb.response_mask.shape)), stats=stats,
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
