"""The RPO trajectory cache: exact round trip, versioning and rollback, refusal of foreign caches, resumable init,
reading while a trainer writes, and SIGKILL at random moments of a write leaving no torn step."""
from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cache import (
    CacheEntry,
    CacheError,
    CacheMismatchError,
    CacheStateError,
    NotACacheError,
    TrajectoryCache,
    initialize_cache,
    model_fingerprint,
    tokenizer_fingerprint,
)
from cache.cli import main as cli_main
from rpo_core.common.types import Problem, Sample

REPO = Path(__file__).resolve().parents[1]
FP = {"model": "base-model-abc", "tokenizer": "tok-123", "dataset": "gsm8k/train"}


def make_entry(uid: str, step: int, length: int = 7, seed: int = 0, **kw) -> CacheEntry:
    rng = np.random.default_rng([seed, step, sum(map(ord, uid))])
    base = dict(
        uid=uid,
        prompt_ids=rng.integers(0, 151_000, size=5).tolist(),
        response_ids=rng.integers(0, 151_000, size=length).tolist(),
        logprobs=(-rng.exponential(size=length)).tolist(),
        reward=float(rng.integers(0, 2)),
        policy_step=max(step - 1, 0),
        created_at=time.time(),
    )
    base.update(kw)
    return CacheEntry(**base)


def same_content(a: CacheEntry, b: CacheEntry) -> bool:
    keys = ("uid", "prompt_ids", "response_ids", "logprobs", "reward", "policy_step", "created_at", "prefix_len",
            "prefix_policy_step", "finished")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


@pytest.fixture
def path(tmp_path):
    return tmp_path / "run" / "rpo_cache.sqlite"


# ------------------------------------------------------------------ round trip and input checks

def test_round_trip_is_exact_bit_for_bit(path):
    rng = np.random.default_rng(0)
    logprobs = [-0.0, -1e-300, -5e-324, -1 / 3, -math.pi * 1e5, float("-inf")] + (-rng.exponential(size=2000)).tolist()
    response = [0, 1, 2**31 - 1] + rng.integers(0, 2**31 - 1, size=2003).tolist()
    entries = [
        CacheEntry("long", list(range(300)), response, logprobs, 0.123456789012345678, 0, 1.7e9 + 0.123456,
                   finished=False),
        CacheEntry("empty", [7], [], [], None, 0, 1.7e9),
    ]
    with TrajectoryCache(path, FP) as cache:
        cache.put_many(entries, version_step=0)
    with TrajectoryCache(path, FP) as cache:  # a fresh handle reads from disk
        got = cache.get_many(["long", "empty", "absent"])
    assert set(got) == {"long", "empty"}
    for e in entries:
        g = got[e.uid]
        assert same_content(g, e) and g.version_step == 0
        # float equality treats 0.0 == -0.0; compare the bits too
        assert struct.pack(f"<{len(e.logprobs)}d", *g.logprobs) == struct.pack(f"<{len(e.logprobs)}d", *e.logprobs)
    assert got["empty"].reward is None and got["long"].finished is False


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(logprobs=[-1.0]), "logprobs for"),
        (dict(response_ids=[1, -2, 3]), "out of range"),
        (dict(response_ids=[1, 2**31, 3]), "out of range"),
        (dict(response_ids=[1.0, 2.5, 3.0]), "must be integers"),
        (dict(reward=float("nan")), "finite"),
        (dict(policy_step=5), "policy_step"),
        (dict(prefix_len=4), "prefix_len"),
        (dict(uid=""), "uid"),
    ],
)
def test_bad_entries_are_refused_and_nothing_is_written(path, change, message):
    good = make_entry("ok", 1, length=3)
    bad = CacheEntry(**{**good.__dict__, "uid": "bad", **change})
    with TrajectoryCache(path, FP) as cache:
        with pytest.raises(ValueError, match=message):
            cache.put_many([good, bad], version_step=1)
        assert len(cache) == 0  # the good entry of the refused batch was not written either


def test_duplicate_uid_in_one_update_is_refused(path):
    with TrajectoryCache(path, FP) as cache:
        with pytest.raises(ValueError, match="same uid"):
            cache.put_many([make_entry("a", 1), make_entry("a", 1, seed=1)], version_step=1)


# ------------------------------------------------------------------ versioning, rollback, checkpoint state

