"""rpo-eval: off-the-clock evaluation of a run's checkpoints, or of any Hugging Face folder, on the rollout engine.

    rpo-eval run=outputs/2026-12-04/14-00-00       every checkpoint of the run (and its start) -> <run>/eval.jsonl
    rpo-eval model=path model.path=DIR data=compositional eval.output=DIR/eval.jsonl   one model folder

For each model: greedy accuracy, sampled pass@1 (k samples per problem at the run's temperature), mean response
length, the share of direct answers (the answer on the response's first line: no reasoning before it) and the
direct-answer probe (the answer prefix forced right after the prompt, then greedy), on the first `eval.size` held-out
problems in their fixed order. One engine serves every checkpoint: each one's weights are loaded into it as a weight
sync would. Checkpoints already in eval.jsonl with the same settings are skipped, so the command can be re-run as a
run goes on; incomplete ones are reported and skipped. The references users know: lighteval, and the RPO authors'
evaluate.py (greedy and sampled accuracy on a fixed held-out set)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

import hydra
from omegaconf import DictConfig, OmegaConf
from safetensors import safe_open
from transformers import AutoTokenizer

from rewards import build_scorer, extract_answer
from rollout import GenerationRequest, RolloutEngine, build_engine
from rpo_core.checkpoint import evaluable_checkpoints, read_meta
from rpo_core.common.checks import ConfigError, between, one_of, opt, typed
from rpo_core.common.types import Problem
from rpo_core.common.util import exit_2_on, stable_seed
from rpo_core.data import DataError, load_problems
from rpo_core.distributed import configure_environment
from rpo_core.metrics import host_cpu
from rpo_core.models import ModelNotFoundError, prepare_model
from rpo_core.schema import DEVICES, train_schema

log = logging.getLogger("rpo")
# Settings that make two evaluations of one checkpoint comparable: a row with other values is not "already done".
SETTINGS = ("n_problems", "k", "temperature", "max_new_tokens", "probe_prefix")
CHECKPOINT_CHOICES = ("all", "last")  # with run=: every complete checkpoint, or only the newest


@dataclass
class EvalOptions:
    """conf/eval.yaml's `eval` node, whose comments say what each option does."""

    size: Optional[int] = opt(500, between(1))
    samples: int = opt(4, between(0))
    temperature: Optional[float] = opt(None, between(0.0, strict_low=True))
    max_new_tokens: Optional[int] = opt(None, between(1))
    probe_prefix: Optional[str] = "Answer:"
    probe_max_new_tokens: int = opt(16, between(1))
    include_start: bool = True
    checkpoints: str = opt("all", one_of(CHECKPOINT_CHOICES))
    output: Optional[str] = None


@dataclass
class EvalConfig:
    """conf/eval.yaml's own options; its model, data, rollout and reward groups are a run's (see eval_setup)."""

    seed: int = opt(0, between(0))
    device: str = opt("cpu", one_of(DEVICES))
    run: Optional[str] = None
    eval: EvalOptions = field(default_factory=EvalOptions)


def validate_eval_config(cfg: DictConfig) -> None:
    """Raise ConfigError on the first invalid option of rpo-eval's own; `cfg` is not changed."""
    typed(OmegaConf.masked_copy(cfg, [f.name for f in fields(EvalConfig)]), EvalConfig())
    if not (cfg.eval.output or cfg.run):
        raise ConfigError("eval.output must name the eval.jsonl to write when evaluating a model folder (no run=)")


class EvalError(ValueError):
    """Nothing to evaluate where the user pointed (no run config, no checkpoint)."""


@dataclass
class GreedyResult:
    accuracy: float
    response_len: float  # mean generated tokens
    direct_answer_share: Optional[float]  # None when the scorer extracts no answer (e.g. the parity toy task)
    digest: str  # sha1 of every greedy response's token ids: two evaluations that generated the same text agree here


@dataclass
class EvalRow:
    """One line of eval.jsonl: one model (a checkpoint, or the run's start as step 0) under one set of settings."""

    checkpoint: str
    step: int
    train_wall_s: float
    greedy_accuracy: float
    sampled_accuracy: Optional[float]  # pass@1: mean correctness over k samples per problem (None when k = 0)
    k: int
    temperature: float
    response_len: float  # mean greedy response length in tokens
    sampled_response_len: Optional[float]
    direct_answer_share: Optional[float]
    greedy_digest: str  # rpo_core.evaluate.GreedyResult.digest (the in-run evaluation logs it as eval_digest)
    probe_accuracy: Optional[float]  # None when eval.probe_prefix is null
    n_problems: int
    max_new_tokens: int
    probe_prefix: Optional[str]
    host_cpu: str
    model_sha256: str
    eval_seconds: float


