"""Which task gives GRPO a learning signal from step 0? Measure the base model's SAMPLED success rate.

GRPO learns only from groups whose G samples disagree (a group of all-correct or all-wrong has zero advantage),
so the default task must put the base model's sampled accuracy well inside (0, 1), with answers short enough
that a step of 16 prompts x 8 samples takes seconds. For each candidate (task difficulty x prompt phrasing x
answer extractor) this samples G responses per prompt at temperature 1.0 with real vLLM on the converted
SmolLM2-135M-Instruct folder and prints: mean accuracy, fraction of groups with reward variance, mean response
length, truncation rate and generated tokens/s.

    python experiments/base_rate.py                    # all candidates, 32 prompts x 8 samples each
    python experiments/base_rate.py --only add2_just --prompts 64

The table measured on this project's 2-core CPU machine is in the docstring of conf/data/arithmetic.yaml's
choice (see the report); rerun this script after changing the model or the prompt.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process engine, as the trainer runs it
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from omegaconf import OmegaConf  # noqa: E402

JUST = "What is {question}? Answer with just the number."
RESULT = "Compute {question}. Reply with only the result."
ANSWER_LINE = "What is {question}? End your reply with 'Answer: <number>'."
EQUALS = "{question} ="
CALCULATOR = "You are a calculator. Reply with only the number."
STEPS = "Compute {question} step by step, then give the final number on the last line as 'Answer: <number>'."

# name -> (conf/data/<config>.yaml, overrides of it, answer_style)
CANDIDATES = {
    "add1_just": ("arithmetic", {"digits": 1, "operations": ["+"], "prompt_template": JUST}, "last_number"),
    "add2_just": ("arithmetic", {"digits": 2, "operations": ["+"], "prompt_template": JUST}, "last_number"),
    "add2_result": ("arithmetic", {"digits": 2, "operations": ["+"], "prompt_template": RESULT}, "last_number"),
    "add2_equals": ("arithmetic", {"digits": 2, "operations": ["+"], "prompt_template": EQUALS}, "last_number"),
    "add2_answerline": ("arithmetic", {"digits": 2, "operations": ["+"], "prompt_template": ANSWER_LINE}, "answer_line"),
    "addsub2_just": ("arithmetic", {"digits": 2, "operations": ["+", "-"], "prompt_template": JUST}, "last_number"),
    "mul1_just": ("arithmetic", {"digits": 1, "operations": ["*"], "prompt_template": JUST}, "last_number"),
    "add3x1_just": ("arithmetic", {"digits": 1, "operations": ["+"], "num_operands": 3, "prompt_template": JUST}, "last_number"),
    "addsub3x1_just": ("arithmetic", {"digits": 1, "operations": ["+", "-"], "num_operands": 3, "prompt_template": JUST},
                       "last_number"),
    "add1_sys": ("arithmetic", {"digits": 1, "operations": ["+"], "prompt_template": JUST, "system_prompt": CALCULATOR}, "last_number"),
    "add0to20_just": ("arithmetic", {"max_operand": 20, "operations": ["+"], "prompt_template": JUST}, "last_number"),
    "add1_answerline": ("arithmetic", {"digits": 1, "operations": ["+"], "prompt_template": ANSWER_LINE}, "answer_line"),
    "addmul1_just": ("arithmetic", {"digits": 1, "operations": ["+", "*"], "prompt_template": JUST}, "last_number"),
    "addsubmul1_just": ("arithmetic", {"digits": 1, "operations": ["+", "-", "*"], "prompt_template": JUST}, "last_number"),
    # long-reasoning candidates (issue 14): step-by-step answers of 80-300 tokens
    "mawps_cot": ("mawps", {}, "auto"),
    "mawps_cot_last": ("mawps", {}, "last_number"),
    "gsm8k_cot": ("gsm8k", {"max_new_tokens": 256}, "auto"),
    "arith3x2_cot": ("arithmetic", {"digits": 2, "operations": ["+", "-"], "num_operands": 3,
                                    "prompt_template": STEPS}, "auto"),
    "arith2x1_cot": ("arithmetic", {"digits": 1, "operations": ["+", "-", "*"], "prompt_template": STEPS}, "auto"),
    "arith2x1_cot_last": ("arithmetic", {"digits": 1, "operations": ["+", "-", "*"], "prompt_template": STEPS},
                          "last_number"),
    "arith2x20_cot_last": ("arithmetic", {"max_operand": 20, "operations": ["+", "-", "*"], "prompt_template": STEPS},
                           "last_number"),
    "arith3x1_cot_last": ("arithmetic", {"digits": 1, "operations": ["+", "-", "*"], "num_operands": 3,
                                         "prompt_template": STEPS}, "last_number"),
    "arith3x1_cot": ("arithmetic", {"digits": 1, "operations": ["+", "-", "*"], "num_operands": 3,
                                    "prompt_template": STEPS}, "auto"),
}


def score(text: str, gold: str, style: str) -> float:
    """1.0 when the answer extracted in `style` equals the gold as a number, else 0.0."""
    from rewards.extract import extract_answer
    from rewards.numbers import fast_verdict

    pred = extract_answer(text, style)
    return float(pred is not None and fast_verdict(gold, pred) is True)


def check_greedy_matches_transformers(model_path: str, llm, dtype: str, prompts: list[list[int]]) -> None:
    """The converted folder must decode identically in vLLM and transformers (greedy), else the weights differ."""
    import torch
    from transformers import AutoModelForCausalLM
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    hf = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], SamplingParams(temperature=0, max_tokens=24),
                        use_tqdm=False)
    for p, o in zip(prompts, outs):
        v = list(o.outputs[0].token_ids)
        h = hf.generate(torch.tensor([p]), max_new_tokens=24, do_sample=False)[0, len(p):].tolist()
        same = v == h[: len(v)]
        print(f"greedy check: vLLM == transformers: {same}  {o.outputs[0].text!r}")
        if not same:
            print(f"   transformers: {h}\n   vLLM:         {v}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=None, help=f"candidates to run (default all): {list(CANDIDATES)}")
    ap.add_argument("--prompts", type=int, default=32, help="prompts per candidate")
    ap.add_argument("--group-size", type=int, default=8, help="samples per prompt (G)")
    ap.add_argument("--max-tokens", type=int, default=48, help="generation budget per sample")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="vLLM weights dtype")
    ap.add_argument("--model", default="smollm2_135m", help="conf/model/<name>.yaml")
    ap.add_argument("--examples", type=int, default=2, help="responses printed per candidate")
    args = ap.parse_args()

    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from rpo_core.data import load_problems
    from rpo_core.models import prepare_model

    model_path = prepare_model(OmegaConf.load(ROOT / "conf/model" / f"{args.model}.yaml"))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    t0 = time.perf_counter()
    llm = LLM(model_path, dtype=args.dtype, enforce_eager=True, seed=0, max_model_len=1024,
              kv_cache_memory_bytes=1 << 30, enable_prefix_caching=True)
    print(f"engine ready in {time.perf_counter() - t0:.1f}s ({model_path}, {args.dtype})")

    names = args.only or list(CANDIDATES)
    rows = []
    for i, name in enumerate(names):
        config, overrides, style = CANDIDATES[name]
        base = OmegaConf.load(ROOT / "conf/data" / f"{config}.yaml")
        cfg = OmegaConf.merge(base, {"n_train": 0, "n_test": args.prompts, **overrides})
        problems = load_problems(cfg, tokenizer).test
        if i == 0:
            check_greedy_matches_transformers(model_path, llm, args.dtype, [list(p.prompt_ids) for p in problems[:2]])
        params = SamplingParams(temperature=1.0, n=args.group_size, max_tokens=args.max_tokens)
        t = time.perf_counter()
        outs = llm.generate([TokensPrompt(prompt_token_ids=list(p.prompt_ids)) for p in problems], params,
                            use_tqdm=False)
        seconds = time.perf_counter() - t
        rewards, lengths, truncated, varied = [], [], 0, 0
        for p, o in zip(problems, outs):
            group = [score(c.text, p.gold, style) for c in o.outputs]
            rewards += group
            varied += 0 < sum(group) < len(group)
            lengths += [len(c.token_ids) for c in o.outputs]
            truncated += sum(c.finish_reason == "length" for c in o.outputs)
        for p, o in list(zip(problems, outs))[: args.examples]:
            print(f"  [{name}] {p.question} = {p.gold}: {o.outputs[0].text!r}")
        row = dict(name=name, style=style, acc=sum(rewards) / len(rewards), varied=varied / len(problems),
                   length=sum(lengths) / len(lengths), truncated=truncated / len(lengths),
                   tok_s=sum(lengths) / seconds, seconds=seconds)
        rows.append(row)
        print(f"{name}: acc {row['acc']:.3f}, groups with variance {row['varied']:.2f}, "
              f"mean length {row['length']:.1f}, truncated {row['truncated']:.2f}, {row['tok_s']:.0f} tok/s")

    print(f"\n{args.prompts} prompts x {args.group_size} samples, temperature 1.0, max_tokens {args.max_tokens}, "
          f"{args.dtype}")
    print(f"{'candidate':<18}{'extractor':<13}{'acc':>7}{'var.groups':>12}{'len':>7}{'trunc':>7}{'tok/s':>8}{'s':>7}")
    for r in rows:
        print(f"{r['name']:<18}{r['style']:<13}{r['acc']:>7.3f}{r['varied']:>12.2f}{r['length']:>7.1f}"
              f"{r['truncated']:>7.2f}{r['tok_s']:>8.0f}{r['seconds']:>7.1f}")
    for name in names:
        config, overrides, _ = CANDIDATES[name]
        print(f"  {name}: data={config} {overrides}")


if __name__ == "__main__":
    main()
