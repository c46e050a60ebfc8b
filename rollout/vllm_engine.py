"""Rollouts on a real vLLM engine (its core in its own process by default), weights reloaded after each update.
vLLM itself is imported inside the methods: it is a heavy optional dependency (the `cpu` or `gpu` install extra)."""
from __future__ import annotations

import glob
import os
import signal
import sys
import threading
import time
from typing import Iterable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from rollout.base import Generation, GenerationRequest, stage_weights


class VLLMEngine:
    """vLLM's `LLM`, its engine core in a subprocess (default) or in this process (`rollout.engine_process`)."""

    def __init__(self, model_path: str, cfg, seed: int):
        # subprocess (default): vLLM's engine core runs in its own process. Its torch.distributed world of one cannot
        # collide with the trainer's ranks, and its thread pinning does not fight the learner's threads: on 2 CPU
        # cores rollouts ran 6-10x faster than in-process.
        # inproc: the engine lives in the trainer process (VLLM_ENABLE_V1_MULTIPROCESSING=0).
        self.in_process = cfg.engine_process == "inproc"
        self.per_request_seed = cfg.per_request_seed
        if self.in_process and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("rollout.engine_process=inproc needs a single trainer rank; use subprocess with torchrun")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if self.in_process else "1"
        if not self.in_process:
            os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # collective_rpc with our own worker functions
        if cfg.cpu_reserved_cores is not None:  # read by the CPU backend's thread binding when the engine starts
            os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(cfg.cpu_reserved_cores)
        # Weights reach vLLM through this file (in shared memory) in both modes.
        self.sync_file = os.path.join(cfg.sync_dir, f"rpo-weights-{os.getpid()}.safetensors")
        self.expected_shapes = checkpoint_shapes(model_path)  # what a sync must deliver, checked before vLLM is touched
        from vllm import LLM

        self.llm = LLM(
            model=model_path,
            dtype=cfg.dtype,
            seed=seed,
            enforce_eager=cfg.enforce_eager,
            max_model_len=cfg.max_model_len,
            kv_cache_memory_bytes=int(cfg.kv_cache_gb * 2**30),
            # Logprobs after temperature, i.e. of the distribution the tokens were actually drawn from.
            logprobs_mode="processed_logprobs",
            enable_prefix_caching=cfg.enable_prefix_caching,
            block_size=cfg.block_size,
            # vLLM-CPU bug: a chunked (partial) prefill rewinds the per-request seeded generator with set_offset,
            # which CPU generators lack, and the engine dies. Whole prefills avoid the path; seeds stay per request.
            enable_chunked_prefill=cfg.enable_chunked_prefill,
            max_num_batched_tokens=max(cfg.max_num_batched_tokens, cfg.max_model_len),
            tensor_parallel_size=cfg.tensor_parallel_size,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
        )
        self.tokenizer = self.llm.get_tokenizer()
        if not self.in_process and sys.platform == "linux":  # the engine's processes die with the trainer
            self.llm.collective_rpc(_watch_trainer, args=(os.getpid(), _process_start(os.getpid())))

    def generate(self, requests: list[GenerationRequest], temperature: float) -> list[list[Generation]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(r.prompt_ids)) for r in requests]
        params = [
            SamplingParams(
                n=r.n,
                temperature=temperature,
                max_tokens=max(1, r.max_new_tokens),
                seed=r.seed if self.per_request_seed else None,
                logprobs=0,  # only the sampled token's logprob
                skip_special_tokens=True,
            )
            for r in requests
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [[self._to_generation(c) for c in sorted(o.outputs, key=lambda c: c.index)] for o in outputs]

    @staticmethod
    def _to_generation(c) -> Generation:
        ids = list(c.token_ids)
        lps = [step[tok].logprob for tok, step in zip(ids, c.logprobs)]
        return Generation(token_ids=ids, logprobs=lps, finished=c.finish_reason == "stop", text=c.text)

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """All-or-nothing reload. Tensors are gathered and checked (finite, and the names and shapes of the model's
        checkpoint) before vLLM is touched: any failure up to there is a SyncError and leaves the engine on its weights.
        In-process, vLLM's worker takes the tensors as they are; an engine in its own process reads them from a file in
        shared memory (`rollout.sync_dir`). vLLM's layerwise reload cannot be rolled back once it starts, so a failure
        inside it is fatal (resume from the last checkpoint)."""
        staged = stage_weights(named_tensors, self.expected_shapes)
        count = len(staged)
        try:
            if self.in_process:
                self.llm.collective_rpc(_reload_from_tensors, args=(staged,))
            else:
                save_file(staged, self.sync_file)
                del staged
                self.llm.collective_rpc(_reload_from_file, args=(self.sync_file,))
            self.llm.collective_rpc(_refresh_tied_lm_head)
        except Exception as e:
            raise RuntimeError(f"vLLM failed inside reload_weights; the engine's weights are undefined: {e}") from e
        finally:
            if os.path.exists(self.sync_file):
                os.unlink(self.sync_file)
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        return count

    def close(self) -> None:
        if os.path.exists(self.sync_file):
            os.unlink(self.sync_file)

    def sequence_logprobs(self, prompt_ids: Sequence[int], response_ids: Sequence[int]) -> list[float]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        ids = list(prompt_ids) + list(response_ids)
        out = self.llm.generate(
            [TokensPrompt(prompt_token_ids=ids)],
            SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0),
            use_tqdm=False,
        )[0]
        start = len(prompt_ids)
        return [out.prompt_logprobs[i][ids[i]].logprob for i in range(start, len(ids))]