# =====================================================================================================================
# what is measured (the loop's in-run evaluation calls greedy_eval too)
# =====================================================================================================================
def greedy_eval(engine: RolloutEngine, scorer, problems: list[Problem], max_new_tokens: int) -> GreedyResult:
    """Greedy accuracy on `problems` in their order, mean response length and the share of direct answers."""
    gens = [g[0] for g in engine.generate([GenerationRequest(list(p.prompt_ids), 1, max_new_tokens, 0)
                                           for p in problems], temperature=0.0)]
    scored = scorer.score([g.text for g in gens], [p.gold for p in problems])
    style = getattr(scorer, "style", None)
    direct = None if style is None else _share([answer_line_index(g.text, style) == 0 for g in gens])
    digest = hashlib.sha1(json.dumps([g.token_ids for g in gens]).encode()).hexdigest()
    return GreedyResult(accuracy=_share(scored.correct), response_len=_mean([len(g.token_ids) for g in gens]),
                        direct_answer_share=direct, digest=digest)


def sampled_eval(engine: RolloutEngine, scorer, problems: list[Problem], k: int, temperature: float,
                 max_new_tokens: int, seed: int) -> tuple[float, float]:
    """(pass@1 = mean correctness of k samples per problem, mean sampled response length); seeded per problem."""
    requests = [GenerationRequest(list(p.prompt_ids), k, max_new_tokens, stable_seed(seed, "eval", p.uid))
                for p in problems]
    gens = engine.generate(requests, temperature)
    texts = [g.text for per_problem in gens for g in per_problem]
    scored = scorer.score(texts, [p.gold for p in problems for _ in range(k)])
    return _share(scored.correct), _mean([len(g.token_ids) for per_problem in gens for g in per_problem])


def probe_eval(engine: RolloutEngine, scorer, tokenizer, problems: list[Problem], prefix: str,
               max_new_tokens: int) -> float:
    """Direct-answer probe: accuracy when `prefix` (e.g. 'Answer:') follows the prompt at once and the model continues
    greedily. A reasoner should score near zero here; a policy that stops reasoning keeps only this much."""
    forced = tokenizer.encode(prefix, add_special_tokens=False)
    gens = engine.generate([GenerationRequest(list(p.prompt_ids) + forced, 1, max_new_tokens, 0) for p in problems],
                           temperature=0.0)
    scored = scorer.score([prefix + g[0].text for g in gens], [p.gold for p in problems])
    return _share(scored.correct)


