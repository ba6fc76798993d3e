"""Smoke tests of the training scripts: tiny budgets, outputs exist and are well-formed.

Every script runs in-process (its module imported from scripts/) with a few
generations or one PPO update, tiny populations and horizons; Brax runs on its trivial
``fast`` env. The Craftax run pays a Craftax compile (about a minute on 2 cores) and is
marked slow. The preset argument handling is checked exactly, without compiling.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import pytest
from script_loader import load_script

from esrl.bench import Case, build
from esrl.checkpoint import has_checkpoint, read_meta
from esrl.logger import read_metrics
from esrl.preset import BASELINE, Preset, default_out, preset_argv

SUMMARY_KEYS = (
    "env", "agent", "final_eval_return", "env_steps", "wall_time_s", "compile_s",
    "env_steps_per_s", "device",
)  # fmt: skip
ES_TINY = [
    "--population", "4", "--generations", "2", "--hidden", "8", "--horizon", "10",
    "--episodes", "1", "--eval-every", "1", "--eval-episodes", "2", "--no-progress",
]  # fmt: skip


def check_run(out: Path, env: str, agent: str) -> tuple[list[dict], dict]:
    """Assert the run-directory outputs of a finished run; return (records, summary)."""
    records = read_metrics(out)
    assert records, f"{out}/metrics.jsonl is empty"
    for r in records:
        for key in ("iteration", "env_steps", "wall_time_s", "train_return_mean"):
            assert key in r, f"{key} missing from {r}"
    assert [r["iteration"] for r in records] == list(range(1, len(records) + 1))
    steps = [r["env_steps"] for r in records]
    assert steps == sorted(steps) and steps[0] > 0
    evals = [r["eval_return"] for r in records if "eval_return" in r]
    assert evals and all(math.isfinite(x) for x in evals)
    summary = json.loads((out / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(summary)
    assert (summary["env"], summary["agent"]) == (env, agent)
    assert summary["final_eval_return"] == evals[-1]
    assert summary["env_steps"] == steps[-1]
    assert summary["env_steps_per_s"] > 0 and summary["compile_s"] > 0
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert has_checkpoint(out) and read_meta(out)["spec"]["env"] == env
    return records, summary


# --- preset argument handling (no compiling) ---------------------------------------

PRESET = Preset(
    env="brax/inverted_double_pendulum", name="brax", env_prefix="brax/",
    options={"ppo": {"lr": 3e-4, "normalize_obs": True, "total_steps": 100}},
)  # fmt: skip


def test_preset_fills_in_env_agent_out_and_agent_options():
    assert preset_argv(PRESET, []) == [
        "--env", "brax/inverted_double_pendulum", "--agent", "eggroll",
        "--out", "runs/brax_eggroll", "--overwrite",
    ]  # fmt: skip
    assert preset_argv(PRESET, ["--agent", "ppo"]) == [
        "--env", "brax/inverted_double_pendulum", "--out", "runs/brax_ppo",
        "--overwrite", "--lr", "0.0003", "--normalize-obs", "--total-steps", "100",
        "--agent", "ppo",
    ]  # fmt: skip


def test_preset_user_options_win_and_short_env_names_expand():
    argv = [
        "--agent=ppo",
        "--lr=0.1",
        "--no-normalize-obs",
        "--env",
        "ant",
        "--out",
        "d",
    ]
    assert preset_argv(PRESET, argv) == [
        "--env", "brax/ant", "--total-steps", "100", "--agent=ppo", "--lr=0.1",
        "--no-normalize-obs", "--out", "d",
    ]  # fmt: skip
    assert default_out(PRESET, "brax/ant", "ppo") == "runs/brax_ant_ppo"
    # was StopIteration / a bare "hopper" left for esrl train: the pre-parser reads
    # an abbreviated --env and takes the last of repeated ones
    for env_args in (["--en", "ant"], ["--env=hopper", "--env", "ant"]):
        assert preset_argv(PRESET, [*env_args, "--out", "d"])[:2] == [
            "--env",
            "brax/ant",
        ]
        assert "ant" not in preset_argv(PRESET, [*env_args, "--out", "d"])[2:]


def test_preset_resume_passes_through_untouched():
    assert preset_argv(PRESET, ["--resume", "d", "--total-steps", "9"]) == [
        "--resume", "d", "--total-steps", "9",
    ]  # fmt: skip
    # the training command repeated with --resume: the same env, not a changed one
    assert preset_argv(PRESET, ["--env=ant", "--resume", "d"]) == [
        "--env", "brax/ant", "--resume", "d",
    ]  # fmt: skip


@pytest.mark.parametrize("agent", ["eggroll", "ppo"])
def test_script_help_lists_preset_values_and_every_option(agent, capsys):
    brax = load_script("train_brax")
    assert brax.run_preset(brax.PRESET, ["--agent", agent, "--help"], "doc") == 0
    text = capsys.readouterr().out
    assert "preset: --env brax/inverted_double_pendulum" in text
    option = "--total-steps" if agent == "ppo" else "--generations"
    assert option in text and "--resume" in text
    if agent == "ppo":
        assert "normalize_reward=True" in text
    # --out's help gave esrl train's default alone, not the script's runs/brax_<agent>
    assert "a scripts/train_*.py preset's: runs/<name>_" in " ".join(text.split())


# --- tiny training runs -----------------------------------------------------------


@pytest.fixture(scope="module")
def cartpole_run(tmp_path_factory) -> Path:
    """A finished 2-generation EGGROLL run of scripts/train_cartpole.py."""
    out = tmp_path_factory.mktemp("runs") / "cp"
    cartpole = load_script("train_cartpole")
    assert cartpole.run_preset(cartpole.PRESET, ["--out", str(out), *ES_TINY]) == 0
    return out


@pytest.fixture(scope="module")
def breakout_run(tmp_path_factory) -> Path:
    """A finished 2-generation OpenAI-ES run of scripts/train_breakout.py."""
    out = tmp_path_factory.mktemp("runs") / "brk"
    breakout = load_script("train_breakout")
    argv = ["--agent", "openai_es", "--out", str(out), *ES_TINY]
    assert breakout.run_preset(breakout.PRESET, argv) == 0
    return out


def test_cartpole_eggroll(cartpole_run):
    records, _ = check_run(cartpole_run, "gymnax/CartPole-v1", "eggroll")
    assert len(records) == 2


def test_pendulum_ppo_and_resume(tmp_path, capsys):
    pendulum = load_script("train_pendulum")
    out = tmp_path / "pend"
    tiny = ["--num-envs", "4", "--num-steps", "16", "--num-minibatches", "2",
            "--eval-every", "1", "--eval-episodes", "2", "--horizon", "10",
            "--no-progress"]  # fmt: skip
    argv = ["--agent", "ppo", "--out", str(out), "--total-steps", "64", *tiny]
    assert pendulum.run_preset(pendulum.PRESET, argv) == 0
    assert f"outputs in {out}" in capsys.readouterr().out
    check_run(out, "gymnax/Pendulum-v1", "ppo")
    resume = ["--resume", str(out), "--total-steps", "128", "--no-progress"]
    assert pendulum.run_preset(pendulum.PRESET, resume) == 0
    records, _ = check_run(out, "gymnax/Pendulum-v1", "ppo")
    assert [r["env_steps"] for r in records] == [64, 128]
    assert read_meta(out)["spec"]["ppo"]["update_epochs"] == 10  # the preset's


def test_breakout_openai_es(breakout_run):
    check_run(breakout_run, "gymnax/Breakout-MinAtar", "openai_es")


def test_brax_fast_env_eggroll(tmp_path):
    brax = load_script("train_brax")
    out = tmp_path / "bx"
    argv = ["--env", "fast", "--out", str(out), *ES_TINY]
    assert brax.run_preset(brax.PRESET, argv) == 0
    check_run(out, "brax/fast", "eggroll")
    assert read_meta(out)["spec"]["train"]["rollout"]["normalize_obs"] is True


@pytest.mark.slow
def test_craftax_gru_with_random_baseline(tmp_path, monkeypatch, capsys):
    # the baseline's own rollout (a third Craftax compile) is tested on a cheap
    # environment in test_evaluate.py; here: the run's settings reach it
    asked = []

    def random_baseline(env_id, horizon, episodes, seed):
        asked.append((env_id, horizon, episodes, seed))
        return {
            "eval_return": 0.5,
            "eval_length": 10.0,
            "eval_achievements": [0.5] * 22,
        }

    monkeypatch.setattr("esrl.preset.random_baseline", random_baseline)
    craftax = load_script("train_craftax")
    out = tmp_path / "cx"
    argv = ["--out", str(out), *ES_TINY, "--population", "2", "--generations", "1"]
    assert craftax.run_preset(craftax.PRESET, argv) == 0
    check_run(out, "craftax/Craftax-Classic-Symbolic-v1", "eggroll")
    spec = read_meta(out)["spec"]
    assert spec["train"]["policy"]["kind"] == "gru"
    assert spec["train"]["rollout"]["deterministic"] is False
    assert asked == [("craftax/Craftax-Classic-Symbolic-v1", 10, 2, 0)]
    base = json.loads((out / BASELINE).read_text())
    assert (base["horizon"], base["episodes"]) == (10, 2)
    assert len(read_metrics(out)[-1]["eval_achievements"]) == 22
    printed = capsys.readouterr().out
    assert "achievements unlocked per episode" in printed and "collect_wood" in printed


def test_plot_curves_from_two_runs(cartpole_run, breakout_run, tmp_path):
    plot = load_script("plot_curves")
    png = tmp_path / "fig.png"
    runs = [f"low-rank={cartpole_run}", str(breakout_run)]
    assert plot.main(["--out", str(png), *runs]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    label, records, summary = plot.load(runs[0])
    assert (label, len(records), summary["agent"]) == ("low-rank", 2, "eggroll")
    assert plot.load(runs[1])[0] == "openai_es"
    with pytest.raises(SystemExit, match="missing is no directory; pass the --out"):
        plot.main(["--out", str(png), str(tmp_path / "missing")])


def test_plot_curves_takes_run_directories_with_an_equals_sign(tmp_path):
    plot = load_script("plot_curves")
    run = tmp_path / "sweep" / "lr=0.1"  # as sweep tools name their runs
    run.mkdir(parents=True)
    (run / "summary.json").write_text('{"env": "gymnax/CartPole-v1", "agent": "ppo"}')
    (run / "metrics.jsonl").write_text(
        '{"iteration": 1, "env_steps": 8, "wall_time_s": 1.0, "eval_return": 3.0}\n'
    )
    label, records, _ = plot.load(str(run))
    assert (label, records[0]["eval_return"]) == ("ppo", 3.0)
    assert plot.load(f"best={run}")[0] == "best"


def test_benchmark_update_reruns_only_the_given_sections(tmp_path, monkeypatch):
    from esrl.bench import Case

    bench = load_script("benchmark")
    tiny = Case(hidden=8, population=8, horizon=5)
    monkeypatch.setattr(bench, "SECTIONS", {
        "a": [(tiny, (("plain", None),))],
        "b": [(tiny, (("plain", None),))],
    })  # fmt: skip
    out = tmp_path / "b.json"

    def run(*args, repeats="1"):
        bench.main(["--repeats", repeats, "--out", str(out), *args])
        doc = json.loads(out.read_text())
        return doc, [(r["section"], r["method"]) for r in doc["results"]]

    first, _ = run("--only", "a")
    doc, rows = run("--only", "b", "--update", repeats="2")
    assert rows == [("a", "plain"), ("b", "plain")]
    assert doc["sections"] == ["a", "b"] and doc["results"][0] == first["results"][0]
    assert doc["repeats"] == {"a": 1, "b": 2}  # each section keeps its own count
    doc, rows = run("--only", "a", "--update")
    assert rows == [("b", "plain"), ("a", "plain")]
    assert doc["results"][1]["times_s"] != first["results"][0]["times_s"]  # remeasured
    _, rows = run("--only", "b")  # without --update the file is replaced
    assert rows == [("b", "plain")]
    run("--only", "a", "b")
    before = json.loads(out.read_text())["results"]

    def interrupted(case, methods, **kw):  # Ctrl-C during section b's first case
        if interrupted.calls:
            raise KeyboardInterrupt
        interrupted.calls += 1
        return run_case(case, methods, **kw)

    run_case, interrupted.calls = bench.run_case, 0
    monkeypatch.setattr(bench, "run_case", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run("--only", "a", "b", "--update")
    after = json.loads(out.read_text())["results"]
    assert [r["section"] for r in after] == ["a", "b"]
    assert after[0]["times_s"] != before[0]["times_s"]  # a was rerun and swapped in
    assert after[1] == before[1]  # b's old rows stay: its rerun never finished


def test_profile_ops_attributes_ops_to_their_layers():
    profile_ops = load_script("profile_ops")
    policy = "jit(f)/while/body/closed_call/vmap(vmap(Policy))/"
    assert profile_ops.group_of(policy + "actor_1/dot_general") == profile_ops.GROUPS[0]
    assert profile_ops.group_of(policy + "head/reduce_sum") == profile_ops.GROUPS[1]
    assert profile_ops.group_of(policy + "tanh") == profile_ops.GROUPS[2]
    step = "jit(g)/jit(evaluate_population)/while/body/while/body/closed_call/select_n"
    assert profile_ops.group_of(step) == profile_ops.GROUPS[3]
    draw = "jit(g)/vmap(jit(_normal))/jit(_normal_real)/erf_inv"
    assert profile_ops.group_of(draw) == profile_ops.GROUPS[4]
    if jax.default_backend() != "cpu":
        pytest.skip("per-op profiles read XLA:CPU trace events (the script says so)")

    case = Case(hidden=8, population=8, horizon=4)
    ms = profile_ops.profile(case, ["plain", "eggroll"], repeats=1)
    matmuls, reductions = profile_ops.GROUPS[:2]
    assert ms["plain"][matmuls] > 0 and ms["eggroll"][matmuls] > 0
    assert ms["plain"][reductions] == 0 < ms["eggroll"][reductions]
    # the noise draw is in eggroll's executable only (counted, not timed: at this size
    # the env's own random draws, in the same group, took as long as the noise draw)
    draws = {
        m: list(profile_ops.op_groups(build(m, None, case, jax.random.PRNGKey(0))
                .executable.as_text()).values()).count(profile_ops.GROUPS[4])
        for m in ("plain", "eggroll")
    }  # fmt: skip
    assert draws["eggroll"] > draws["plain"]
    text = profile_ops.table(ms)
    assert (
        text.count("\n| ") == len(profile_ops.GROUPS) + 1 and "eggroll - plain" in text
    )


def test_plot_curves_leaves_step_zero_off_the_log_axis(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    plot = load_script("plot_curves")
    # an LLM run logs its initial evaluation at env_steps 0
    records = [
        {"env_steps": s, "wall_time_s": float(i), "eval_return": float(i)}
        for i, s in enumerate((0, 100, 1000))
    ]
    monkeypatch.setattr(plot.plt, "close", lambda fig: None)
    plot.plot([("es", records, {"env": "llm/countdown"})], tmp_path / "f.png", "")
    steps_ax, time_ax = plt.gcf().axes
    # log scale cannot place step 0: it drew a flat line from the left edge instead
    assert list(steps_ax.lines[0].get_xdata()) == [100, 1000]
    assert list(time_ax.lines[0].get_ydata()) == [0.0, 1.0, 2.0]
    plt.close("all")


def test_plot_title_names_every_env_of_the_runs(tmp_path, monkeypatch):
    plot = load_script("plot_curves")
    monkeypatch.setattr(plot.plt, "close", lambda fig: None)
    records = [{"env_steps": 10, "wall_time_s": 1.0, "eval_return": 1.0}]
    runs = [
        ("eggroll", records, {"env": "gymnax/CartPole-v1"}),
        ("ppo", records, {"env": "gymnax/CartPole-v1"}),
        ("openai_es", records, {"env": "gymnax/Breakout-MinAtar"}),
    ]
    # was the first run's env alone: a Breakout curve under a CartPole title
    for given, title in [
        (runs[:2], "gymnax/CartPole-v1"),
        (runs, "gymnax/CartPole-v1, gymnax/Breakout-MinAtar"),
    ]:
        plot.plot(given, tmp_path / "f.png", "")
        assert plt.gcf()._suptitle.get_text() == title
        plt.close("all")


def _fake_run(directory: Path, env: str = "gymnax/CartPole-v1") -> Path:
    directory.mkdir(parents=True)
    (directory / "summary.json").write_text(f'{{"env": "{env}", "agent": "ppo"}}')
    (directory / "metrics.jsonl").write_text(
        '{"iteration": 1, "env_steps": 8, "wall_time_s": 1.0, "eval_return": 3.0}\n'
    )
    return directory


def test_plot_is_written_where_it_says(tmp_path, capsys):
    plot = load_script("plot_curves")
    run = _fake_run(tmp_path / "run")
    out = tmp_path / "figure"  # no suffix: matplotlib wrote figure.png instead
    assert plot.main(["--out", str(out), str(run)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out} (")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_curves_takes_an_interrupted_run_and_refuses_a_non_run(tmp_path):
    from esrl.checkpoint import save_checkpoint

    plot = load_script("plot_curves")
    run = _fake_run(tmp_path / "run")
    (run / "summary.json").unlink()  # interrupted: metrics and checkpoint, no summary
    meta = {"spec": {"env": "gymnax/Pendulum-v1", "agent": "ppo"}, "counters": {}}
    save_checkpoint(run, {"x": jax.numpy.zeros(2)}, meta)
    # was "has no summary.json; is it a finished run?": no curve of a run in progress
    label, records, summary = plot.load(str(run))
    assert (label, len(records), summary["env"]) == ("ppo", 1, "gymnax/Pendulum-v1")
    assert plot.main(["--out", str(tmp_path / "f.png"), str(run)]) == 0
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="empty holds no run .no metrics.jsonl."):
        plot.load(str(tmp_path / "empty"))
    (run / "checkpoint.safetensors").unlink()
    with pytest.raises(SystemExit, match="has neither summary.json nor a checkpoint"):
        plot.load(str(run))


def _seed_run(directory: Path, seed: int, ret: float, lr: float = 0.05) -> Path:
    """A finished fake ES run: summary.json and a checkpoint whose spec has the seed."""
    from esrl.checkpoint import save_checkpoint

    directory.mkdir(parents=True)
    summary = {"env": "gymnax/CartPole-v1", "agent": "eggroll", "policy": "mlp",
               "final_eval_return": ret, "env_steps": 2_000_000, "wall_time_s": 4.0}  # fmt: skip
    (directory / "summary.json").write_text(json.dumps(summary))
    train = {"seed": seed, "progress": seed % 2 == 0, "generations": 30}
    spec = {"env": summary["env"], "agent": "eggroll", "agent_config": {"lr": lr},
            "train": train}  # fmt: skip
    save_checkpoint(directory, {"x": jax.numpy.zeros(2)}, {"spec": spec})
    return directory


def test_seed_table_groups_runs_that_differ_only_in_the_seed(tmp_path, capsys):
    table = load_script("seed_table")
    runs = [
        _seed_run(tmp_path / f"s{s}", s, r)
        for s, r in [(0, 10.0), (1, 20.0), (2, 60.0)]
    ]
    other = _seed_run(tmp_path / "lr", 0, 500.0, lr=0.1)  # another setting: its own row
    assert table.main([str(r) for r in [*runs, other]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4  # header, rule, two settings
    # mean 30, sample std sqrt(((-20)**2 + (-10)**2 + 30**2) / 2) = 26.5
    assert lines[2] == (
        "| gymnax/CartPole-v1 | eggroll | mlp | 0, 1, 2 | 30.0 ± 26.5 | 10.0 | 60.0 "
        "| 2.00M | 4.0 s |"
    )
    assert lines[3].startswith("| gymnax/CartPole-v1 | eggroll | mlp | 0 | 500.0 | ")
    twice = _seed_run(tmp_path / "again", 1, 20.0)
    with pytest.raises(
        SystemExit, match="same setting with the same seed 1; pass each"
    ):
        table.main([str(runs[1]), str(twice)])
    (runs[0] / "summary.json").unlink()  # interrupted
    with pytest.raises(SystemExit, match="s0 is no finished run"):
        table.main([str(runs[0])])
