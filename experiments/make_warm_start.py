"""make warm-start: the warm-started reasoner RL on data=compositional starts from (GitHub issue 28).

The RPO paper starts RL from a model that already reasons; SmolLM2-135M-Instruct does not, so this SFTs it on the
worked traces of the task's SFT split (rpo_core.data.generate_compositional: questions disjoint from the RL train and
test splits) with `rpo-sft`, at fixed settings and seed, and places the final Hugging Face folder at
.cache/models/compositional-warm by one atomic rename (a folder at that path is always complete; an existing one is
kept). It prints the sha256 of model.safetensors, which experiments record as the weights they started from.

    python experiments/make_warm_start.py           # or: make warm-start
    rpo-train model=path model.path=$PWD/.cache/models/compositional-warm model.dtype=float32 data=compositional ...
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rpo_core.data import generate_compositional  # noqa: E402
from rpo_core.models import COMPLETE_MARKER  # noqa: E402

DATA = "compositional"  # conf/data/<DATA>.yaml: its n_sft traces are the training set
MODEL = "smollm2_135m"  # conf/model/<MODEL>.yaml: the model warm-started
SEED = 0
# rpo-sft settings (conf/sft.yaml), fixed: 64 steps of 8 over the 512 SFT traces; 2e-4 because a pilot's loss fell
# 1.72 -> 0.44 in 6 steps without a spike; bf16 compute (fp32 master weights) took 0.8x fp32's CPU time per step here.
SFT = {"sft.epochs": 1, "sft.batch_size": 8, "sft.lr": 2e-4, "sft.warmup_steps": 6, "sft.lr_schedule": "linear",
       "learner.dtype": "bfloat16"}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def write_sft_jsonl(cfg, folder: Path) -> Path:
    """The SFT split as {"prompt", "response"} lines (prompt = the filled prompt_template; rpo-sft adds the chat
    template), at a path named by its content hash: the same data config always gives the same file."""
    _, _, sft = generate_compositional(cfg)
    if not sft:
        raise SystemExit(f"error: data.n_sft is {cfg.get('n_sft')}: conf/data/{DATA}.yaml has no SFT split")
    lines = [json.dumps({"prompt": cfg.prompt_template.replace("{question}", q), "response": trace})
             for q, _, trace in sft]
    blob = ("\n".join(lines) + "\n").encode()
    path = folder / f"{cfg.name}-{len(sft)}-{hashlib.sha256(blob).hexdigest()[:12]}.jsonl"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(blob)
        tmp.replace(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / ".cache/models/compositional-warm"), help="the model folder made")
    args = ap.parse_args()
    target = Path(args.out)
    if (target / "model.safetensors").is_file() and (target / COMPLETE_MARKER).is_file():
        print(f"{target} is complete: kept (delete it to remake it)")
        print(f"model.safetensors sha256 {sha256(target / 'model.safetensors')}")
        return

    cfg = OmegaConf.load(ROOT / "conf/data" / f"{DATA}.yaml")
    train_file = write_sft_jsonl(cfg, ROOT / ".cache/sft")
    settings = {"model": MODEL, "data": DATA, "train_file": train_file.name, "seed": SEED, **SFT}
    run_dir = ROOT / ".cache/sft/runs" / f"{train_file.stem}-{hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]}"
    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run is not resumed: start it again from the base model
    cmd = [sys.executable, "-m", "rpo_core.sft", f"model={MODEL}", f"data={DATA}", f"seed={SEED}", "progress=false",
           f"sft.train_file={train_file}", f"sft.output_dir={run_dir}", *(f"{k}={v}" for k, v in SFT.items())]
    print("$", " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall_s = time.perf_counter() - t0
    digest = place(run_dir / "final", target, {**settings, "train_file_sha256": sha256(train_file),
                                               "sft_wall_s": round(wall_s, 1)})
    print(f"{target}: SFT {wall_s / 60:.1f} min")
    print(f"model.safetensors sha256 {digest}")


def place(final: Path, target: Path, record: dict) -> str:
    """Move rpo-sft's final folder to `target` in one rename, after writing the completion marker (with `record` and
    the weights' sha256) into it; returns that sha256."""
    weights = final / "model.safetensors"
    if not weights.is_file():
        raise SystemExit(f"error: rpo-sft finished but {weights} does not exist")
    digest = sha256(weights)
    (final / COMPLETE_MARKER).write_text(json.dumps({**record, "model_safetensors_sha256": digest}, indent=1) + "\n")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # an incomplete leftover (a complete one is kept by main)
        shutil.rmtree(target)
    final.rename(target)
    return digest


if __name__ == "__main__":
    main()
