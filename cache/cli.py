"""rpo-cache: inspect an RPO trajectory cache (read-only; safe while a trainer is writing it).

  rpo-cache stats  PATH [--step N] [--json]
  rpo-cache show   PATH ID [--tokenizer DIR] [--history] [--step N]      (ID may be a uid prefix)
  rpo-cache export PATH OUT.jsonl [--all-versions] [--step N]
  rpo-cache check  PATH                                                  (integrity check + per-row digests)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

from cache.store import CacheEntry, CacheError, TrajectoryCache


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="rpo-cache", description="Inspect an RPO trajectory cache (read-only).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stats", help="entries, mean length, reward distribution, age by step")
    p.add_argument("path")
    p.add_argument("--step", type=int, default=None, help="the cache as it was at this training step")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")

    p = sub.add_parser("show", help="one entry: ids, logprobs, reward, and decoded text with --tokenizer")
    p.add_argument("path")
    p.add_argument("id", help="question uid, or a unique prefix of one")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder to decode the ids with")
    p.add_argument("--history", action="store_true", help="every stored version, not just the current one")
    p.add_argument("--step", type=int, default=None, help="the entry as it was at this training step")

    p = sub.add_parser("export", help="current entries (or every version) as JSON lines")
    p.add_argument("path")
    p.add_argument("out", help="output .jsonl file (written atomically)")
    p.add_argument("--all-versions", action="store_true", help="every stored version, not just current entries")
    p.add_argument("--step", type=int, default=None, help="the cache as it was at this training step")

    p = sub.add_parser("check", help="SQLite integrity check and every row against its digest")
    p.add_argument("path")

    args = parser.parse_args(argv)
    try:
        with TrajectoryCache(args.path, readonly=True) as cache:
            return {"stats": _stats, "show": _show, "export": _export, "check": _check}[args.command](cache, args)
    except (CacheError, FileNotFoundError) as e:
        print(f"rpo-cache: error: {e}", file=sys.stderr)
        return 2


def _stats(cache: TrajectoryCache, args) -> int:
    s = cache.stats(at_step=args.step)
    if args.json:
        print(json.dumps(s, indent=2, default=str))
        return 0
    print(f"cache        {s['path']}  ({s['size_bytes'] / 2**20:.1f} MiB, {s['num_rows']} stored rows)")
    print("fingerprint  " + ", ".join(f"{k}={v}" for k, v in sorted(s["fingerprint"].items())))
    init = s["init"]
    print(f"init         {init['entries']:.0f} entries generated in {init['seconds']:.1f} s "
          f"({init['seconds'] / 3600:.3f} h), {init['generated_tokens']:.0f} tokens")
    print(f"entries      {s['num_entries']}  (newest step {s['version_step']})")
    if not s["num_entries"]:
        return 0
    L = s["response_len"]
    print(f"response len mean {L['mean']:.1f}  std {L['std']:.1f}  min {L['min']:.0f}  p50 {L['p50']:.0f}  "
          f"p90 {L['p90']:.0f}  max {L['max']:.0f}  (truncated {s['truncated']}, with RPO prefix {s['with_prefix']})")
    R = s["reward"]
    if R["count"]:
        print(f"reward       mean {R['mean']:.4f}  std {R['std']:.4f}  min {R['min']:g}  max {R['max']:g}  "
              f"(none: {R['none']})")
        for bucket, n in R["histogram"].items():
            print(f"  {bucket:>22}  {n:>7}  {_bar(n, R['count'])}")
    else:
        print(f"reward       none recorded ({R['none']} entries)")
    A = s["age"]
    print(f"age          steps behind newest: mean {A['steps_behind_newest']['mean']:.1f}, "
          f"max {A['steps_behind_newest']['max']:.0f}")
    print("  entries by the policy step that generated them:")
    for step, n in A["policy_step_counts"].items():
        print(f"  {step:>22}  {n:>7}  {_bar(n, s['num_entries'])}")
    return 0


def _show(cache: TrajectoryCache, args) -> int:
    matches = cache.uids_with_prefix(args.id)
    if args.id in matches:
        uid = args.id
    elif len(matches) == 1:
        uid = matches[0]
    elif not matches:
        raise CacheError(f"no entry with uid or uid prefix {args.id!r} in {cache.path}")
    else:
        raise CacheError(f"uid prefix {args.id!r} is ambiguous: {', '.join(matches[:10])}"
                         f"{' ...' if len(matches) > 10 else ''}")
    if args.history:
        entries = [e for e in cache.history(uid) if args.step is None or e.version_step <= args.step]
    else:
        entries = list(cache.get_many([uid], at_step=args.step).values())
    if not entries:
        raise CacheError(f"{uid!r} has no entry at or before step {args.step}")
    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer  # only when decoding is asked for: importing it takes seconds

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    for e in entries:
        _print_entry(e, tokenizer)
    return 0


def _print_entry(e: CacheEntry, tokenizer) -> None:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.created_at))
    prefix = f", prefix {e.prefix_len} tokens from policy step {e.prefix_policy_step}" if e.prefix_len else ""
    print(f"uid {e.uid}  written at step {e.version_step}  policy step {e.policy_step}{prefix}  created {when}")
    lp_sum = sum(e.logprobs)
    print(f"reward {e.reward}  finished {e.finished}  prompt {len(e.prompt_ids)} tokens  "
          f"response {len(e.response_ids)} tokens  sum logprob {lp_sum:.4f}")
    print(f"prompt_ids   {e.prompt_ids}")
    print(f"response_ids {e.response_ids}")
    print(f"logprobs     {[round(x, 4) for x in e.logprobs]}")
    if tokenizer is not None:
        print("--- prompt ---")
        print(tokenizer.decode(e.prompt_ids))
        print("--- response ---")
        if e.prefix_len:
            prefix, suffix = e.response_ids[: e.prefix_len], e.response_ids[e.prefix_len :]
            print(tokenizer.decode(prefix) + " ‖ " + tokenizer.decode(suffix))  # ‖ marks where the RPO prefix ends
        else:
            print(tokenizer.decode(e.response_ids))
    print()


def _export(cache: TrajectoryCache, args) -> int:
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for e in cache.iter_entries(at_step=args.step, all_versions=args.all_versions):
                f.write(json.dumps({
                    "uid": e.uid, "version_step": e.version_step, "policy_step": e.policy_step, "reward": e.reward,
                    "finished": e.finished, "prefix_len": e.prefix_len, "prefix_policy_step": e.prefix_policy_step,
                    "created_at": e.created_at, "prompt_ids": e.prompt_ids, "response_ids": e.response_ids,
                    "logprobs": e.logprobs,
                }) + "\n")
                n += 1
        os.replace(tmp, out)  # a partial export never appears under the final name
    finally:
        tmp.unlink(missing_ok=True)
    print(f"exported {n} {'rows' if args.all_versions else 'entries'} to {out}", file=sys.stderr)
    return 0


def _check(cache: TrajectoryCache, args) -> int:
    result = cache.verify()
    print(f"ok: {result['rows']} rows ({result['entries']} questions) match their digests; integrity check ok")
    return 0


def _bar(n: int, total: int, width: int = 30) -> str:
    return "#" * round(width * n / total) if total else ""


if __name__ == "__main__":
    sys.exit(main())