def test_versions_rollback_and_checkpoint_state(path):
    with TrajectoryCache(path, FP) as cache:
        cache.put_many([make_entry(u, 0) for u in "abc"], version_step=0)
        state0 = cache.state()
        cache.put_many([make_entry("a", 1)], version_step=1)
        state1 = cache.state()
        cache.put_many([make_entry("a", 2), make_entry("b", 2)], version_step=2)
        state2 = cache.state()

        cur = cache.get_many(list("abc"))
        assert {u: e.version_step for u, e in cur.items()} == {"a": 2, "b": 2, "c": 0}
        assert cur["a"].response_ids == make_entry("a", 2).response_ids
        at1 = cache.get_many(list("abc"), at_step=1)
        assert {u: e.version_step for u, e in at1.items()} == {"a": 1, "b": 0, "c": 0}
        assert cache.state(at_step=1) == state1 and cache.state(at_step=0) == state0
        assert state0["checksum"] != state1["checksum"] != state2["checksum"]
        assert (state2["version_step"], state2["num_entries"]) == (2, 3)
        assert [e.version_step for e in cache.history("a")] == [0, 1, 2]

        assert cache.rollback_to(1) == 2
        assert cache.state() == state1
        assert cache.rollback_to(1) == 0
        assert cache.rollback_to(0) == 1
        assert cache.state() == state0  # initialization rows survive a rollback to step 0
        assert len(cache) == 3


def test_stale_or_overlapping_writes_are_refused(path):
    with TrajectoryCache(path, FP) as cache:
        cache.put_many([make_entry("a", 0)], version_step=0)
        cache.put_many([make_entry("a", 1)], version_step=1)
        cache.put_many([make_entry("b", 1)], version_step=1)  # same handle, same step: allowed
        cache.put_many([make_entry("c", 2)], version_step=2)
        with pytest.raises(CacheStateError, match="already holds step 2"):
            cache.put_many([make_entry("a", 1, seed=3)], version_step=1)
        with pytest.raises(CacheStateError, match="already has an entry"):
            cache.put_many([make_entry("c", 2, seed=3)], version_step=2)
    with TrajectoryCache(path, FP) as cache:  # a resumed run that forgot to roll back
        with pytest.raises(CacheStateError, match="from an earlier run"):
            cache.put_many([make_entry("d", 2)], version_step=2)
        cache.rollback_to(1)
        cache.put_many([make_entry("d", 2)], version_step=2)
        assert {u: e.version_step for u, e in cache.get_many(list("abcd")).items()} == {"a": 1, "b": 1, "d": 2}


def test_restore_checks_state_before_deleting(path):
    with TrajectoryCache(path, FP) as cache:
        cache.put_many([make_entry(u, 0) for u in "ab"], version_step=0)
        cache.put_many([make_entry("a", 1)], version_step=1)
        ckpt = cache.state()
        cache.put_many([make_entry("b", 2)], version_step=2)  # written, then the run dies before its checkpoint
    with TrajectoryCache(path, FP) as cache:
        wrong = {**ckpt, "checksum": "0" * 64}
        with pytest.raises(CacheStateError, match="checksum: checkpoint recorded"):
            cache.restore(1, wrong)
        assert cache.state()["version_step"] == 2  # nothing deleted on a refused restore
        assert cache.restore(1, ckpt) == 1
        assert cache.state() == ckpt


def test_compact_keeps_every_state_from_the_kept_step_on(path):
    with TrajectoryCache(path, FP) as cache:
        cache.put_many([make_entry(u, 0) for u in "abc"], version_step=0)
        for s in range(1, 6):
            cache.put_many([make_entry("a", s), make_entry("bc"[s % 2], s)], version_step=s)
        before = {s: cache.state(at_step=s) for s in range(0, 6)}
        rows = cache.stats()["num_rows"]
        removed = cache.compact(keep_from_step=3)
        assert removed > 0 and cache.stats()["num_rows"] == rows - removed
        assert all(cache.state(at_step=s) == before[s] for s in range(3, 6))
        assert cache.state(at_step=1) != before[1]  # older states are gone, as asked
        cache.verify()


# ------------------------------------------------------------------ refusing what is not this run's cache

def test_fingerprint_mismatch_is_refused_with_both_values_and_the_fix(path):
    TrajectoryCache(path, FP).close()
    with pytest.raises(CacheMismatchError) as err:
        TrajectoryCache(path, {**FP, "tokenizer": "tok-999"})
    msg = str(err.value)
    assert "tok-123" in msg and "tok-999" in msg and str(path) in msg and "delete" in msg
    with pytest.raises(CacheMismatchError, match="extra"):
        TrajectoryCache(path, {**FP, "extra": "x"})
    TrajectoryCache(path, dict(reversed(FP.items()))).close()  # same fingerprint, any order


