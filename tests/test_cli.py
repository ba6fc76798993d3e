"""``esrl train``: every bad input gets one clear error before anything compiles."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import pytest
from memory_env import MemoryEnv

import esrl
from esrl import spaces
from esrl.checkpoint import read_meta, save_checkpoint
from esrl.cli import build_parser, env_defaults, main
from esrl.cli_spec import resume_spec, spec_from_args
from esrl.distributed import check_population
from esrl.logger import read_metrics
from esrl.train import ESTrainer, RunSpec, train

CARTPOLE = ["train", "--env", "gymnax/CartPole-v1", "--no-progress"]


class GridActionEnv(MemoryEnv):
    """Actions are a 2x2 box: no policy head serves that."""

    def action_space(self, params=None):
        return spaces.Box(-1.0, 1.0, (2, 2), jnp.float32)


esrl.register("test/GridAction-v0", GridActionEnv, override=True)


@pytest.fixture
def no_compile(monkeypatch):
    """Fail the test if a run gets as far as initialising (jitting) its state."""

    def forbidden(self, key):
        raise AssertionError("the error must come before any compilation")

    monkeypatch.setattr(ESTrainer, "init", forbidden)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--population", "255"], "population 255 must be even for antithetic pairs"),
        (["--rank", "8"], "rank 8 exceeds min(4, 32) of parameter actor_0/kernel"),
        (["--rank", "2", "--agent", "openai_es"], "--rank applies to eggroll only"),
        (["--devices", "64"], "--devices 64 is not available"),
        (["--sigma", "-1"], "sigma must be > 0"),
        (["--horizon", "0"], "horizon must be >= 1"),
        (["--hidden", "0"], "hidden width must be >= 1"),
        (["--lr", "-1"], "lr must be > 0"),
        (["--sigma-decay", "0"], "sigma_decay must be in (0, 1], got 0.0"),
        (["--plugin", "no_such_module_xyz"], "--plugin 'no_such_module_xyz' could not"),
    ],
)
def test_bad_options_fail_before_compiling(args, message, no_compile, capsys, tmp_path):
    assert main([*CARTPOLE, *args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "esrl train: error:" in err and message in err


def test_bad_environments_fail_before_compiling(no_compile, capsys, tmp_path):
    assert main(["train", "--env", "gymnax/CartPol-v1", "--out", str(tmp_path)]) == 2
    assert "Did you mean: gymnax/CartPole-v1" in capsys.readouterr().err
    assert main(["train", "--env", "test/GridAction-v0", "--out", str(tmp_path)]) == 2
    assert "policies serve Discrete or 1-D Box action spaces" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path)]) == 2
    assert "--env is required" in capsys.readouterr().err
    # was: trained an MLP on token ids as numbers (eval return 0), silently
    for agent in ("eggroll", "ppo"):
        args = ["train", "--env", "llm/countdown", "--agent", agent]
        assert main([*args, "--out", str(tmp_path)]) == 2
        assert "scripts/train_countdown.py" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "value"), [("--agent", "ppo2"), ("--policy", "rnn")]
)
def test_unknown_agent_or_policy(option, value, capsys):
    with pytest.raises(SystemExit) as e:
        main([*CARTPOLE, option, value])
    assert e.value.code == 2
    assert f"invalid choice: '{value}'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown agent 'ppo2'; choose one of eggroll"):
        RunSpec("gymnax/CartPole-v1", agent="ppo2")


def test_population_must_split_over_devices():
    with pytest.raises(ValueError, match="use --population 20"):
        check_population(18, 4)
    check_population(16, 4)
    # the advice keeps an even population even: 9 would fail as odd (antithetic pairs)
    with pytest.raises(ValueError, match="use --population 12 "):
        check_population(8, 3)


def test_help_documents_every_option_and_the_env_defaults(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    out = capsys.readouterr().out
    for option in ("--env", "--agent", "--policy", "--hidden", "--population", "--rank",
                   "--sigma", "--lr", "--generations", "--seed", "--out", "--resume",
                   "--plugin", "gymnax/CartPole-v1: hidden=32"):  # fmt: skip
        assert option in out
    assert env_defaults("brax/ant")["normalize_obs"] is True
    assert env_defaults("gymnax/CartPole-v1")["hidden"] == 32


def test_optimizer_and_schedule_options_reach_the_strategy(tmp_path):
    args = build_parser().parse_args([
        *CARTPOLE, "--optimizer", "sgd", "--weight-decay", "0.001", "--fitness-shaping",
        "z_score", "--sigma-decay", "0.9", "--sigma-min", "0.01", "--lr-decay", "0.99",
    ])  # fmt: skip
    spec = spec_from_args(args)
    config = spec.agent_config.strategy().config
    assert (config.optimizer, config.weight_decay, config.fitness_shaping) == (
        "sgd", 0.001, "z_score",
    )  # fmt: skip
    assert (config.sigma_decay, config.sigma_min, config.lr_decay) == (0.9, 0.01, 0.99)
    saved = {"spec": spec.to_dict()}  # a resume may repeat them, not change them
    args = build_parser().parse_args(
        ["train", "--resume", str(tmp_path), "--sigma-min", "0.02"]
    )
    with pytest.raises(ValueError, match="--sigma-min 0.02 differs"):
        resume_spec(args, saved)


def test_version(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--version"])
    assert capsys.readouterr().out.startswith(f"esrl {esrl.__version__} (jax ")


def test_resume_errors(tmp_path, capsys, no_compile):
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "no checkpoint in" in capsys.readouterr().err
    (tmp_path / "checkpoint.safetensors").write_bytes(b"cut off by a full disk")
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "is damaged and cannot be read" in capsys.readouterr().err
    # an esrl checkpoint written by something else (an LLM fine-tuning run)
    save_checkpoint(tmp_path, {"w": jnp.zeros(2)}, {"env": "llm/countdown"})
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "holds no esrl train run" in capsys.readouterr().err  # was "error: spec"
    with pytest.raises(ValueError, match="holds no esrl train run"):
        train(RunSpec("gymnax/CartPole-v1"), tmp_path, resume=True)


def test_out_that_is_a_file_fails_before_compiling(tmp_path, capsys, no_compile):
    (tmp_path / "notes.txt").write_text("keep me")
    assert main([*CARTPOLE, "--out", str(tmp_path / "notes.txt")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_out_inside_a_file_fails_before_compiling(tmp_path, capsys, no_compile):
    # was a NotADirectoryError traceback once the run had compiled
    (tmp_path / "notes.txt").write_text("keep me")
    assert main([*CARTPOLE, "--out", str(tmp_path / "notes.txt" / "run")]) == 2
    assert "notes.txt' is a file, not a directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--generations", "2"], "--generations 2 is fewer than the 3 generations"),
        (["--generations", "0"], "--generations 0 is fewer than the 3 generations"),
        (["--block", "0"], "block 0 does not divide the 16 members"),
        (["--devices", "0"], "--devices 0 is not available"),
    ],
)
def test_resume_checks_the_options_it_may_change(
    option, message, tmp_path, capsys, no_compile
):
    args = build_parser().parse_args([*CARTPOLE, "--population", "16"])
    meta = {"spec": spec_from_args(args).to_dict(), "counters": {"generation": 3}}
    save_checkpoint(tmp_path, {"x": jnp.zeros(1)}, meta)
    assert main(["train", "--resume", str(tmp_path), *option]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        ("./envs_a.py", "--plugin './envs_a.py' is a path; pass a module name"),
        ("envs_b.py", "--plugin 'envs_b.py' is a path; pass a module name"),
        ("envs_c", "'envs_c' imports 'no_such_dep_xyz', which is not installed"),
    ],
)
def test_plugin_errors_say_what_is_wrong(
    plugin, message, tmp_path, monkeypatch, capsys, no_compile
):
    for name in ("envs_a", "envs_b", "envs_c"):
        (tmp_path / f"{name}.py").write_text("import no_such_dep_xyz\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(tmp_path)
    assert main([*CARTPOLE, "--plugin", plugin, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


PLUGIN = """
import esrl
from memory_env import MemoryEnv