def answer_line_index(text: str, style: str) -> Optional[int]:
    """Index among the non-blank lines of `text` of the line holding its final answer (None: no answer). 0 means a
    direct answer: nothing was written before it."""
    lines = [line for line in text.splitlines() if line.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if extract_answer(lines[i], style) is not None:
            return i
    return None


def _share(flags) -> float:
    flags = list(flags)
    return sum(bool(f) for f in flags) / max(1, len(flags))


def _mean(values) -> float:
    values = list(values)
    return sum(values) / max(1, len(values))


# =====================================================================================================================
# the command
# =====================================================================================================================
def evaluate(cfg: DictConfig) -> list[dict]:
    """Evaluate what `cfg` points at; returns the rows written this time."""
    validate_eval_config(cfg)
    out = Path(cfg.eval.output) if cfg.eval.output else Path(cfg.run) / "eval.jsonl"
    checkpoints = run_checkpoints(Path(cfg.run)) if cfg.run else []  # before anything heavy is built
    setup = eval_setup(cfg)
    targets = eval_targets(cfg, setup.model_path, checkpoints)
    settings = {"n_problems": len(setup.problems), "k": cfg.eval.samples, "temperature": setup.temperature,
                "max_new_tokens": setup.max_new_tokens, "probe_prefix": cfg.eval.probe_prefix}
    done = {row["checkpoint"] for row in read_rows(out) if all(row.get(k) == v for k, v in settings.items())}
    todo = [t for t in targets if t[0] not in done]
    print(f"rpo-eval: {len(targets)} model(s), {len(targets) - len(todo)} already in {out}, "
          f"{len(setup.problems)} problems, k={cfg.eval.samples} at temperature {setup.temperature}")
    if not todo:
        return []
    tokenizer = AutoTokenizer.from_pretrained(setup.model_path)
    engine = build_engine(setup.rollout, setup.model_path, setup.seed)
    scorer = build_scorer(setup.reward, setup.data)
    written = []
    try:
        for name, weights, meta in todo:
            t0 = time.perf_counter()
            if weights is not None:
                engine.load_weights(_safetensors(weights))
            sha256 = file_sha256(weights) if weights is not None else folder_sha256(setup.model_path)
            row = measure(engine, scorer, tokenizer, setup, cfg.eval, name, meta, sha256, t0)
            append_row(out, asdict(row))
            written.append(asdict(row))
            print(f"{name}: greedy {row.greedy_accuracy:.3f} sampled {_fmt(row.sampled_accuracy)} "
                  f"probe {_fmt(row.probe_accuracy)} direct {_fmt(row.direct_answer_share)} "
                  f"len {row.response_len:.1f} ({row.eval_seconds:.0f}s)")
    finally:
        scorer.close()
        engine.close()
    return written


@dataclass
class EvalSetup:
    model_path: str  # the starting model: its tokenizer and architecture serve every checkpoint
    rollout: DictConfig
    reward: DictConfig
    data: DictConfig
    seed: int
    problems: list[Problem]
    temperature: float
    max_new_tokens: int


def eval_setup(cfg: DictConfig) -> EvalSetup:
    """The model, data and generation settings: a run's own config.yaml (run=...; typed by rpo-train's schemas, which
    fill in options added since), or this command's groups."""
    run_cfg = OmegaConf.load(Path(cfg.run) / "config.yaml") if cfg.run else None
    source = typed(run_cfg, train_schema(run_cfg)) if cfg.run else cfg
    model_path = prepare_model(source.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    test = load_problems(source.data, tokenizer).test
    problems = test[: cfg.eval.size] if cfg.eval.size else test
    if cfg.eval.size and len(problems) < cfg.eval.size:
        log.warning("eval.size=%d but the test split has %d problems: evaluating all of them", cfg.eval.size,
                    len(problems))
    default_new = source.trainer.eval_max_new_tokens if "trainer" in source else source.rollout.max_new_tokens
    return EvalSetup(model_path=model_path, rollout=source.rollout, reward=source.reward, data=source.data,
                     seed=source.seed, problems=problems,
                     temperature=cfg.eval.temperature or source.rollout.temperature,
                     max_new_tokens=cfg.eval.max_new_tokens or default_new)


def run_checkpoints(run: Path) -> list[Path]:
    """A run folder's evaluable checkpoints, oldest first; the incomplete ones are reported and left out."""
    if not (run / "config.yaml").is_file():
        raise EvalError(f"run={run}: no config.yaml there (is it an rpo-train output folder?)")
    ready, incomplete = evaluable_checkpoints(run)
    for path in incomplete:
        print(f"rpo-eval: skipping {path}: incomplete (no meta.json or hf/model.safetensors)", file=sys.stderr)
    if not ready:
        raise EvalError(f"run={run}: no complete checkpoint under {run / 'checkpoints'} "
                        f"(rpo-train writes them with trainer.save_every, trainer.save_every_s, and at the end)")
    return ready


def eval_targets(cfg: DictConfig, model_path: str, checkpoints: list[Path]) -> list[tuple[str, Optional[Path], dict]]:
    """(name, weights file or None for the starting model, meta) to evaluate, in training order (hashed only when
    evaluated: a re-run skips what is done without reading every weight file)."""
    start = ("start", None, {"step": 0, "train_wall_s": 0.0})
    if not cfg.run:
        return [(Path(model_path).name, None, {**start[2], "train_wall_s": None})]
    targets = [start] if cfg.eval.include_start else []
    for path in checkpoints[-1:] if cfg.eval.checkpoints == "last" else checkpoints:
        weights = path / "hf" / "model.safetensors"
        targets.append((path.name, weights, read_meta(path)))
    return targets


def measure(engine, scorer, tokenizer, setup: EvalSetup, eval_cfg, name: str, meta: dict, sha256: str,
            t0: float) -> EvalRow:
    greedy = greedy_eval(engine, scorer, setup.problems, setup.max_new_tokens)
    sampled, sampled_len = (sampled_eval(engine, scorer, setup.problems, eval_cfg.samples, setup.temperature,
                                         setup.max_new_tokens, setup.seed) if eval_cfg.samples else (None, None))
    probe = (probe_eval(engine, scorer, tokenizer, setup.problems, eval_cfg.probe_prefix,
                        eval_cfg.probe_max_new_tokens) if eval_cfg.probe_prefix else None)
    return EvalRow(checkpoint=name, step=meta["step"], train_wall_s=meta["train_wall_s"],
                   greedy_accuracy=greedy.accuracy, sampled_accuracy=sampled, k=eval_cfg.samples,
                   temperature=setup.temperature, response_len=greedy.response_len, sampled_response_len=sampled_len,
                   direct_answer_share=greedy.direct_answer_share, greedy_digest=greedy.digest, probe_accuracy=probe,
                   n_problems=len(setup.problems), max_new_tokens=setup.max_new_tokens,
                   probe_prefix=eval_cfg.probe_prefix, host_cpu=host_cpu(), model_sha256=sha256,
                   eval_seconds=time.perf_counter() - t0)


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_row(path: Path, row: dict) -> None:
    """One JSON line, flushed to disk before the next checkpoint is evaluated (an interrupted run loses nothing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _safetensors(path: Path):
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():
            yield name, f.get_tensor(name)


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_sha256(folder) -> str:
    """sha256 over a model folder's weight files (sorted by name): what 'the same start' means for a pair of runs."""
    digest = hashlib.sha256()
    for f in sorted(Path(folder).glob("*.safetensors")):
        digest.update(file_sha256(f).encode())
    return digest.hexdigest()


def _fmt(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.3f}"


USER_ERRORS = (ConfigError, DataError, EvalError, ModelNotFoundError)


@hydra.main(version_base=None, config_path=str(Path(__file__).resolve().parents[1] / "conf"), config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    configure_environment(cfg.device)
    exit_2_on(USER_ERRORS, evaluate, cfg)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
