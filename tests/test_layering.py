"""Imports point one way and sit at the top of files.

Layers, bottom up: rpo_core.common (records and helpers; imports no project package) <- algorithms, cache, rollout,
rewards (each may import rpo_core.common, and algorithms may import cache) <- the rest of rpo_core (the loop). Imports
written inside functions are kept for heavy optional dependencies and the two places that must stay light."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("rpo_core", "algorithms", "cache", "rollout", "rewards")
# package -> project packages it may import
ALLOWED = {
    "rpo_core.common": set(),
    "rewards": {"rpo_core.common"},
    "cache": {"rpo_core.common"},
    "rollout": {"rpo_core.common"},
    "algorithms": {"rpo_core.common", "cache"},
    "rpo_core": {"rpo_core.common", "algorithms", "cache", "rollout", "rewards"},
}
# imports allowed inside functions: heavy optional dependencies, and modules kept light on purpose
LAZY_OK = {"vllm", "deepspeed", "wandb",
           "rewards.judge",  # rewards/worker.py: the sandboxed worker loads sympy only once it is told to judge
           "rewards.shaping",  # rewards/__init__: reward workers import `rewards` and must not pull torch
           "transformers"}  # cache/cli.py: only when decoding is asked for (seconds of import otherwise)


def modules():
    for package in PROJECT:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            yield name, ast.parse(path.read_text())


def layer(module: str) -> str:
    return "rpo_core.common" if module.startswith("rpo_core.common") else module.split(".")[0]


def imported(node) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module]
    return []


@pytest.mark.parametrize("name,tree", list(modules()), ids=lambda x: x if isinstance(x, str) else "")
def test_imports_point_down_and_sit_at_the_top(name, tree):
    own = layer(name)
    for node in ast.walk(tree):
        for target in imported(node):
            if layer(target) in ALLOWED and layer(target) != own:
                assert layer(target) in ALLOWED[own], f"{name} imports {target}: {own} may import {ALLOWED[own]}"
    top = {id(n) for n in tree.body} | {id(n) for n in ast.walk(tree) if isinstance(n, ast.If)
                                         for n in n.body}  # `if TYPE_CHECKING:` blocks count as top level
    lazy = [t for n in ast.walk(tree) if id(n) not in top for t in imported(n)]
    bad = [t for t in lazy if not any(t == ok or t.startswith(ok + ".") for ok in LAZY_OK)]
    assert not bad, f"{name} imports {bad} inside a function"
