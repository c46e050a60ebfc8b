"""The learner on a CUDA device (`pytest -m gpu`; experiments/gpu_check.sh runs them on a GPU machine): one DeepSpeed
step under ZeRO-0 and ZeRO-2 (one process, NCCL), fp32 and bf16, gives the logprobs, loss and gradient norm of the same
step computed in fp32 by plain PyTorch on the CPU, and every tensor the loss sees is on the GPU.

Without a GPU they skip. RPO_GPU_TEST_DEVICE=cpu runs the same checks with DeepSpeed's CPU accelerator (gloo), which is
how their comparison and tolerances were checked on machines without one."""
from __future__ import annotations

import os
from dataclasses import fields

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from conftest import compose, fresh_world_group
from rollout import GenerationRequest
from rollout.hf_engine import HFEngine
from rpo_core.logprobs import policy_logprobs
from test_learner import _mixed_lengths_batch

DEVICE = os.environ.get("RPO_GPU_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")]

# Tolerances against the fp32 CPU step, per learner dtype:
# - float32: CUDA runs the same fp32 math in other kernels and reduction orders (torch leaves TF32 off by default), so
#   only rounding at ~1e-7 relative differs. With DeepSpeed's CPU accelerator the fp32 step equals this one exactly (ZeRO-2
#   sums its gradient norm per partition: 1.1e-5 relative). A TF32 matmul (10-bit mantissa) on the path breaks them.
# - bfloat16: the weights themselves are rounded to 8 mantissa bits (~4e-3 relative) and so is every activation; with
#   DeepSpeed's CPU accelerator the bf16 step of this model is off the fp32 step by up to 0.0038 nats per token, 2.8e-4
#   of the loss and 2.2e-4 of the gradient norm (relative), ZeRO-0 and ZeRO-2 alike (measured); the bounds allow about
#   8-20x that for the GPU's other bf16 kernels (fused attention, other accumulation orders). A step computed partly in
#   the wrong dtype or on stale weights is off by 0.1 or more.
TOLERANCE = {
    "float32": {"logp_max": 1e-4, "loss_abs": 1e-5, "grad_norm_rel": 1e-4},
    "bfloat16": {"logp_max": 0.03, "loss_abs": 3e-3, "grad_norm_rel": 5e-3},
}


@pytest.fixture(scope="module")
def world():
    """A one-process NCCL world (gloo for RPO_GPU_TEST_DEVICE=cpu) with DeepSpeed on the matching accelerator."""
    if DEVICE == "cuda":
        os.environ["DS_ACCELERATOR"] = "cuda"  # tests/conftest.py defaults it to cpu
    from deepspeed.accelerator import get_accelerator

    from rpo_core.distributed import init_distributed

    if get_accelerator().device_name() != DEVICE:
        pytest.skip(f"DeepSpeed already chose its {get_accelerator().device_name()} accelerator in this process: "
                    f"run `pytest -m gpu` on its own")
    return init_distributed("nccl" if DEVICE == "cuda" else "gloo")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    """A seeded 2-layer Llama (vocab 1024: the batch's ids are < 1000) with a word-level tokenizer over its ids."""
    config = LlamaConfig(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gpu_model")
    LlamaForCausalLM(config).save_pretrained(path)
    words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(1024)}, unk_token="t0"))
    PreTrainedTokenizerFast(tokenizer_object=words, eos_token="t2", pad_token="t2").save_pretrained(path)
    return str(path)


def test_the_hf_engine_samples_on_the_device_with_the_models_logprobs(model_path):
    """rollout=hf on the run's device: the model sits there, and the logprob it reports for each sampled token is the
    fp32 CPU model's (1e-4: fp32 on both sides, as in TOLERANCE)."""
    cfg = compose("rollout=hf", f"device={DEVICE}", "rollout.ignore_eos=true")
    engine = HFEngine(model_path, cfg.rollout, seed=0)
    assert engine.model.device.type == DEVICE
    prompt = list(range(10, 20))
    samples = engine.generate([GenerationRequest(prompt, 2, 8, seed=0)], temperature=1.0)[0]
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    for sample in samples:
        assert len(sample.token_ids) == 8
        ids = torch.tensor([prompt + sample.token_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, len(prompt) - 1 : -1], dim=-1)
        expected = logp.gather(-1, ids[0, len(prompt):, None])[:, 0]
        assert torch.allclose(torch.tensor(sample.logprobs), expected, atol=1e-4), (sample.logprobs, expected)


def _setting(*overrides):
    cfg = compose("algorithm.old_logp=learner", "learner.optim.grad_clip=0", *overrides)
    from algorithms import build_algorithm

    return cfg, build_algorithm(cfg.algorithm, cfg.rollout.max_new_tokens)