esrl.register("mine/Recall-v0", lambda: MemoryEnv(delay=2))
"""


@pytest.mark.slow
def test_plugin_environment_trains_with_a_gru_and_resumes(
    tmp_path, monkeypatch, capsys
):
    (tmp_path / "my_recall_envs.py").write_text(PLUGIN)
    monkeypatch.chdir(tmp_path)
    args = ["train", "--plugin", "my_recall_envs", "--env", "mine/Recall-v0",
            "--agent", "eggroll", "--policy", "gru", "--hidden", "8",
            "--population", "16", "--generations", "2", "--eval-every", "1",
            "--no-progress", "--out", "run"]  # fmt: skip
    assert main(args) == 0
    assert main(args) == 2  # the directory holds a run now
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err
    assert main(["train", "--resume", "run", "--population", "32"]) == 2
    assert "--population 32 differs from the run in run (16)" in capsys.readouterr().err
    assert (
        main(["train", "--resume", "run", "--generations", "3", "--no-progress"]) == 0
    )
    assert [r["iteration"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3]
    # elsewhere the plugin does not import: said so (was: "pass an importable module
    # name", for an option esrl eval does not have)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delitem(sys.modules, "my_recall_envs")
    capsys.readouterr()
    run = str(tmp_path / "run")
    for command in (["eval", run], ["train", "--resume", run, "--generations", "4"]):
        assert main(command) == 2
        assert (
            f"the run in {run} registers its environment with --plugin my_recall_envs, "
            f"which cannot be imported from {elsewhere} (No module named "
            "'my_recall_envs'); run in the directory it was trained in, or add the "
            "plugin's directory to PYTHONPATH"
        ) in capsys.readouterr().err


def test_sigterm_checkpoints_the_generations_done(tmp_path):
    """A killed run (SIGTERM, as a scheduler's preemption) stops like Ctrl-C."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "esrl.cli", "train", "--env", "gymnax/CartPole-v1",
           "--population", "8", "--hidden", "8", "--generations", "100000",
           "--eval-every", "100000", "--checkpoint-every", "100000", "--no-progress",
           "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics, deadline = out / "metrics.jsonl", time.monotonic() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err.decode() and "--resume" in err.decode()
    done = read_meta(out)["counters"]["generation"]
    assert done >= 3 and [r["iteration"] for r in read_metrics(out)] == list(
        range(1, done + 1)
    )


SIGTERM_WHILE_SETTING_UP = """
import os, signal, sys, time
from esrl.cli import main
from esrl.train import ESTrainer

def init(self, key):  # a preemption while the initial parameters compile
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)

ESTrainer.init = init
sys.exit(main(["train", "--env", "gymnax/CartPole-v1", "--out", sys.argv[1]]))
"""


def test_sigterm_while_setting_up_stops_like_ctrl_c(tmp_path):
    """It killed the process (SIGTERM's default) until training had compiled."""
    proc = subprocess.run(
        [sys.executable, "-c", SIGTERM_WHILE_SETTING_UP, str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert proc.stderr.endswith(
        "interrupted before training started; nothing was written\n"
    )


def test_a_resume_may_add_a_plugin_but_not_change_a_setting():
    args = build_parser().parse_args([*CARTPOLE, "--population", "16"])
    saved = dataclasses.replace(spec_from_args(args), plugins=("memory_env",))
    meta = {"spec": saved.to_dict(), "counters": {"generation": 3}}
    args = build_parser().parse_args(["train", "--resume", "DIR", "--plugin", "json"])
    spec = resume_spec(args, meta)
    assert spec.plugins == ("memory_env", "json")
    spec.check_resumable(saved)  # was "a different run (plugins differ)"
    changed = dataclasses.replace(spec.train, seed=1)
    with pytest.raises(ValueError, match=r"\(train differ\)"):
        dataclasses.replace(spec, train=changed).check_resumable(saved)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        # was "--normalize-obs True differs from the run in DIR (False)"
        ("--normalize-obs", "--normalize-obs differs from DIR (--no-normalize-obs)"),
        ("--no-deterministic", "--no-deterministic differs from DIR (--deterministic)"),
        ("--population=32", "--population 32 differs from DIR (16)"),
    ],
)
def test_a_refused_resume_option_is_named_as_it_is_typed(
    option, message, tmp_path, capsys, no_compile
):
    args = build_parser().parse_args([*CARTPOLE, "--population", "16"])
    meta = {"spec": spec_from_args(args).to_dict(), "counters": {"generation": 3}}
    save_checkpoint(tmp_path, {"x": jnp.zeros(1)}, meta)
    assert main(["train", "--resume", str(tmp_path), option]) == 2
    expected = message.replace("DIR", f"the run in {tmp_path}")
    assert capsys.readouterr().err == (
        f"esrl train: error: {expected}; drop it when resuming\n"
    )


def test_a_resume_keeps_tensorboard_unless_told_otherwise():
    """The printed command (esrl train --resume DIR) once stopped TensorBoard logging."""
    args = build_parser().parse_args([*CARTPOLE, "--population", "16", "--tensorboard"])
    saved = {"spec": spec_from_args(args).to_dict(), "counters": {"generation": 3}}
    for argv, expected in (([], True), (["--no-tensorboard"], False)):
        args = build_parser().parse_args(["train", "--resume", "DIR", *argv])
        assert resume_spec(args, saved).train.tensorboard is expected
    args = build_parser().parse_args([*CARTPOLE, "--population", "16"])
    assert spec_from_args(args).train.tensorboard is False


def test_resume_with_out_or_overwrite(tmp_path, capsys, no_compile):
    args = build_parser().parse_args([*CARTPOLE, "--population", "16"])
    meta = {"spec": spec_from_args(args).to_dict(), "counters": {"generation": 3}}
    save_checkpoint(tmp_path, {"x": jnp.zeros(1)}, meta)
    resume = ["train", "--resume", str(tmp_path), "--no-progress"]
    assert main([*resume, "--overwrite"]) == 2
    assert "pass one of them" in capsys.readouterr().err
    assert main([*resume, "--out", str(tmp_path / "elsewhere")]) == 2
    assert "--resume DIR continues in DIR; drop --out" in capsys.readouterr().err
    with pytest.raises(AssertionError, match="before any compilation"):
        main([*resume, "--out", f"{tmp_path}/"])  # the same directory: accepted


def test_envs_lists_plugin_environments(tmp_path, monkeypatch, capsys):
    (tmp_path / "listed_envs.py").write_text(PLUGIN.replace("mine/", "listed/"))
    monkeypatch.syspath_prepend(tmp_path)
    assert main(["envs", "listed/", "--plugin", "listed_envs"]) == 0
    assert capsys.readouterr().out.split() == ["listed/Recall-v0"]
    assert main(["envs", "--plugin", "no_such_module_xyz"]) == 2
    assert "could not be imported" in capsys.readouterr().err