def _watch_trainer(worker, trainer_pid: int, trainer_start: str) -> None:
    """Runs in vLLM's worker: a daemon thread that, once the trainer process is gone (e.g. `kill -9`), kills the engine
    core (the worker's parent) and the worker itself. Without it they outlive the trainer, reparented to init, holding
    about 4 GB and both cores (measured). vLLM-CPU always spawns its processes, so a parent-death signal set at fork
    time cannot be used; the worker's other siblings exit through vLLM's own death pipe when the core dies."""
    def watch() -> None:
        while _process_start(trainer_pid) == trainer_start:  # the start time guards against a reused pid
            time.sleep(0.5)
        os.kill(os.getppid(), signal.SIGKILL)
        os._exit(1)

    threading.Thread(target=watch, name="rpo-trainer-watchdog", daemon=True).start()


def _process_start(pid: int) -> str:
    """The start time of a process (field 22 of /proc/<pid>/stat), '' once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return ""


def _reload_from_tensors(worker, tensors: dict[str, torch.Tensor]) -> None:
    """Runs in vLLM's worker in this process (inproc): the staged tensors go straight into reload_weights."""
    worker.reload_weights(weights_iterator=iter(tensors.items()))


def _reload_from_file(worker, path: str) -> None:
    """Runs inside vLLM's worker in its own process: stream a safetensors file into reload_weights."""
    with safe_open(path, "pt") as f:
        worker.reload_weights(weights_iterator=((name, f.get_tensor(name)) for name in f.keys()))


def checkpoint_shapes(model_path: str) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a Hugging Face folder's safetensors files (headers only)."""
    shapes = {}
    for path in sorted(glob.glob(os.path.join(model_path, "*.safetensors"))):
        with safe_open(path, "pt") as f:
            shapes.update({name: tuple(f.get_slice(name).get_shape()) for name in f.keys()})
    return shapes


def _refresh_tied_lm_head(worker) -> None:
    """Re-derive the output layer's kernel weights when it is tied to the input embedding.

    With tied embeddings vLLM skips `lm_head.weight` while loading and reuses the embedding tensor, but on CPU the
    output projection runs from a copy prepared when weights are processed (a packed GEMM weight). reload_weights
    re-processes only the layers it loaded, so without this the logits keep the *initial* embedding forever:
    measured here as a 0.5-0.9 nat logprob error after one update of a tied model."""
    model = worker.model_runner.model
    lm_head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if lm_head is None or embed is None or lm_head.weight is not embed.weight:
        return
    method = getattr(lm_head, "quant_method", None)
    if method is not None and hasattr(method, "process_weights_after_loading"):
        method.process_weights_after_loading(lm_head)
