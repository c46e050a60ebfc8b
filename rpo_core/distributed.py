"""Process-group setup for DeepSpeed on CPU (gloo) or GPU (nccl), single process or launched with torchrun, and the
placement of the loop's work on the ranks."""
from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch.distributed as dist

T = TypeVar("T")


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


@dataclass(frozen=True)
class Placement:
    """Which rank does what, and the collectives that move the results between ranks; each is the identity in a world
    of one. Rank 0 plans, logs and checkpoints. Rollouts run on rank 0, which sends what it collected to the others
    (rollout.placement=rank0), or on every rank, each generating its share of the same questions (every_rank)."""

    rank: int = 0
    world_size: int = 1
    every_rank_generates: bool = False  # rollout.placement=every_rank

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def generates(self) -> bool:
        """This rank collects rollouts (and holds a rollout engine)."""
        return self.is_main or self.every_rank_generates

    @property
    def spread(self) -> bool:
        """Several ranks generate: a rollout's requests are shared out and its results gathered."""
        return self.every_rank_generates and self.world_size > 1

    def broadcast(self, obj):
        """Rank 0's `obj`, on every rank (a collective: every rank calls it)."""
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order (a collective)."""
        if self.world_size == 1:
            return [obj]
        parts = [None] * self.world_size
        dist.all_gather_object(parts, obj)
        return parts

    def my_groups(self, num_groups: int) -> list[int]:
        """This rank's groups of a mini-batch: whole groups, round-robin (advantages need the whole group)."""
        return list(range(self.rank, num_groups, self.world_size))

    def planned(self, make: Callable[[], T]) -> T:
        """make() on rank 0 (the planner lives there); its result on every generating rank."""
        return self.broadcast(make() if self.is_main else None) if self.spread else make()

    def my_requests(self, items: list[T]) -> list[T]:
        """The part of a rollout's work this rank generates: all of it, or every world_size-th item when spread."""
        return items[self.rank :: self.world_size] if self.spread else items

    def merged(self, mine: dict) -> dict:
        """The union of the generating ranks' results of one rollout (this rank's own when not spread)."""
        return {k: v for part in self.gather(mine) for k, v in part.items()} if self.spread else mine

    def collected(self, obj: T) -> T:
        """What the collecting rank(s) produced, on every rank: rank 0's, sent to the others unless all collected."""
        return obj if self.every_rank_generates else self.broadcast(obj)
