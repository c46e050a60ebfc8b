"""Shared fixtures: the tiny random model (built once, cached on disk) and the environment DeepSpeed/vLLM need."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rpo_core.distributed import configure_environment  # noqa: E402

configure_environment("cpu")


def compose(*overrides: str):
    """The project config as `rpo-train` would compose it, with overrides."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return hydra_compose(config_name="config", overrides=list(overrides))


def child_env(**extra: str) -> dict:
    """Environment for a child `rpo-train`: without the launcher variables the `dist` fixture set in this process,
    which would make the child join (and collide with) this process's distributed world."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, **extra}


def run_cli(module: str, *args: str, check: bool = True) -> "subprocess.CompletedProcess":
    """`python -m module args...` from the repository root in a child environment; check: fail with its output."""
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env=child_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    from rpo_core.models import prepare_model

    return prepare_model(compose("model=tiny").model)


def fresh_world_group() -> None:
    """Before each DeepSpeed engine in a test process: DeepSpeed caches a clone of the world group, which a later
    engine may find unregistered ('Group ... is not registered') once an earlier one is gone."""
    import deepspeed.utils.groups

    deepspeed.utils.groups._WORLD_GROUP = None


@pytest.fixture(scope="session")
def dist():
    """A single-process gloo world, set up the way rpo-train does it (before any engine is built)."""
    from rpo_core.distributed import init_distributed

    return init_distributed("gloo")
