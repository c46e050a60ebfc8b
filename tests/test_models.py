"""rpo_core.models: the tiny model is deterministic and loads everywhere, SmolLM2 converts once, errors say what to do."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from conftest import ROOT, compose
from rpo_core.models import COMPLETE_MARKER, ModelNotFoundError, _build_atomically, is_complete, prepare_model


def _tiny_cfg(tmp_path, **overrides):
    """conf/model/tiny.yaml with its cache in tmp_path and the already-converted SmolLM2 tokenizer."""
    smol = prepare_model(compose().model)  # the project default, converted once into <repo>/.cache/models
    cfg = OmegaConf.load(ROOT / "conf/model/tiny.yaml")
    return OmegaConf.merge(cfg, {"cache_dir": str(tmp_path), "tokenizer_from": smol, **overrides})


def test_tiny_model_loads_in_transformers_with_the_smollm2_tokenizer(tiny_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = compose("model=tiny").model
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    assert model.config.num_hidden_layers == cfg.num_layers and model.config.hidden_size == cfg.hidden_size
    assert model.config.vocab_size == len(tok) == 49152
    assert model.config.eos_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
                                  tokenize=False)
    logits = model(**tok(ids, return_tensors="pt")).logits
    assert logits.shape[-1] == 49152 and torch.isfinite(logits).all()


def test_tiny_init_is_deterministic_in_the_seed(tmp_path):
    a = prepare_model(_tiny_cfg(tmp_path / "a", init_seed=7))
    b = prepare_model(_tiny_cfg(tmp_path / "b", init_seed=7))
    c = prepare_model(_tiny_cfg(tmp_path / "c", init_seed=8))
    wa, wb, wc = (load_file(f"{p}/model.safetensors") for p in (a, b, c))
    assert wa.keys() == wb.keys() == wc.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["model.embed_tokens.weight"], wc["model.embed_tokens.weight"])
    # same config -> same folder, reused without rebuilding
    assert prepare_model(_tiny_cfg(tmp_path / "a", init_seed=7)) == a


def test_a_killed_build_leaves_nothing_that_is_trusted(tmp_path):
    out = tmp_path / "model"
    orphan = tmp_path / ".model.tmp-4194999-deadbeef"  # left by a SIGKILLed build (no such pid)
    orphan.mkdir()

    def dies_halfway(tmp):
        tmp.mkdir()
        (tmp / "config.json").write_text("{}")
        raise KeyboardInterrupt  # what a Ctrl-C mid-conversion looks like

    with pytest.raises(KeyboardInterrupt):
        _build_atomically(out, dies_halfway, marker={})
    assert not out.exists() and list(tmp_path.iterdir()) == []

    # a folder from an older, interrupted non-atomic write (no marker) is not trusted and gets rebuilt
    cfg = _tiny_cfg(tmp_path)
    path = prepare_model(cfg)
    (Path(path) / COMPLETE_MARKER).unlink()
    assert not is_complete(path)
    assert prepare_model(cfg) == path and is_complete(path)


def test_smollm2_is_converted_once_into_a_plain_folder():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = compose().model
    path = prepare_model(cfg)
    assert is_complete(path)
    config = json.load(open(f"{path}/config.json"))
    assert "quantization_config" not in config  # a plain checkpoint, not a GGUF wrapper
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    prompt = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert "Paris" in tok.decode(out[0, prompt["input_ids"].shape[1]:])  # real (dequantized) weights


def test_missing_models_say_where_they_looked_and_how_to_fix_it(tmp_path):
    with pytest.raises(ModelNotFoundError, match=str(tmp_path / "nowhere")):
        prepare_model(compose("model=path", f"model.path={tmp_path / 'nowhere'}").model)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="missing .*safetensors"):
        prepare_model(compose("model=path", f"model.path={tmp_path / 'half'}").model)
    with pytest.raises(ModelNotFoundError, match="make setup"):
        prepare_model(compose("model.package=no_such_package_rpo").model)


def test_user_folder_is_returned_as_is(tiny_model_path):
    assert prepare_model(compose("model=path", f"model.path={tiny_model_path}").model) == tiny_model_path


@pytest.mark.full
def test_vllm_samples_from_the_same_distribution_as_transformers(tiny_model_path):
    """One engine for the file: vLLM's logprob of every sampled token equals transformers' on the same weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    prompt = tok(tok.apply_chat_template([{"role": "user", "content": "What is 12 + 7?"}], add_generation_prompt=True,
                                         tokenize=False), add_special_tokens=False)["input_ids"]
    llm = LLM(tiny_model_path, dtype="float32", enforce_eager=True, seed=0, max_model_len=256,
              kv_cache_memory_bytes=1 << 28)
    out = llm.generate([TokensPrompt(prompt_token_ids=prompt)],
                       SamplingParams(temperature=1.0, n=2, max_tokens=16, logprobs=0), use_tqdm=False)[0]
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    for c in out.outputs:
        ids = list(c.token_ids)
        vllm_lp = torch.tensor([step[t].logprob for t, step in zip(ids, c.logprobs)])
        with torch.no_grad():
            logits = hf(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1 : -1]
        hf_lp = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(ids)[:, None])[:, 0]
        assert len(ids) > 1
        assert torch.allclose(vllm_lp, hf_lp, atol=1e-3), (vllm_lp - hf_lp).abs().max()
