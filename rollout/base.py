"""The rollout engine protocol: token ids in, token ids + sampled-token logprobs out."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence

import torch


class SyncError(RuntimeError):
    """A weight sync that did not happen: the engine still holds the weights it had before the attempt."""


def stage_weights(named_tensors: Iterable[tuple[str, torch.Tensor]],
                  expected_shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Collect every tensor before the engine is touched, then check them: finite, and exactly the engine model's
    names and shapes. Any failure is a SyncError raised while the engine still holds its weights.

    The iterator is consumed to the end even when a tensor is bad: under ZeRO-3 it is a collective gather that every
    rank must finish, so stopping early on one rank would hang the others."""
    staged = {name: t.detach().contiguous() for name, t in named_tensors}
    bad = [name for name, t in staged.items() if not torch.isfinite(t).all()]
    if bad:
        raise SyncError(f"non-finite values in {len(bad)} tensor(s), e.g. {bad[:3]}")
    wrong = {n: tuple(t.shape) for n, t in staged.items() if expected_shapes.get(n) != tuple(t.shape)}
    missing = sorted(set(expected_shapes) - set(staged))
    if wrong or missing:
        raise SyncError(f"weights do not match the engine's model: wrong name or shape {dict(list(wrong.items())[:3])}, "
                        f"missing {missing[:3]}")
    return staged


@dataclass
class Generation:
    """One sampled continuation of one prompt."""

    token_ids: list[int]
    logprobs: list[float]  # logprob of each sampled token under the engine's current weights (after temperature)
    finished: bool  # False when the token budget ran out before EOS
    text: str


@dataclass
class GenerationRequest:
    """Prompt ids (for RPO: question + kept prefix), how many samples, and the token budget."""

    prompt_ids: Sequence[int]
    n: int
    max_new_tokens: int
    seed: int | None = None  # per-request sampling seed: makes sampling independent of batch composition


class RolloutEngine(Protocol):
    def generate(self, requests: list[GenerationRequest], temperature: float) -> list[list[Generation]]:
        """Sample request.n continuations per request (temperature 0 = greedy)."""

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Replace the engine's weights in place; returns how many tensors were loaded."""

    def sequence_logprobs(self, prompt_ids: Sequence[int], response_ids: Sequence[int]) -> list[float]:
        """Logprobs the engine assigns to a fixed response (for sync checks)."""

    def close(self) -> None:
        """Release what the engine holds outside the process (e.g. weight files in shared memory)."""
