"""Process-group setup for DeepSpeed on CPU (gloo) or GPU (nccl), single process or launched with torchrun."""
from __future__ import annotations

import os
import socket
import sys


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def configure_environment(device: str) -> None:
    """Environment that must exist before deepspeed/vllm are imported."""
    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # In-process vLLM engine: needed to reload weights into it without a server.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # Never wait on a network we do not have.
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # vLLM's per-request INFO lines would bury the progress bar; warnings about its own reload are expected noise.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(os.getcwd(), ".cache", "torch_extensions"))


def init_distributed(backend: str) -> tuple[int, int]:
    """Initialise torch.distributed through DeepSpeed; works with or without a launcher. Returns (rank, world_size)."""
    if "RANK" not in os.environ:  # plain `python`/`rpo-train`: a world of one, no MPI discovery
        # A fresh port even if MASTER_PORT is inherited: a parent process may still be listening on it.
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    import deepspeed
    import deepspeed.comm.torch  # noqa: F401  (module object reached through sys.modules below)

    # The shared-memory op is only used by inference all-reduce; JIT-compiling it costs about a minute on CPU.
    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
