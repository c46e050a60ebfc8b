"""Fingerprints that tie a cache to the model and tokenizer that produced its token ids.

Both are functional where that is cheap: the tokenizer fingerprint hashes what decides token ids (vocabulary, special
tokens, chat template, and the ids of a fixed probe text), not the serialization format of its files, so upgrading
the tokenizers library does not invalidate a cache but a changed merge rule or template does.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

DIGEST_CHARS = 16  # 64 bits: ample to tell setups apart, short enough to read in an error message

# Mixed scripts, digits, LaTeX, whitespace runs: exercises normalization, pre-tokenization and merges.
_PROBE_TEXT = "Solve 12x^2 - 7 = 41.  Then \\boxed{\\frac{3}{4}}\n\tÉtape 2: 数学 ½ → π ≈ 3.14159 <think>ok</think>"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()[:DIGEST_CHARS]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of a Hugging Face tokenizer's vocab, special tokens, chat template and its ids for a fixed probe text."""
    return _digest({
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special_tokens": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
        "special_ids": [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id],
        "chat_template": getattr(tokenizer, "chat_template", None),
        "probe_ids": list(tokenizer.encode(_PROBE_TEXT, add_special_tokens=False)),
    })


def model_fingerprint(model: str, revision: Optional[str] = None) -> str:
    """Hash of a local model folder's config (minus volatile keys) and the full bytes of its weight files.

    A hub id (not a local folder) is fingerprinted by its name and revision only. Hashing reads every weight file
    once (sha256 ran at about 1.3 GB/s here: 0.2 s for a 260 MB model).
    """
    folder = Path(model)
    if not folder.is_dir():
        if folder.is_file():  # a single weights file (e.g. GGUF)
            return _digest({"file": folder.name, "sha256": _file_sha256(folder)})
        return _digest({"hub_id": model, "revision": revision})
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else None
    if isinstance(config, dict):
        config = {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}
    weights = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
    if not weights:
        raise FileNotFoundError(f"no weight files ({', '.join(_WEIGHT_SUFFIXES)}) in model folder {folder}")
    return _digest({"config": config, "weights": [(p.name, _file_sha256(p)) for p in weights]})


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()