def test_paths_that_are_not_caches_are_refused_untouched(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a database " * 100)
    with pytest.raises(NotACacheError, match="not an RPO trajectory cache"):
        TrajectoryCache(text, FP)
    assert text.read_text() == "hello, not a database " * 100

    foreign = tmp_path / "other.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(NotACacheError, match="tables: \\['t'\\]"):
        TrajectoryCache(foreign, FP)
    with sqlite3.connect(foreign) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # we did not switch it to WAL
    conn.close()

    with pytest.raises(FileNotFoundError):
        TrajectoryCache(tmp_path / "absent.sqlite", readonly=True)
    with pytest.raises(ValueError, match="fingerprint"):
        TrajectoryCache(tmp_path / "new.sqlite")
    with pytest.raises(ValueError, match="synchronous"):
        TrajectoryCache(tmp_path / "new.sqlite", FP, synchronous="sometimes")


def test_readonly_handle_cannot_write(path):
    TrajectoryCache(path, FP).close()
    with TrajectoryCache(path, readonly=True) as cache:
        with pytest.raises(CacheError, match="read-only"):
            cache.put_many([make_entry("a", 0)], version_step=0)


# ------------------------------------------------------------------ resumable initialization

def fake_problem(i: int) -> Problem:
    return Problem(uid=f"q{i:03d}", question=f"what is {i}+1?", gold=str(i + 1), prompt_ids=(1, 2, 100 + i))


def fake_generate(problems: list[Problem], calls: list[str]) -> list[Sample]:
    """A deterministic stand-in for the engine: response content depends only on the uid."""
    out = []
    for p in reversed(problems):  # order must not matter
        calls.append(p.uid)
        n = 3 + int(p.uid[1:]) % 5
        out.append(Sample(uid=p.uid, prompt_ids=list(p.prompt_ids), response_ids=list(range(10, 10 + n)),
                          behavior_logprobs=[-0.5 / (k + 1) for k in range(n)], policy_step=0))
    return out


def test_killed_initialization_resumes_without_generating_twice(path):
    problems = [fake_problem(i) for i in range(10)]
    calls: list[str] = []

    def dies_after_two_batches(batch):
        if len(calls) >= 6:
            raise KeyboardInterrupt("killed")
        return fake_generate(batch, calls)

    with TrajectoryCache(path, FP) as cache:
        with pytest.raises(KeyboardInterrupt):
            initialize_cache(cache, problems, dies_after_two_batches, batch_size=3, progress=False)
        assert len(cache) == 6

    reward = lambda p, s: float(len(s.response_ids) % 2)  # noqa: E731
    with TrajectoryCache(path, FP) as cache:
        report = initialize_cache(cache, problems + problems[:2], lambda b: fake_generate(b, calls), batch_size=3,
                                  progress=False, reward_fn=reward)
        assert sorted(calls) == sorted(p.uid for p in problems)  # every question generated exactly once
        assert (report["entries_written"], report["entries_already_present"], report["entries_total"]) == (4, 6, 10)
        assert (report["duplicates_skipped"], report["batches"]) == (2, 2)
        cached = cache.get_many([p.uid for p in problems])
        expected = {s.uid: s for s in fake_generate(problems, [])}
        for uid, e in cached.items():
            assert e.response_ids == expected[uid].response_ids and e.logprobs == expected[uid].behavior_logprobs
            assert e.version_step == 0 and e.policy_step == 0
        assert [cached[p.uid].reward for p in problems[:6]] == [None] * 6  # first run had no reward_fn
        assert all(cached[p.uid].reward == reward(None, expected[p.uid]) for p in problems[6:])
        all_tokens = sum(len(e.response_ids) for e in cached.values())
        assert report["total_generated_tokens"] == all_tokens
        assert report["generated_tokens"] == sum(len(cached[p.uid].response_ids) for p in problems[6:])
        assert report["total_seconds"] > report["seconds"] > 0  # includes the killed run's committed batches

        again = initialize_cache(cache, problems, lambda b: pytest.fail("nothing left to generate"), batch_size=3,
                                 progress=False)
        assert (again["entries_written"], again["entries_already_present"]) == (0, 10)
        assert again["total_seconds"] == pytest.approx(report["total_seconds"] + again["seconds"], abs=1e-3)


def test_init_refuses_a_generator_that_returns_the_wrong_samples(path):
    problems = [fake_problem(i) for i in range(4)]
    with TrajectoryCache(path, FP) as cache:
        with pytest.raises(ValueError, match="exactly one Sample per problem"):
            initialize_cache(cache, problems, lambda b: fake_generate(b, [])[:-1], batch_size=4, progress=False)

        def wrong_prompt(batch):
            samples = fake_generate(batch, [])
            samples[0].prompt_ids = [9, 9]
            return samples

        with pytest.raises(ValueError, match="different prompt"):
            initialize_cache(cache, problems, wrong_prompt, batch_size=4, progress=False)
        assert len(cache) == 0


# ------------------------------------------------------------------ fingerprints of real tokenizer / model files

def tiny_tokenizer(folder: Path, extra_token: str | None = None, template: str = "{{ messages }}"):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<eos>", "what", "is", "two", "plus", "three", "five", "?"] + ([extra_token] if extra_token else [])
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")
    fast.chat_template = template
    fast.save_pretrained(folder)
    return fast


def test_tokenizer_and_model_fingerprints(tmp_path):
    from transformers import AutoTokenizer

    a = tokenizer_fingerprint(tiny_tokenizer(tmp_path / "a"))
    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(tmp_path / "a")) == a  # stable across save/load
    assert tokenizer_fingerprint(tiny_tokenizer(tmp_path / "b", extra_token="six")) != a
    assert tokenizer_fingerprint(tiny_tokenizer(tmp_path / "c", template="{{ other }}")) != a

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"hidden_size": 8, "transformers_version": "5.19"}))
    (model / "model.safetensors").write_bytes(bytes(range(256)) * 100)
    fp = model_fingerprint(str(model))
    (model / "config.json").write_text(json.dumps({"hidden_size": 8, "transformers_version": "5.23"}))
    assert model_fingerprint(str(model)) == fp  # library version is not part of the model
    (model / "model.safetensors").write_bytes(bytes(range(256)) * 99 + bytes([1]) + bytes(range(1, 256)))
    assert model_fingerprint(str(model)) != fp


