"""Config schemas' checks: a dataclass schema gives each option its type and default; `opt(..., check=...)` adds the
bound or the allowed values; `typed` validates a config against a schema. Every failure is a ConfigError naming the
key, the value and what is allowed. Rules between options (cross-field) stay with the code that owns them."""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Callable, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

Check = Callable[[str, Any], None]  # (full key, value) -> raise ConfigError


class ConfigError(ValueError):
    pass


def opt(default: Any, check: Optional[Check] = None):
    """A schema field: its default (lists copied per instance) and an optional check of its value (None skips it)."""
    meta = {"check": check} if check else {}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def preset(**defaults):
    """Class decorator: the dataclass with other defaults (a config file that presets the options of its base)."""

    def make(cls):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        new = [(k, fields[k].type, opt(v, fields[k].metadata.get("check")) if not dataclasses.is_dataclass(v) else
                dataclasses.field(default_factory=lambda v=v: dataclasses.replace(v))) for k, v in defaults.items()]
        made = dataclasses.make_dataclass(cls.__name__, new, bases=(cls,))
        made.__module__ = cls.__module__  # where its annotations' names resolve
        return made

    return make


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bounds(low, high, strict_low=False) -> str:
    """'must be >= 1', 'must be <= 3' or, for a closed range, 'must be in [0, 3]'."""
    if high is None:
        return f"must be {'>' if strict_low else '>='} {low}"
    if low is None:
        return f"must be <= {high}"
    return f"must be in {'(' if strict_low else '['}{low}, {high}]"


def between(low=None, high=None, strict_low: bool = False, note: str = "") -> Check:
    """low <= v <= high (low < v when strict_low); NaN fails."""
    bounds = _bounds(low, high, strict_low) + (f" {note}" if note else "")

    def check(key, v):
        if isinstance(v, float) and math.isnan(v):
            raise ConfigError(f"{key}=nan {bounds}")
        if (low is not None and (v <= low if strict_low else v < low)) or (high is not None and v > high):
            raise ConfigError(f"{key}={v} {bounds}")

    return check


def one_of(allowed: "Callable[[], typing.Iterable] | typing.Iterable", fold: Callable[[str], str] = str) -> Check:
    """v (after `fold`, e.g. str.upper) is one of `allowed`: the owner's constant, or a callable read at check time
    (a registry fills in as modules import)."""

    def check(key, v):
        names = list(allowed() if callable(allowed) else allowed)
        if fold(v) not in names:
            raise ConfigError(f"{key}={v!r} is not one of: {', '.join(map(str, names))}")

    return check


def adam_betas(key, v) -> None:
    if not (len(v) == 2 and all(0.0 <= b < 1.0 for b in v)):
        raise ConfigError(f"{key}={list(v)!r} must be two numbers in [0, 1), e.g. [0.9, 0.99]")


def select(cfg, key: str):
    """The value at a dotted key, interpolations resolved; a missing or broken value is a ConfigError."""
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{key}: {e.__class__.__name__}: {str(e).splitlines()[0]}") from None


# ---------------------------------------------------------------------------------------------- validation
_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_ITEMS = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}


def _kind(annotation) -> str:
    if typing.get_origin(annotation) is list:
        return f"a list of {_ITEMS.get(typing.get_args(annotation)[0], 'values')}"
    return _KINDS.get(annotation, f"of type {getattr(annotation, '__name__', annotation)}")


def typed(cfg: DictConfig, schema: Any) -> DictConfig:
    """`cfg` resolved and merged into `schema` (a dataclass instance): a new config with every option of the schema,
    the schema's defaults where `cfg` has no value, each value checked. `cfg` itself is not changed. Keys the schema
    does not know are kept unchecked (an experiment bundle may set another algorithm's option; Hydra refuses a typo
    on the command line before this runs)."""
    try:
        raw = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{e.full_key}: {e.__class__.__name__}: {str(e).splitlines()[0]}") from None
    out = OmegaConf.structured(schema)
    _set_struct(out, False)
    try:
        out.merge_with(raw)
    except ValidationError as e:
        key = e.full_key.split("[")[0]  # a list's item: the list is named
        value = e.value if key == e.full_key else OmegaConf.select(OmegaConf.create(raw), key)
        raise ConfigError(f"{key}={value!r} must be {_kind(_annotation(schema, key))}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{e.full_key}: {str(e).splitlines()[0]}") from None
    _set_struct(out, None)
    OmegaConf.set_struct(out, True)
    _check(out, raw, "")
    return out


def _set_struct(node: DictConfig, flag: Optional[bool]) -> None:
    """Set (None: inherit) the struct flag of a node and of every dict below it: a structured config sets each."""
    OmegaConf.set_struct(node, flag)
    for _, child in node.items_ex(resolve=False):
        if isinstance(child, DictConfig):
            _set_struct(child, flag)


def _annotation(schema, key: str):
    """The type a dotted key has in a schema (a dataclass instance, its variants in place), Optional unwrapped."""
    *parents, name = key.split(".")
    for part in parents:
        schema = getattr(schema, part)
    hint = typing.get_type_hints(type(schema)).get(name, Any)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint


def _check(node: DictConfig, raw: Any, prefix: str) -> None:
    """Each field's check, in schema order, on the value as given (an integer given for a number stays 0, not 0.0)."""
    raw = raw if isinstance(raw, dict) else {}
    for f in dataclasses.fields(OmegaConf.get_type(node)):
        key = prefix + f.name
        if OmegaConf.is_missing(node, f.name):
            raise ConfigError(f"{key} must be set (it has no default)")
        v, given = node[f.name], raw.get(f.name)
        if isinstance(v, DictConfig):
            _check(v, given, key + ".")
        elif v is not None and "check" in f.metadata:
            v = list(v) if isinstance(v, ListConfig) else given if is_number(given) and is_number(v) else v
            f.metadata["check"](key, v)