def _batch(model_path, cfg, algorithm):
    """The mixed-lengths batch with GRPO's advantages and a pi_old 0.1 nats off the model's logprobs either way, so
    the clipped ratio objective (and its value) depends on the logprobs and nothing is clipped."""
    tb = algorithm.prepare(_mixed_lengths_batch())
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    with torch.no_grad():
        logp = policy_logprobs(model, tb, 1.0, cfg.learner)
    sign = torch.where(torch.arange(logp.numel()).view(logp.shape) % 2 == 0, 1.0, -1.0)
    tb.rollout_logp = (logp + 0.1 * sign) * tb.response_mask
    return tb


def _cpu_step(model_path, tb, cfg, algorithm):
    """The exact step: fp32, plain PyTorch, the whole batch at once. (logprobs, loss, gradient norm)."""
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    logp = policy_logprobs(model, tb, 1.0, cfg.learner)
    loss, _ = algorithm.loss(logp, tb)
    loss.backward()
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
    return logp.detach(), loss.item(), norm.item()


def _checked(loss_fn, device: torch.device, seen: list):
    """loss_fn, asserting first that the logprobs and every tensor of the micro-batch are on `device`."""
    def loss(logp, micro):
        tensors = {"logp": logp, **{f.name: getattr(micro, f.name) for f in fields(micro)
                                    if isinstance(getattr(micro, f.name), torch.Tensor)}}
        elsewhere = {name: str(t.device) for name, t in tensors.items() if t.device != device}
        assert not elsewhere, f"the loss got tensors off {device}: {elsewhere}"
        seen.append(sorted(tensors))
        return loss_fn(logp, micro)
    return loss


SETTINGS = [(zero, dtype, "chunked") for zero in (0, 2) for dtype in ("float32", "bfloat16")] + \
    [(0, "float32", path) for path in ("full_logits", "shared_packed", "shared_kv")]


@pytest.mark.parametrize("zero_stage,dtype,path", SETTINGS)
def test_a_learner_step_on_the_device_matches_the_cpu_step(world, model_path, zero_stage, dtype, path):
    """ZeRO-0/2 x fp32/bf16 on the default logprob path (chunked output layer); the other paths (full logits, both
    shared-prefix forms, whose packing is host work) in fp32 under ZeRO-0."""
    from rpo_core.learner import DeepSpeedLearner

    paths = {"chunked": [], "full_logits": ["learner.logprob_chunk=0"], "shared_packed": ["learner.shared_prefix=true"],
             "shared_kv": ["learner.shared_prefix=true", "learner.shared_prefix_mode=kv_cache"]}
    cfg, algorithm = _setting(f"learner.zero_stage={zero_stage}", f"learner.dtype={dtype}",
                              f"learner.backend={'nccl' if DEVICE == 'cuda' else 'gloo'}", *paths[path])
    tb = _batch(model_path, cfg, algorithm)
    cpu_logp, cpu_loss, cpu_norm = _cpu_step(model_path, tb, cfg, algorithm)
    assert cpu_norm > 1e-3, "the loss gives no gradient: the comparison below would check nothing"

    fresh_world_group()
    learner = DeepSpeedLearner(model_path, cfg.learner, cfg.learner.optim, temperature=1.0, world_size=1)
    assert learner.device.type == DEVICE
    seen = []
    result = learner.train_step(tb, _checked(algorithm.loss, learner.device, seen), token_level=algorithm.token_level)
    assert seen and "rollout_logp" in seen[0] and "advantages" in seen[0], seen

    tol = TOLERANCE[dtype]
    mask = tb.response_mask.bool()
    logp_error = (result.logprobs - cpu_logp)[mask].abs().max().item()
    # one line per setting for experiments/gpu_check.sh's table (pytest -s shows it)
    print(f"\ngpu-step {DEVICE} ZeRO-{zero_stage} {dtype} {path}: logp max |err| {logp_error:.2e}, loss |err| "
          f"{abs(result.stats['pg_loss'] - cpu_loss):.2e}, grad norm rel err {abs(result.grad_norm / cpu_norm - 1):.2e}")
    assert logp_error <= tol["logp_max"], (logp_error, tol)
    assert not result.skipped
    assert abs(result.stats["pg_loss"] - cpu_loss) <= tol["loss_abs"], (result.stats["pg_loss"], cpu_loss, tol)
    assert result.grad_norm == pytest.approx(cpu_norm, rel=tol["grad_norm_rel"]), (result.grad_norm, cpu_norm, tol)
