"""The training data order: a seeded permutation per epoch, read sequentially; its position is checkpoint state."""
from __future__ import annotations

import random

from rpo_core.types import Problem


class PromptSampler:
    def __init__(self, problems: list[Problem], seed: int):
        if not problems:
            raise ValueError("the training split is empty: nothing to sample")
        self.problems, self.seed = problems, seed
        self.epoch, self.index = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.problems)))
        random.Random(f"{self.seed}:{epoch}").shuffle(order)  # a function of (seed, epoch): resumable without RNG state
        return order

    def next(self, n: int) -> list[Problem]:
        out = []
        while len(out) < n:
            if self.index == len(self._order):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            out.append(self.problems[self._order[self.index]])
            self.index += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "size": len(self.problems)}

    def load_state_dict(self, state: dict) -> None:
        if state["size"] != len(self.problems):
            raise ValueError(f"checkpoint data order covers {state['size']} problems, this run has {len(self.problems)}")
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = self._permutation(self.epoch)
