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


def top_level(body: list[ast.stmt]):
    """The statements a module runs when imported: its own, and those inside its `if` (TYPE_CHECKING included),
    `try`, `with` and loop blocks; not the bodies of functions and classes."""
    for node in body:
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                yield from top_level([child])
            elif isinstance(getattr(child, "body", None), list):  # an `except` clause, a `case`
                yield from top_level(child.body)


def imported_names(node) -> list[str]:
    """What an import statement binds, fully named (`from rewards import shaping` -> rewards.shaping)."""
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [f"{node.module}.{a.name}" for a in node.names]
    return imported(node)


def misplaced_imports(tree: ast.Module) -> list[str]:
    """Names imported below the top level (inside a function or class) that are not in LAZY_OK."""
    top = {id(n) for n in top_level(tree.body)}
    lazy = [t for n in ast.walk(tree) if id(n) not in top for t in imported_names(n)]
    return [t for t in lazy if not any(t == ok or t.startswith(ok + ".") for ok in LAZY_OK)]


@pytest.mark.parametrize("name,tree", list(modules()), ids=lambda x: x if isinstance(x, str) else "")
def test_imports_point_down_and_sit_at_the_top(name, tree):
    own = layer(name)
    for node in ast.walk(tree):
        for target in imported(node):
            if layer(target) in ALLOWED and layer(target) != own:
                assert layer(target) in ALLOWED[own], f"{name} imports {target}: {own} may import {ALLOWED[own]}"
    bad = misplaced_imports(tree)
    assert not bad, f"{name} imports {bad} inside a function or class"


def test_the_top_level_is_what_runs_at_import():
    """Imports in module-level `if`/`try` blocks sit at the top; one inside a function or method is lazy, also inside
    an `if` or `try` there, and is flagged unless it is a heavy optional dependency (LAZY_OK)."""
    source = """
import os
if TYPE_CHECKING:
    import torch
try:
    import numpy
except ImportError:
    from json import loads
def run():
    import deepspeed
    if os.environ:
        import sympy
        from rewards import shaping
class Engine:
    def start(self):
        try:
            import vllm
        except ImportError:
            from torch import nn
"""
    assert misplaced_imports(ast.parse(source)) == ["sympy", "torch.nn"]
