"""The schemas (rpo_core.schema, Algorithm.schema, algorithms.rpo, rpo-sft's and rpo-eval's) against conf/: every
config file's values are its schema's defaults, key for key, so no default can drift between the YAML and the code
that falls back on the schema. Interpolations (`${data.max_new_tokens}`) and `???` compare as the strings they are
written as, unresolved."""
from __future__ import annotations

import copy

import pytest
from hydra import compose as hydra_compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from conftest import ROOT, compose
from rollout import ENGINES
from rpo_core.config import ConfigError, validate_config
from rpo_core.data import SOURCES
from rpo_core.evaluate import EvalConfig, validate_eval_config
from rpo_core.schema import DATA_SOURCES, ENGINE_SCHEMAS, SCHEMAS, TrainConfig
from rpo_core.sft import SFTConfig

CONF = ROOT / "conf"
GROUP_FILES = sorted(f"{p.parent.name}/{p.stem}" for p in CONF.glob("*/*.yaml") if p.parent.name != "experiment")


def compose_named(config_name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def as_written(node) -> dict:
    return OmegaConf.to_container(node, resolve=False)


def schema_defaults(schema, only=None) -> dict:
    defaults = as_written(OmegaConf.structured(schema))
    return {k: v for k, v in defaults.items() if only is None or k in only}


def test_every_config_file_has_a_schema():
    assert sorted(SCHEMAS) == GROUP_FILES


@pytest.mark.parametrize("path", GROUP_FILES)
def test_each_files_values_are_its_schemas_defaults(path):
    """The file as Hydra composes it (with the file it extends, e.g. dapo over grpo) against its schema."""
    group, name = path.split("/")
    assert as_written(compose(f"{group}={name}")[group]) == schema_defaults(SCHEMAS[path])


@pytest.mark.parametrize("config_name,schema,groups", [
    ("config", TrainConfig, ("model", "data", "algorithm", "rollout", "learner", "reward", "cache", "rpo", "logger")),
    ("sft", SFTConfig, ("model", "data", "learner", "logger")),
    ("eval", EvalConfig, ("model", "data", "rollout", "reward")),
])
def test_top_level_files_values_are_their_schemas_defaults(config_name, schema, groups):
    """conf/config.yaml, sft.yaml and eval.yaml: their own options (the groups are compared file by file above)."""
    written = {k: v for k, v in as_written(compose_named(config_name)).items() if k not in groups}
    defaults = {k: v for k, v in schema_defaults(schema).items() if k not in groups}
    assert written == defaults


def test_variants_have_a_schema_for_every_name_their_owner_knows():
    assert set(ENGINE_SCHEMAS) == set(ENGINES.names()) and set(DATA_SOURCES) == set(SOURCES)


def test_schemas_are_registered_with_hydra():
    repo = ConfigStore.instance().repo["schema"]
    assert sorted(f"{group}/{name.removesuffix('.yaml')}" for group in repo for name in repo[group]) == GROUP_FILES


@pytest.mark.parametrize("overrides", [(), ("algorithm=rapid", "rpo.enabled=true", "model=tiny", "data=gsm8k"),
                                       ("algorithm=dapo", "rollout=hf", "reward=authors", "data=mawps")])
def test_validation_never_changes_the_config_and_returns_it_typed(overrides):
    cfg = compose(*overrides)
    before = copy.deepcopy(cfg)
    typed = validate_config(cfg)
    assert cfg == before and OmegaConf.is_struct(cfg) and as_written(cfg) == as_written(before)
    assert OmegaConf.to_container(typed) == OmegaConf.to_container(cfg, resolve=True)  # every value as given


def test_the_schema_supplies_what_a_hand_made_config_leaves_out():
    """A config missing options (an older run's config.yaml, one built in Python) is completed from the schemas."""
    cfg = OmegaConf.to_container(compose(), resolve=True)
    del cfg["reward"]["length_aware"], cfg["data"]["nonnegative"]
    typed = validate_config(OmegaConf.create(cfg))
    assert typed.reward.length_aware.alpha == 0.1 and typed.reward.length_aware.unit == "words"
    assert typed.data.nonnegative is True


def test_eval_and_sft_configs_validate(tmp_path):
    validate_eval_config(compose_named("eval", f"eval.output={tmp_path / 'eval.jsonl'}"))
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "1+1", "response": "2"}\n')
    from rpo_core.sft import validate_sft_config

    validate_sft_config(compose_named("sft", f"sft.train_file={rows}"))


def test_the_entry_points_validate_what_they_are_given(tmp_path):
    """train(), sft() and evaluate() called from Python refuse a bad config before building anything (a missing
    model folder would otherwise be the first error)."""
    from rpo_core.evaluate import evaluate
    from rpo_core.sft import sft
    from rpo_core.train import train

    nowhere = [f"model.path={tmp_path / 'nowhere'}", "model=path"]
    with pytest.raises(ConfigError, match="trainer.total_steps=0 must be >= 1"):
        train(compose(*nowhere, "trainer.total_steps=0", f"trainer.output_dir={tmp_path / 'run'}"))
    with pytest.raises(ConfigError, match="sft.epochs=0 must be >= 1"):
        sft(compose_named("sft", *nowhere, "sft.epochs=0", f"sft.train_file={tmp_path}", f"sft.output_dir={tmp_path}"))
    with pytest.raises(ConfigError, match="eval.samples=-1 must be >= 0"):
        evaluate(compose_named("eval", *nowhere, "eval.samples=-1", f"eval.output={tmp_path / 'eval.jsonl'}"))
