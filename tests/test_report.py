"""rpo-report on synthetic sweep directories laid out as `rpo-train -m` writes them (numbers checked by hand)."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from experiments import report as rep
from rpo_core.train import retire_failure_record

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
G, QUESTIONS = 4, 2  # group size and questions per generation: 8 sampled responses per generating step


def write_run(job: Path, algo: str, seed: int, *, rpo: bool = False, la: bool | None = None,
              acc: tuple[float, float] | None = None, steps: list[dict] | None = None,
              cache_init: float | None = None, total_steps: int = 3, extra: tuple[str, ...] = (),
              error: str | None = None, write_config: bool = True) -> Path:
    """One sweep job: .hydra/{overrides,config}.yaml always, config.yaml/metrics.jsonl/error.txt as asked."""
    (job / ".hydra").mkdir(parents=True)
    overrides = ["model=tiny", f"trainer.total_steps={total_steps}", f"algorithm={algo}",
                 f"rpo.enabled={str(rpo).lower()}", f"seed={seed}", *extra]
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = {"seed": seed, "algorithm": {"name": algo}, "rpo": {"enabled": rpo, "init": "upfront"},
              "reward": {"correctness": "binary"}, "model": {"name": "tiny"}, "data": {"name": "arithmetic"},
              "rollout": {"group_size": G}, "trainer": {"total_steps": total_steps, "output_dir": "${now:%H}"}}
    if la is not None:
        config["reward"]["length_aware"] = {"enabled": la}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if write_config:
        config["trainer"]["output_dir"] = str(job)
        (job / "config.yaml").write_text(yaml.safe_dump(config))
    if steps is not None:
        step0 = {"step": 0, "accuracy": acc[0]}
        if cache_init is not None:
            step0.update(cache_init_seconds=cache_init, cache_init_tokens=1000)
        lines = [step0]
        wall = 5.0
        for i, s in enumerate(steps, start=1):
            wall += s["time_step"]
            line = {"step": i, "reward_mean": 0.1 * i, "correct_mean": 0.1 * i, "samples": 8,
                    "accuracy": acc[1] if i == len(steps) else None, "prefix_tokens": 0,
                    "time_train": 1.0, "time_step": s["time_step"], "wall_time": wall, **s}
            if "rollout_tokens_per_sample" not in s:
                line.setdefault("rollout_tokens", 0)
            lines.append(line)
        (job / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if error is not None:
        (job / "error.txt").write_text(error)
    return job


def gen(tokens: int, t_rollout: float, t_step: float, questions: int = QUESTIONS) -> dict:
    """A step that generated `tokens` tokens for `questions` x G responses."""
    return {"rollout_tokens": tokens, "rollout_tokens_per_sample": tokens / (questions * G),
            "time_rollout": t_rollout, "time_step": t_step}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """grpo, grpo+RPO, rapid x 2 seeds; a grpo+RPO job failed (error.txt, no metrics); a dr_grpo job killed
    mid-run and a rapid job killed before writing anything."""
    d = tmp_path / "multirun"
    # grpo: tokens/sample (10+12+8)/3=10 and 12 -> 11; rollout 15/3=5 and 5; train 21 and 21; acc after .50, .40
    write_run(d / "0", "grpo", 0, acc=(0.25, 0.50), steps=[gen(80, 4, 6), gen(96, 5, 7), gen(64, 6, 8)])
    write_run(d / "1", "grpo", 1, acc=(0.25, 0.40), steps=[gen(96, 5, 7)] * 3)
    # grpo+RPO: tokens/sample 5 and 6; rollout 2 and 3 s/step; train 12 and 15; cache init 10 and 14
    write_run(d / "2", "grpo", 0, rpo=True, acc=(0.25, 0.45), cache_init=10.0,
              steps=[gen(40, 2, 4), gen(48, 2, 4), gen(32, 2, 4)])
    write_run(d / "3", "grpo", 1, rpo=True, acc=(0.25, 0.35), cache_init=14.0, steps=[gen(48, 3, 5)] * 3)
    write_run(d / "4", "grpo", 2, rpo=True, write_config=False,
              error="RuntimeError: boom in the rollout\n\nTraceback (most recent call last):\n  ...\n")
    # rapid, H=3: one generation of 3x the questions at step 1, then two steps that generate nothing
    write_run(d / "5", "rapid", 0, acc=(0.25, 0.50),
              steps=[gen(240, 12, 14, questions=6), {"time_step": 2.0}, {"time_step": 2.0}])
    write_run(d / "6", "rapid", 1, acc=(0.25, 0.60),
              steps=[gen(288, 15, 17, questions=6), {"time_step": 2.0}, {"time_step": 2.0}])
    # dr_grpo killed after step 2 of 3: no error.txt, but not complete either
    write_run(d / "7", "dr_grpo", 0, acc=(0.25, 0.3), steps=[gen(80, 4, 6), gen(80, 4, 6)], total_steps=3)
    (d / "7" / "metrics.jsonl").write_text(  # the kill cut the last line; rewrite so step 2 has no accuracy
        "\n".join(ln for ln in (d / "7" / "metrics.jsonl").read_text().splitlines()[:2]) + '\n{"step": 2, "rew')
    # a cut-off line in an otherwise complete run: skipped and counted, the run stays ok
    with (d / "1" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "reward_me')
    # a job killed before it wrote anything but Hydra's .hydra folder
    write_run(d / "8", "rapid", 2, write_config=False)
    (d / "multirun.yaml").write_text("hydra: {}\n")
    return d


def by_method(report: dict) -> dict[str, dict]:
    return {m["method"]: m for m in report["methods"]}


def table_rows(md: str, section: str) -> list[list[str]]:
    """Body rows of the first markdown table after the heading `section`."""
    lines = md.split(section, 1)[1].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip().strip("|").split(" | ")])
    return rows


def test_find_run_dirs_skips_hydra_folders(sweep: Path):
    dirs = rep.find_run_dirs(sweep)
    assert [d.name for d in dirs] == [str(i) for i in range(9)]


def test_per_run_rows(sweep: Path, tmp_path: Path):
    report = rep.build_report(sweep, tmp_path / "out")
    rows = report["runs"]
    assert len(rows) == 9
    status = {Path(r["path"]).name: r for r in rows}
    assert status["4"]["status"] == "FAILED" and status["4"]["error"] == "RuntimeError: boom in the rollout"
    assert status["4"]["method"] == "grpo+RPO" and status["4"]["seed"] == 2  # from .hydra/config.yaml
    assert status["7"]["status"] == "FAILED" and "stopped at step 1 of 3" in status["7"]["error"]
    assert [n for n in status["1"]["notes"] if "1 unreadable metrics.jsonl line" in n]
    assert status["1"]["status"] == "ok"
    assert status["8"]["status"] == "FAILED" and "no metrics.jsonl" in status["8"]["error"]
    assert sum(r["status"] == "ok" for r in rows) == 6
    assert status["2"]["command"] == "rpo-train model=tiny trainer.total_steps=3 algorithm=grpo rpo.enabled=true seed=0"

    md = (tmp_path / "out" / "report.md").read_text()
    table = table_rows(md, "## Runs")
    assert len(table) == 9 and all(len(r) == len(rep.RUN_HEADER) for r in table)
    failed = [r for r in table if r[2].startswith("FAILED")]
    assert len(failed) == 3 and any("RuntimeError: boom in the rollout" in r[2] for r in failed)
    for r in table:
        if r[2] == "ok":  # every column filled: "-" only for the cache init of a method without RPO
            assert all(c and c != "?" for c in r), r
            assert (r[8] == "-") == ("+RPO" not in r[0])
            assert r[9].startswith("`rpo-train ") and r[10].startswith("`")
    ok_rows = [r for r in rows if r["status"] == "ok"]
    for r in ok_rows:
        for key in ("acc_before", "acc_after", "tokens_per_sample", "rollout_s_per_step", "train_time_s",
                    "total_time_s", "seed"):
            assert r[key] is not None, (r["path"], key)


def test_aggregates_and_ratios_match_hand_computation(sweep: Path, tmp_path: Path):
    m = by_method(rep.build_report(sweep, tmp_path))
    assert set(m) == {"grpo", "grpo+RPO", "rapid", "dr_grpo"}
    g, r, ra = m["grpo"], m["grpo+RPO"], m["rapid"]
    assert (g["runs_ok"], g["runs_total"], r["runs_ok"], r["runs_total"]) == (2, 2, 2, 3)
    assert (m["dr_grpo"]["runs_ok"], m["dr_grpo"]["runs_total"]) == (0, 1)
    assert (m["rapid"]["runs_ok"], m["rapid"]["runs_total"]) == (2, 3)
    assert g["acc_after"] == pytest.approx(0.45) and g["acc_after_std"] == pytest.approx(math.sqrt(0.005))
    assert g["acc_before"] == pytest.approx(0.25) and g["acc_before_std"] == pytest.approx(0.0)
    assert g["tokens_per_sample"] == pytest.approx(11.0) and g["rollout_s_per_step"] == pytest.approx(5.0)
    assert g["train_time_s"] == pytest.approx(21.0) and g["cache_init_s"] is None
    assert r["tokens_per_sample"] == pytest.approx(5.5) and r["rollout_s_per_step"] == pytest.approx(2.5)
    assert r["train_time_s"] == pytest.approx(13.5) and r["cache_init_s"] == pytest.approx(12.0)
    assert r["total_time_s"] == pytest.approx(25.5)
    # rapid: tokens/sample over generating steps only (10, 12); rollout over all 3 steps (12/3, 15/3)
    assert ra["tokens_per_sample"] == pytest.approx(11.0) and ra["rollout_s_per_step"] == pytest.approx(4.5)
    assert ra["train_time_s"] == pytest.approx(19.5) and ra["acc_after"] == pytest.approx(0.55)

    assert g["tokens_ratio"] == 1.0 and g["acc_diff"] == 0.0
    assert r["tokens_ratio"] == pytest.approx(0.5) and r["rollout_ratio"] == pytest.approx(0.5)
    assert r["train_time_ratio"] == pytest.approx(13.5 / 21) and r["total_time_ratio"] == pytest.approx(25.5 / 21)
    assert r["acc_diff"] == pytest.approx(-0.05)
    assert ra["rollout_ratio"] == pytest.approx(0.9) and ra["train_time_ratio"] == pytest.approx(19.5 / 21)
    assert ra["acc_diff"] == pytest.approx(0.10)
    assert m["dr_grpo"]["tokens_ratio"] is None  # no ok run: nothing to compare


def test_method_table_says_where_a_method_did_worse(sweep: Path, tmp_path: Path):
    rep.build_report(sweep, tmp_path)
    md = (tmp_path / "report.md").read_text()
    rows = {r[0]: r for r in table_rows(md, "## Table 1")}
    h = {name: i for i, name in enumerate(rep.METHOD_HEADER)}
    rpo = rows["grpo+RPO"]
    assert rpo[h["runs ok/total"]] == "2/3"
    assert rpo[h["total time vs base"]] == "1.21× (worse)"
    assert rpo[h["train time vs base"]] == "0.64×"
    assert rpo[h["acc after − base"]] == "-0.050 (worse)"
    assert rpo[h["cache init s"]] == "12.0 ± 2.8"
    assert rows["grpo"][h["cache init s"]] == "-" and rows["grpo"][h["train time vs base"]] == "1.00 (baseline)"
    assert rows["grpo"][h["acc after"]] == "0.450 ± 0.071"
    assert rows["rapid"][h["acc after − base"]] == "+0.100"
    assert "grpo+RPO: total time including cache init is 1.21× the baseline's" in md
    assert "grpo+RPO: accuracy after training is 0.050 lower" in md


def test_rapid_comparison(sweep: Path, tmp_path: Path):
    report = rep.build_report(sweep, tmp_path)
    (c,) = report["rapid"]
    assert (c["rapid"], c["grpo"]) == ("rapid", "grpo")
    assert c["train_time_ratio"] == pytest.approx(19.5 / 21) and c["acc_diff"] == pytest.approx(0.10)
    assert "## RAPID vs GRPO" in (tmp_path / "report.md").read_text()


def test_report_json_matches_and_pngs_are_valid(sweep: Path, tmp_path: Path):
    import matplotlib.image as mpimg

    rep.main([str(sweep), "--out", str(tmp_path / "o"), "--copy-runs"])
    data = json.loads((tmp_path / "o" / "report.json").read_text())
    assert len(data["runs"]) == 9 and by_method(data)["grpo+RPO"]["total_time_s"] == pytest.approx(25.5)
    assert data["common_overrides"] == ["model=tiny", "trainer.total_steps=3"]
    for r in data["runs"]:  # every run's record, byte for byte, under runs/<its path in the sweep>
        copied = tmp_path / "o" / "runs" / Path(r["path"]).relative_to(sweep)
        for name in rep.RUN_RECORD:
            if (Path(r["path"]) / name).is_file():
                assert (copied / name).read_bytes() == (Path(r["path"]) / name).read_bytes()
    assert sum(1 for _ in (tmp_path / "o" / "runs").rglob("overrides.yaml")) >= 8
    # the copy is itself a sweep: re-reported, it gives the same method labels and runs
    again = rep.build_report(tmp_path / "o" / "runs", tmp_path / "again")
    assert [(r["method"], r["seed"], r["status"]) for r in again["runs"]] == [
        (r["method"], r["seed"], r["status"]) for r in data["runs"]]
    for name in ("accuracy_vs_time.png", "accuracy_vs_time_mean.png", "reward_vs_step.png", "tokens_per_step.png"):
        path = tmp_path / "o" / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        img = mpimg.imread(path)
        assert img.shape[0] >= 300 and img.shape[1] >= 600
        assert img[..., :3].std() > 0.01  # something was drawn, not a blank canvas


def test_baseline_option_and_settings(sweep: Path, tmp_path: Path):
    m = by_method(rep.build_report(sweep, tmp_path, baseline="rapid"))
    assert m["rapid"]["train_time_ratio"] == 1.0
    assert m["grpo"]["train_time_ratio"] == pytest.approx(21 / 19.5)
    # a job with another group size is a separate setting with its own (missing) baseline
    write_run(sweep / "9", "grpo", 0, rpo=True, acc=(0.25, 0.5), cache_init=1.0,
              steps=[gen(8, 1, 1)] * 3, extra=("rollout.group_size=8",))
    report = rep.build_report(sweep, tmp_path)
    other = [x for x in report["methods"] if x["setting"] == "rollout.group_size=8"]
    assert len(other) == 1 and other[0]["baseline"] is None and other[0]["train_time_ratio"] is None
    assert by_method({"methods": [x for x in report["methods"] if not x["setting"]]})["grpo+RPO"]["runs_total"] == 3


def test_method_hyperparameters_extend_the_label(tmp_path: Path):
    d = tmp_path / "sweep"
    for i, clip in enumerate((2.0, 5.0)):
        write_run(d / str(i), "rapid", 0, acc=(0.2, 0.3), steps=[gen(8, 1, 1)] * 3,
                  extra=(f"algorithm.is_clip={clip}",))
    labels = {m["method"] for m in rep.build_report(d, tmp_path)["methods"]}
    assert labels == {"rapid [algorithm.is_clip=2.0]", "rapid [algorithm.is_clip=5.0]"}


def test_length_aware_label_and_absent_key():
    run = rep.Run(path=Path("x"), config={"algorithm": {"name": "dapo"}, "rpo": {"enabled": True},
                                          "reward": {"length_aware": {"enabled": True}}},
                  overrides=None, metrics=[], error=None)
    assert rep.method_label(run) == "dapo+RPO+LA"
    run.config["reward"] = {}  # old configs have no length_aware node: off
    assert rep.method_label(run) == "dapo+RPO"


def test_empty_sweep_is_a_clear_error(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as e:
        rep.main([str(tmp_path)])
    assert e.value.code == 2 and "no run under" in capsys.readouterr().err


def test_copy_runs_again_after_a_failed_run_was_rerun(sweep: Path, tmp_path: Path):
    """A run that failed, was copied, then re-run to completion: rpo-train moves the earlier error.txt aside when it
    starts again, and the new copy holds no stale error.txt (the run reads as ok)."""
    out = tmp_path / "o"
    rep.main([str(sweep), "--out", str(out), "--copy-runs"])
    assert (out / "runs" / "4" / "error.txt").is_file()
    retire_failure_record(sweep / "4")
    assert (sweep / "4" / "error.previous.txt").is_file()
    write_run(sweep / "4b", "grpo", 2, rpo=True, acc=(0.25, 0.40), cache_init=12.0, steps=[gen(48, 3, 5)] * 3)
    for name in ("config.yaml", "metrics.jsonl"):
        (sweep / "4b" / name).rename(sweep / "4" / name)
    shutil.rmtree(sweep / "4b")
    rep.main([str(sweep), "--out", str(out), "--copy-runs"])
    assert not (out / "runs" / "4" / "error.txt").exists()
    again = rep.build_report(out / "runs", tmp_path / "again")
    run4 = {(r["method"], r["seed"]): r for r in again["runs"]}[("grpo+RPO", 2)]
    assert run4["status"] == "ok", run4


def add_eval(job: Path, greedy: list[float], wall: list[float], host: str | None = None) -> None:
    """An eval.jsonl as rpo-eval writes it: checkpoints at steps 0, 1, ... (sampled = greedy - 0.05), and the
    metrics' step 0 saying which CPU the run trained on."""
    rows = [{"checkpoint": f"step_{s:06d}", "step": s, "train_wall_s": t, "greedy_accuracy": g,
             "sampled_accuracy": round(g - 0.05, 6), "k": 4, "temperature": 0.7, "n_problems": 500}
            for s, (g, t) in enumerate(zip(greedy, wall))]
    (job / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 9, "train_wal\n')
    if host:
        lines = (job / "metrics.jsonl").read_text().splitlines()
        lines[0] = json.dumps({**json.loads(lines[0]), "host_cpu": host})
        (job / "metrics.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture
def eval_sweep(tmp_path: Path) -> Path:
    """grpo and grpo+RPO x seeds 0, 1 with eval.jsonl; grpo+RPO seed 1 trained on another CPU."""
    d = tmp_path / "evals"
    for i, (rpo, seed, greedy, host) in enumerate([(False, 0, [0.2, 0.4, 0.5, 0.6], "Zen4"),
                                                   (False, 1, [0.2, 0.3, 0.5, 0.5], "Zen4"),
                                                   (True, 0, [0.2, 0.45, 0.5, 0.5], "Zen4"),
                                                   (True, 1, [0.2, 0.3, 0.4, 0.45], "Zen3")]):
        job = write_run(d / str(i), "grpo", seed, rpo=rpo, acc=(0.25, 0.9), cache_init=5.0 if rpo else None,
                        steps=[gen(40, 2, 4)] * 3)
        add_eval(job, greedy, [0.0, 10.0, 20.0, 30.0] if not rpo else [0.0, 8.0, 16.0, 24.0], host)
        if rpo and seed == 0:  # the planner's per-step share of cache hits on entries training wrote
            rows = [json.loads(ln) for ln in (job / "metrics.jsonl").read_text().splitlines() if ln.startswith("{")]
            for r, share in zip([r for r in rows if r["step"] >= 1], (0.0, 0.25, 0.5)):
                r["cache_trained_share"] = share
            (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with (d / "0" / "eval.jsonl").open("a") as f:  # rpo-eval re-run on two checkpoints with other settings: not read
        for step in (0, 3):
            f.write(json.dumps({"step": step, "train_wall_s": 10.0 * step, "greedy_accuracy": 0.99, "k": 4,
                                "temperature": 0.7, "n_problems": 50}) + "\n")
    return d


def test_eval_jsonl_feeds_accuracies_hosts_paired_table_and_plot(eval_sweep: Path, tmp_path: Path, capsys):
    import matplotlib.image as mpimg

    out = tmp_path / "o"
    rep.main([str(eval_sweep), "--out", str(out), "--targets", "0.45", "--copy-runs"])
    printed = capsys.readouterr().out
    assert "## Paired comparisons" in printed and "| grpo+RPO vs grpo | greedy accuracy, final |" in printed
    report = json.loads((out / "report.json").read_text())
    rows = {(r["method"], r["seed"]): r for r in report["runs"]}
    assert rows[("grpo", 0)]["acc_after"] == 0.6  # rpo-eval's, not the in-run 0.9
    assert rows[("grpo", 0)]["acc_source"] == "rpo-eval (n=500, k=4, temperature 0.7)"
    assert rows[("grpo+RPO", 1)]["host"] == "Zen3"
    assert any("1 unreadable eval.jsonl line(s) skipped" in n for n in rows[("grpo", 0)]["notes"])
    (c,) = report["curves"][""]["comparisons"]
    q = {r["quantity"]: r for r in c["rows"]}
    assert q["greedy accuracy, final"]["paired"]["mean"] == pytest.approx(((0.5 - 0.6) + (0.45 - 0.5)) / 2)
    assert q["time to greedy ≥ 0.45 (s)"]["method"] == {"0": 8.0, "1": 24.0}  # JSON keys; first grid point >= 0.45
    assert q["sampled accuracy, final"]["paired"]["n"] == 2
    md = (out / "report.md").read_text()
    table1 = md.split("## Table 1", 1)[1].split("##", 1)[0]
    assert "Hosts mixed: Zen3 (1 run); Zen4 (3 runs)" in table1
    assert "pairs spanning two hosts (seed 1)" in md
    runs_table = table_rows(md, "## Runs")
    assert runs_table[0][-3:] == ["rpo-eval (n=500, k=4, temperature 0.7)", "Zen4", "-"]
    assert sorted(r[-1] for r in runs_table if "+RPO" in r[0]) == ["0.250", "not recorded"]  # seed 1 logged none
    guard = table_rows(md, "## Collapse guard")  # every checkpoint of every run, the other-settings rows left out
    assert len(guard) == 16 and ["grpo+RPO", "1", "3", "24", "0.450", "0.400"] == guard[-1][:6]
    assert any("eval.jsonl holds 2 rpo-eval settings: read n_problems=500" in n for n in rows[("grpo", 0)]["notes"])
    assert "accuracy_vs_train_wall.png" in report["plots"]
    img = mpimg.imread(out / "accuracy_vs_train_wall.png")
    assert img.shape[1] >= 600 and img[..., :3].std() > 0.01
    assert (out / "runs" / "0" / "eval.jsonl").read_bytes() == (eval_sweep / "0" / "eval.jsonl").read_bytes()


def test_targets_from_a_plateau_and_bad_options(eval_sweep: Path, tmp_path: Path, capsys):
    rep.main([str(eval_sweep), "--out", str(tmp_path / "o"), "--plateau", "0.5", "--target-fractions", "0.9", "1"])
    assert json.loads((tmp_path / "o" / "report.json").read_text())["curves"][""]["targets"] == [0.45, 0.5]
    for bad in (["--plateau", "0.5"], ["--target-fractions", "0.9"], ["--wall-time", "0"]):
        with pytest.raises(SystemExit) as e:
            rep.main([str(eval_sweep), "--out", str(tmp_path / "p"), *bad])
        assert e.value.code == 2


def test_runs_without_eval_jsonl_keep_the_old_plots(sweep: Path, tmp_path: Path):
    report = rep.build_report(sweep, tmp_path)
    assert "accuracy_vs_train_wall.png" not in report["plots"]
    assert not (tmp_path / "accuracy_vs_train_wall.png").exists()
    assert "Host CPU not recorded" in (tmp_path / "report.md").read_text()


def test_a_run_stopped_by_its_time_budget_is_complete(tmp_path: Path):
    """trainer.time_budget_s ends a run before trainer.total_steps: ok once train_wall_s reached the budget, an
    incomplete run (killed) before that."""
    d = tmp_path / "sweep"
    for name, last_wall in (("spent", 10.5), ("killed", 9.0)):
        job = write_run(d / name, "grpo", 0, acc=(0.25, 0.5), total_steps=1000,
                        steps=[{**gen(80, 4, 6), "train_wall_s": 4.0}, {**gen(80, 4, 6), "train_wall_s": last_wall}])
        config = yaml.safe_load((job / "config.yaml").read_text())
        config["trainer"]["time_budget_s"] = 10.0
        (job / "config.yaml").write_text(yaml.safe_dump(config))
    status = {Path(r["path"]).name: r for r in rep.build_report(d, tmp_path / "out")["runs"]}
    assert status["spent"]["status"] == "ok", status["spent"]["error"]
    assert status["killed"]["status"] == "FAILED"
    assert "stopped at step 2 of 1000 before its time budget (10.0 s of training)" in status["killed"]["error"]
