"""Atomic checkpoints: <output_dir>/checkpoints/step_NNNNNN/ appears only when complete (written under a temporary
name, then renamed). Contents:

    hf/            full weights in Hugging Face format (loadable by transformers and vLLM as they are)
    deepspeed/     DeepSpeed engine state: weights and optimizer state, per ZeRO partition
    trainer.pt     step, data order position, RNG states, pending mini-batches, cache state, metrics position
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

PREFIX = "step_"


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


def save_checkpoint(run, step: int, pending, pause=None) -> Path:
    """Write every rank's part, then (rank 0) rename the temporary directory into place and prune old ones.
    `pause(point)` is a test hook called between the parts."""
    import torch.distributed as dist

    from safetensors.torch import save_file

    final = checkpoint_root(run.output_dir) / f"{PREFIX}{step:06d}"
    tmp = final.with_name(f".tmp-{final.name}")
    if run.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "hf").mkdir(parents=True)
    dist.barrier()
    weights = {name: t.contiguous() for name, t in run.learner.full_weights()}  # every rank gathers (ZeRO-3)
    if run.rank == 0:
        save_file(weights, str(tmp / "hf" / "model.safetensors"), metadata={"format": "pt"})
        for f in Path(run.model_path).iterdir():  # config, generation config, tokenizer
            if f.is_file() and f.suffix != ".safetensors" and not f.name.endswith(".bin") and f.name != "rpo_model.json":
                shutil.copy2(f, tmp / "hf" / f.name)
    del weights
    _call(pause, "hf_written")
    run.learner.engine.save_checkpoint(str(tmp / "deepspeed"), tag="state")
    _call(pause, "deepspeed_written")
    if run.rank == 0:
        state = {
            "step": step,
            "sampler": run.sampler.state_dict(),
            "rng": rng_state(),
            "pending": list(pending),
            "cache": run.cache.state() if run.rpo is not None else None,
            "config_algorithm": run.cfg.algorithm.name,
        }
        torch.save(state, tmp / "trainer.pt")
        _fsync_tree(tmp)
        _call(pause, "before_rename")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        for old in complete_checkpoints(run.output_dir)[: -run.cfg.trainer.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        if run.rpo is not None:  # cache versions older than every kept checkpoint can never be resumed to
            oldest = complete_checkpoints(run.output_dir)[0]
            run.cache.compact(int(oldest.name[len(PREFIX):]))
    dist.barrier()
    return final


def load_checkpoint(run, path: Path) -> tuple[int, list]:
    """Restore learner, data order, RNG and pending mini-batches; roll the RPO cache back to this step."""
    state = torch.load(path / "trainer.pt", weights_only=False)
    if state["config_algorithm"] != run.cfg.algorithm.name:
        raise CheckpointError(f"checkpoint {path} was written by algorithm={state['config_algorithm']}, "
                         f"this run is algorithm={run.cfg.algorithm.name}")
    run.learner.engine.load_checkpoint(str(path / "deepspeed"), tag="state", load_optimizer_states=True,
                                       load_lr_scheduler_states=True)
    run.sampler.load_state_dict(state["sampler"])
    set_rng_state(state["rng"])
    if run.rpo is not None:
        if state["cache"] is None:
            raise CheckpointError(f"checkpoint {path} was written without RPO, this run has rpo.enabled=true")
        run.cache.restore(state["step"], state["cache"])  # checks the recorded state, then drops later versions
    return state["step"], state["pending"]


def _call(hook, point: str) -> None:
    if hook is not None:
        hook(point)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