# ------------------------------------------------------------------ CLI

def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "cache.cli", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_cli_stats_show_export(path, tmp_path, capsys):
    with TrajectoryCache(path, FP) as cache:
        cache.put_many([make_entry(f"uid-{i}", 0, length=10 + i) for i in range(4)], version_step=0)
        cache.put_many([make_entry("uid-1", 1, length=30, prefix_len=12, prefix_policy_step=0)], version_step=1)
        expected = cache.get_many([f"uid-{i}" for i in range(4)])

    assert cli_main(["stats", str(path), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    lengths = [len(e.response_ids) for e in expected.values()]
    assert stats["num_entries"] == 4 and stats["num_rows"] == 5
    assert stats["response_len"]["mean"] == pytest.approx(np.mean(lengths))
    assert stats["age"]["policy_step_counts"] == {"0": 4}
    assert stats["age"]["version_step_counts"] == {"0": 3, "1": 1}
    assert stats["reward"]["count"] == 4 and sum(stats["reward"]["histogram"].values()) == 4
    assert cli_main(["stats", str(path)]) == 0
    assert "entries      4" in capsys.readouterr().out

    assert cli_main(["show", str(path), "uid-1"]) == 0
    out = capsys.readouterr().out
    assert "written at step 1" in out and str(expected["uid-1"].response_ids) in out
    assert cli_main(["show", str(path), "uid-1", "--history"]) == 0
    assert capsys.readouterr().out.count("uid uid-1 ") == 2
    assert cli_main(["show", str(path), "uid"]) == 2
    assert "ambiguous" in capsys.readouterr().err
    assert cli_main(["show", str(path), "nope"]) == 2
    assert "no entry" in capsys.readouterr().err

    out_file = tmp_path / "out.jsonl"
    assert cli_main(["export", str(path), str(out_file)]) == 0
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(rows) == 4
    for row in rows:
        e = expected[row["uid"]]
        assert (row["response_ids"], row["logprobs"], row["reward"]) == (e.response_ids, e.logprobs, e.reward)
    assert cli_main(["export", str(path), str(out_file), "--all-versions"]) == 0
    assert len(out_file.read_text().splitlines()) == 5
    assert cli_main(["check", str(path)]) == 0

    not_cache = tmp_path / "x.txt"
    not_cache.write_text("nope" * 1000)
    assert cli_main(["stats", str(not_cache)]) == 2
    assert "not an RPO trajectory cache" in capsys.readouterr().err


def test_cli_show_decodes_with_a_tokenizer(path, tmp_path, capsys):
    tok = tiny_tokenizer(tmp_path / "tok")
    prompt, response = tok.encode("what is two plus three ?"), tok.encode("five <eos>")
    with TrajectoryCache(path, FP) as cache:
        cache.put_many([CacheEntry("q", prompt, response, [-0.1, -0.2], 1.0, 0, time.time())], version_step=0)
    assert cli_main(["show", str(path), "q", "--tokenizer", str(tmp_path / "tok")]) == 0
    out = capsys.readouterr().out
    assert "what is two plus three ?" in out and "five <eos>" in out


def test_a_reader_process_reads_while_the_trainer_is_writing(path):
    with TrajectoryCache(path, FP) as cache:
        cache.put_many([make_entry(u, 0) for u in "ab"], version_step=0)
        cache._conn.execute("BEGIN IMMEDIATE")  # the trainer is in the middle of a step's write
        cache.put_many([make_entry("a", 1), make_entry("c", 1)], version_step=1)
        t = time.perf_counter()
        during = run_cli("stats", str(path), "--json")
        assert during.returncode == 0, during.stderr
        assert time.perf_counter() - t < 30  # not blocked behind the writer's lock
        s = json.loads(during.stdout)
        assert (s["num_entries"], s["version_step"]) == (2, 0)  # the committed snapshot, nothing half-written
        cache._conn.execute("COMMIT")
        after = json.loads(run_cli("stats", str(path), "--json").stdout)
        assert (after["num_entries"], after["version_step"]) == (3, 1)


# ------------------------------------------------------------------ SIGKILL during writes

CHILD = r"""
import sys, numpy as np
from cache import CacheEntry, TrajectoryCache
path, n_uids = sys.argv[1], int(sys.argv[2])
FP = {"model": "base-model-abc", "tokenizer": "tok-123", "dataset": "gsm8k/train"}

def content(uid_index, step):
    rng = np.random.default_rng([uid_index, step])
    n = int(rng.integers(2000, 6000))
    return rng.integers(0, 151000, size=n).tolist(), (-rng.exponential(size=n)).tolist()

with TrajectoryCache(path, FP) as cache:
    step = (cache.state()["version_step"] or 0) + 1
    print("ready", step, flush=True)
    while True:
        entries = []
        for i in range(n_uids):
            ids, lps = content(i, step)
            entries.append(CacheEntry(f"u{i}", [1, 2, 3], ids, lps, float(step % 2), step - 1, 1e9 + step))
        cache.put_many(entries, version_step=step)
        step += 1
"""


def test_sigkill_during_writes_leaves_no_torn_step(path):
    n_uids, trials = 8, 8
    rng = np.random.default_rng(1234)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    path.parent.mkdir(parents=True)
    first_steps = []
    for _ in range(trials):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(n_uids)], stdout=subprocess.PIPE,
                                 text=True, env=env)
        line = child.stdout.readline().split()
        assert line[0] == "ready", line
        first_steps.append(int(line[1]))
        time.sleep(rng.uniform(0.05, 0.5))
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL  # it was still writing when killed
        child.stdout.close()

        with TrajectoryCache(path, FP) as cache:  # opens cleanly as a writer (recovers the WAL)
            cache.verify()  # PRAGMA integrity_check ok and every row matches its digest
            uids_by_step: dict[int, list[str]] = {}
            for uid, step in cache._conn.execute("SELECT uid, version_step FROM entries ORDER BY uid"):
                uids_by_step.setdefault(step, []).append(uid)
        assert sorted(uids_by_step) == list(range(1, len(uids_by_step) + 1))  # no step lost or skipped
        for step, uids in uids_by_step.items():
            assert uids == [f"u{i}" for i in range(n_uids)], f"torn step {step}: {uids}"

    with TrajectoryCache(path, FP, readonly=True) as cache:  # and every row holds what the child meant to write
        for e in cache.iter_entries(all_versions=True):
            r = np.random.default_rng([int(e.uid[1:]), e.version_step])
            n = int(r.integers(2000, 6000))
            assert e.response_ids == r.integers(0, 151000, size=n).tolist()
            assert e.logprobs == (-r.exponential(size=n)).tolist()
    print(f"{trials} kills, {len(uids_by_step)} complete steps, first step of each child: {first_steps}")
    assert first_steps[-1] > first_steps[0]  # the children made progress between kills
