"""The README's worked examples run as written. Each ```python example=<name> block of README.md is executed in a fresh
Python process, in a scratch folder that sees the repository's conf/ (as a newcomer runs it from the repository root),
and what it registers or writes is then used the way the loop uses it."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import child_env

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = re.compile(r"^```python example=(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)

# Appended to an example: build what it registered from the config, as the loop does.
REWARD_CHECK = """
from pathlib import Path
from hydra import compose, initialize_config_dir
from rewards import build_scorer
from rpo_core.config import validate_config
with initialize_config_dir(config_dir=str(Path("conf").resolve()), version_base=None):
    cfg = validate_config(compose(config_name="config", overrides=["reward.verifier=last_line"]))
result = build_scorer(cfg.reward, cfg.data).score(["The capital is\\nParis", "Lyon", "", "Paris\\n"],
                                                  ["Paris", "Paris", "Paris", "Paris"])
print(json.dumps({"correct": result.correct, "has_answer": result.has_answer}))
"""
DATASET_CHECK = """
from hydra import compose, initialize_config_dir
from transformers import AutoTokenizer
from rpo_core.config import validate_config
from rpo_core.data import load_problems
from rpo_core.models import prepare_model
with initialize_config_dir(config_dir=str(Path("conf").resolve()), version_base=None):
    cfg = validate_config(compose(config_name="config", overrides=[*overrides, "model=tiny"]))
splits = load_problems(cfg.data, AutoTokenizer.from_pretrained(prepare_model(cfg.model)))
rows = {split: [[p.question, p.gold] for p in getattr(splits, split)] for split in ("train", "test")}
print(json.dumps({"name": cfg.data.name, "skipped": splits.skipped["total"], **rows}))
"""


def readme_examples() -> dict[str, str]:
    return {name: code for name, code in EXAMPLE.findall((ROOT / "README.md").read_text())}


def run_example(name: str, folder: Path, check: str = "") -> str:
    """Run the README's example `name` (then `check`) from `folder`; its stdout."""
    (folder / "conf").symlink_to(ROOT / "conf")
    code = readme_examples()[name] + ("\nimport json\n" + check if check else "")
    proc = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=900,
                          env=child_env(PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, f"README example {name!r} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_readme_marks_every_worked_example():
    assert sorted(readme_examples()) == ["algorithm", "dataset", "python", "reward"]


def test_add_an_algorithm_trains_with_it(tmp_path):
    """The registered class is the one that trained: its advantages are +-1 (binary rewards in groups of 4 lie at
    least 0.25 from their mean, beyond the dead zone), so the mean |A| of a step is the share of groups whose rewards
    differ; GRPO's normalised advantages give 0.75-0.87 in such a group."""
    run_example("algorithm", tmp_path)
    out = tmp_path / "runs" / "sign_grpo"
    cfg = OmegaConf.load(out / "config.yaml")  # the checked config the run saved
    assert cfg.algorithm.name == "sign_grpo" and cfg.algorithm.dead_zone == 0.1  # the example's own option
    rows = metrics(out)
    assert [r["step"] for r in rows] == [0, 1, 2]
    group_size = cfg.rollout.group_size
    for r in rows[1:]:
        groups = r["samples"] // group_size
        assert r["advantage_abs_mean"] == pytest.approx(1 - r["dead_groups"] / groups), r
    assert any(r["dead_groups"] < r["samples"] // group_size and r["grad_norm"] > 0 for r in rows[1:])


def test_add_a_reward_is_what_the_config_builds(tmp_path):
    out = run_example("reward", tmp_path, REWARD_CHECK)
    assert out.splitlines()[0] == "[True, False]"  # the example's own print
    assert json.loads(out.splitlines()[-1]) == {"correct": [True, False, False, True],
                                                "has_answer": [True, True, False, True]}


def test_add_a_dataset_loads_its_rows(tmp_path):
    out = json.loads(run_example("dataset", tmp_path, DATASET_CHECK).splitlines()[-1])
    assert out["name"] == "my_sums" and out["skipped"] == 0
    assert len(out["train"]) == 128 and len(out["test"]) == 16
    assert out["test"][0] == ["What is 10 plus 8?", "18"]
    assert all(gold == str(sum(map(int, re.findall(r"\d+", q)))) for q, gold in out["train"] + out["test"])


@pytest.mark.full
def test_the_python_example_trains_with_rpo(tmp_path):
    run_example("python", tmp_path)
    rows = metrics(tmp_path / "runs" / "tiny_rpo")
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert "cache_init_seconds" in rows[0]  # RPO's cache was built before step 1
    assert all(r["rollout_tokens"] > 0 for r in rows[1:])
