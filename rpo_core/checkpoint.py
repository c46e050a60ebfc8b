"""Atomic checkpoints: <output_dir>/checkpoints/step_NNNNNN/ appears only when complete (written under a temporary
name, then renamed). Contents:

    hf/            full weights in Hugging Face format (loadable by transformers and vLLM as they are)
    meta.json      the step and its training wall time (what rpo-eval reads; kept with hf/ by trainer.keep_hf)
    deepspeed/     DeepSpeed engine state: weights and optimizer state, per ZeRO partition
    trainer.pt     the TrainState (step, data position, pending mini-batches, engine step), RNG states, cache state
"""
from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file

from rpo_core.common.types import RolloutBatch
from rpo_core.sampler import DataPosition

PREFIX = "step_"


@dataclass
class TrainState:
    """What changes from step to step; a checkpoint saves and restores it whole (with the RNG and cache states)."""

    step: int = 0  # optimizer steps done
    data: DataPosition = DataPosition()  # where the next rollout's prompts are read from
    pending: list[RolloutBatch] = field(default_factory=list)  # mini-batches generated, not yet trained on (RAPID: H)
    engine_step: int = 0  # the policy step whose weights the rollout engine holds
    sync_failures: int = 0  # weight syncs failed in a row
    bad_steps: int = 0  # updates skipped for a non-finite loss in a row
    train_wall_s: float = 0.0  # training wall time up to the end of `step` (rpo_core.metrics.TrainClock)


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (missing, incomplete, or from a different setup)."""


def checkpoint_root(output_dir) -> Path:
    return Path(output_dir) / "checkpoints"


def is_complete(path) -> bool:
    """A checkpoint is complete when trainer.pt is in it: it is written last, just before the atomic rename."""
    return (Path(path) / "trainer.pt").is_file()


def complete_checkpoints(output_dir) -> list[Path]:
    """Finished checkpoints, oldest first (a temporary directory is never one of them)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and is_complete(p)]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def evaluable_checkpoints(output_dir) -> tuple[list[Path], list[Path]]:
    """(checkpoints whose weights can be evaluated: hf/ and meta.json present, oldest first; the step_* and temporary
    folders that lack them: incomplete, to report and skip)."""
    root = checkpoint_root(output_dir)
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    ready = [p for p in folders if p.name.startswith(PREFIX) and (p / "meta.json").is_file()
             and (p / "hf" / "model.safetensors").is_file()]
    return sorted(ready, key=lambda p: int(p.name[len(PREFIX):])), [p for p in folders if p not in ready]


def read_meta(path) -> dict:
    """A checkpoint's meta.json: {"step": int, "train_wall_s": float}."""
    return json.loads((Path(path) / "meta.json").read_text())


def resolve_resume(resume, output_dir) -> Path | None:
    """trainer.resume: null -> None; auto -> newest complete checkpoint (or None); a path -> that checkpoint."""
    if resume in (None, "", False):
        return None
    if resume == "auto":
        found = complete_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not is_complete(path):
        raise CheckpointError(f"trainer.resume={resume}: not a complete checkpoint (no {path / 'trainer.pt'})")
    return path


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(c, state: TrainState, pause=None) -> Path:
    """Write every rank's part, then (rank 0) rename the temporary directory into place and prune old ones.
    `pause(point)` is a test hook called between the parts."""
    final = checkpoint_root(c.output_dir) / f"{PREFIX}{state.step:06d}"
    tmp = final.with_name(f".tmp-{final.name}")
    if c.placement.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "hf").mkdir(parents=True)
    dist.barrier()
    weights = {name: t.contiguous() for name, t in c.learner.full_weights()}  # every rank gathers (ZeRO-3)
    if c.placement.is_main:
        save_file(weights, str(tmp / "hf" / "model.safetensors"), metadata={"format": "pt"})
        for f in Path(c.model_path).iterdir():  # config, generation config, tokenizer
            if f.is_file() and f.suffix != ".safetensors" and not f.name.endswith(".bin") and f.name != "rpo_model.json":
                shutil.copy2(f, tmp / "hf" / f.name)
    del weights
    if c.placement.is_main:
        (tmp / "meta.json").write_text(json.dumps({"step": state.step, "train_wall_s": state.train_wall_s}))
    _call(pause, "hf_written")
    c.learner.save(str(tmp / "deepspeed"))
    _call(pause, "deepspeed_written")
    if c.placement.is_main:
        torch.save({"state": dict(vars(state)), "rng": rng_state(), "planner": c.planner.state(),
                    "config_algorithm": c.cfg.algorithm.name}, tmp / "trainer.pt")
        fsync_tree(tmp)
        _call(pause, "before_rename")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        for old in complete_checkpoints(c.output_dir)[: -c.cfg.trainer.keep_last]:
            _prune(old, keep_weights=c.cfg.trainer.keep_hf)
        oldest = complete_checkpoints(c.output_dir)[0]
        c.planner.compact(int(oldest.name[len(PREFIX):]))  # history older than every kept checkpoint is unreachable
    dist.barrier()
    return final


def _prune(path: Path, keep_weights: bool) -> None:
    """Remove an old checkpoint; keep_weights: only its resume state (deepspeed/, trainer.pt: the big part), leaving
    hf/ and meta.json for off-the-clock evaluation. trainer.pt goes first, so the folder stops being resumable at once."""
    if not keep_weights:
        shutil.rmtree(path, ignore_errors=True)
        return
    (path / "trainer.pt").unlink(missing_ok=True)
    shutil.rmtree(path / "deepspeed", ignore_errors=True)


def load_checkpoint(c, path: Path) -> TrainState:
    """Restore learner (weights and optimizer state), RNG and the train state; roll the planner back to this step."""
    saved = torch.load(path / "trainer.pt", weights_only=False)
    if saved["config_algorithm"] != c.cfg.algorithm.name:
        raise CheckpointError(f"checkpoint {path} was written by algorithm={saved['config_algorithm']}, "
                              f"this run is algorithm={c.cfg.algorithm.name}")
    c.learner.load(str(path / "deepspeed"))
    set_rng_state(saved["rng"])
    state = TrainState(**saved["state"])
    if c.planner is not None:
        try:
            c.planner.restore(state.step, saved["planner"])
        except ValueError as e:
            raise CheckpointError(f"checkpoint {path}: {e}") from None
    return state


def _call(hook, point: str) -> None:
    if hook is not None:
        hook(point)


def fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(dirpath))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
