"""The training data order: a seeded permutation per epoch, read sequentially from a position the loop's state holds."""
from __future__ import annotations

import random
from dataclasses import dataclass

from rpo_core.common.types import Problem


@dataclass(frozen=True)
class DataPosition:
    epoch: int = 0
    index: int = 0  # next position in the epoch's permutation


class PromptSampler:
    """`take(position, n)` -> (n problems, next position): a pure function of (seed, position), so a checkpoint only
    needs the position."""

    def __init__(self, problems: list[Problem], seed: int):
        if not problems:
            raise ValueError("the training split is empty: nothing to sample")
        self.problems, self.seed = problems, seed

    def permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.problems)))
        random.Random(f"{self.seed}:{epoch}").shuffle(order)  # a function of (seed, epoch): resumable without RNG state
        return order

    def take(self, position: DataPosition, n: int) -> tuple[list[Problem], DataPosition]:
        epoch, index, order, out = position.epoch, position.index, self.permutation(position.epoch), []
        while len(out) < n:
            if index == len(order):
                epoch, index = epoch + 1, 0
                order = self.permutation(epoch)
            out.append(self.problems[order[index]])
            index += 1
        return out, DataPosition(epoch, index)
