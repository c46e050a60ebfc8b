"""A verifier for the tiny random model of the tests: a reward a model with random weights earns about half the time.

The end-to-end tests need rewards that differ inside groups (so advantages and gradients are nonzero) from a model that
cannot do arithmetic. `length_parity` pays 1 when the decoded response's character count has the parity the gold names
("even" or "odd"): it depends on every sampled token, varies across a group, and a policy can learn it."""
from __future__ import annotations

from collections import Counter

from rewards.scorer import ScoreResult


class LengthParityScorer:
    def score(self, texts: list[str], golds: list[str]) -> ScoreResult:
        if len(texts) != len(golds):
            raise ValueError(f"{len(texts)} responses but {len(golds)} gold answers")
        if not set(golds) <= {"even", "odd"}:
            raise ValueError(f"length_parity golds must be 'even' or 'odd', got {sorted(set(golds) - {'even', 'odd'})}")
        correct = [(len(t) % 2 == 0) == (g == "even") for t, g in zip(texts, golds)]
        verdicts = ["correct" if ok else "wrong" for ok in correct]
        stats = {f"reward_{k}": float(v) for k, v in Counter(verdicts).items()}
        return ScoreResult(correct=correct, has_answer=[True] * len(texts), verdicts=verdicts,
                           predictions=[str(len(t)) for t in texts], stats=stats)

    def close(self) -> None:
        pass
