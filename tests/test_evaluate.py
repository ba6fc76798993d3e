"""``esrl eval`` / `esrl.evaluate`: a checkpoint's policy evaluated again, as training did."""

from __future__ import annotations

import json
import re

import pytest
from memory_env import MemoryEnv

from esrl.checkpoint import save_checkpoint
from esrl.cli import main
from esrl.evaluate import evaluate_run, load_run

PENDULUM = [
    "train", "--env", "gymnax/Pendulum-v1", "--hidden", "8", "--horizon", "20",
    "--eval-episodes", "4", "--normalize-obs", "--no-progress",
]  # fmt: skip
ES = ["--population", "8", "--generations", "2", "--eval-every", "1"]
PPO = [
    "--agent", "ppo", "--num-envs", "4", "--num-steps", "8", "--num-minibatches", "2",
    "--total-steps", "64", "--eval-every", "1",
]  # fmt: skip


@pytest.mark.parametrize("agent", [ES, PPO], ids=["eggroll", "ppo"])
def test_the_runs_own_evaluation_is_reproduced_exactly(agent, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*PENDULUM, *agent, "--out", str(out)]) == 0
    logged = json.loads((out / "summary.json").read_text())["final_eval_return"]
    again = evaluate_run(out)
    assert again["eval_return"] == logged  # same key, episodes and statistics
    assert (again["episodes"], again["horizon"]) == (4, 20)
    assert again["return_min"] <= logged <= again["return_max"]
    fresh = evaluate_run(out, episodes=6, seed=1)
    assert fresh["episodes"] == 6 and fresh["eval_return"] != logged
    capsys.readouterr()
    assert main(["eval", str(out), "--episodes", "6", "--seed", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == fresh
    run = load_run(out)
    assert run.env_id == "gymnax/Pendulum-v1" and run.rollout.normalize_obs


def test_a_longer_runs_evaluation_is_reproduced_exactly(tmp_path):
    # was 158.625 for a logged 159.6875: the evaluation ran op by op, not compiled as
    # training compiles it, and XLA rounded differently
    out = tmp_path / "run"
    args = ["--population", "64", "--generations", "6", "--out", str(out)]
    assert main(["train", "--env", "gymnax/CartPole-v1", "--no-progress", *args]) == 0
    logged = json.loads((out / "summary.json").read_text())["final_eval_return"]
    assert evaluate_run(out)["eval_return"] == logged


def test_bad_input_is_one_error_line(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    assert "no checkpoint in" in capsys.readouterr().err
    save_checkpoint(tmp_path, {"x": 0.0}, {"run": {"model_dir": "m"}})  # LLM-style
    assert main(["eval", str(tmp_path)]) == 2
    assert "holds no esrl train run" in capsys.readouterr().err
    with pytest.raises(ValueError, match="episodes must be >= 1"):
        evaluate_run(tmp_path, episodes=0)


ACHIEVING = """
import esrl
import jax.numpy as jnp
from memory_env import MemoryEnv


class Achieving(MemoryEnv):
    def step(self, key, state, action, params=None):
        obs, state2, reward, term, trunc, info = super().step(key, state, action, params)
        first = (state.t == 0).astype(jnp.float32)
        return obs, state2, reward, term, trunc, {
            "achievements": jnp.stack([info["correct"], first])
        }


esrl.register("ach/Memory-v0", lambda: Achieving(delay=2), override=True)
"""


def test_random_baseline_report_gets_ppo_achievements(tmp_path, monkeypatch, capsys):
    """PPO logs only the return: the report evaluates the trained policy again."""
    from esrl.preset import report_baseline

    (tmp_path / "ach_envs.py").write_text(ACHIEVING)
    monkeypatch.syspath_prepend(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--plugin", "ach_envs", "--env", "ach/Memory-v0", *PPO,
                 "--hidden", "8", "--horizon", "5", "--eval-episodes", "4",
                 "--no-progress", "--out", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    report_baseline(out)
    printed = capsys.readouterr().out
    trained = evaluate_run(out)["eval_achievements"]
    assert len(trained) == 2 and "nan" not in printed
    assert f"trained {sum(trained):.2f}" in printed


def test_json_output_is_strict_json_when_the_return_is_nan(monkeypatch, capsys):
    import esrl.evaluate

    r = {"env": "x", "agent": "eggroll", "step": 1, "eval_return": float("nan")}
    monkeypatch.setattr(esrl.evaluate, "evaluate_run", lambda *a: r)
    assert main(["eval", "some/run", "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out, parse_constant=pytest.fail)["eval_return"] is None  # was NaN


def _env_object_run(agent: str, out):
    """A run trained on MemoryEnv(delay=2), not the id's MemoryEnv(delay=4)."""
    from esrl.agents.eggroll import EggrollConfig
    from esrl.agents.ppo import PPOConfig

    from esrl.policy import PolicySpec
    from esrl.rollout import RolloutConfig
    from esrl.train import RunSpec, TrainConfig, train
    from esrl.train_ppo import PPORunSpec, train_ppo

    if agent == "ppo":
        spec = PPORunSpec(
            env="test/Memory-v0",
            ppo=PPOConfig(total_steps=2 * 64, num_envs=4, num_steps=16,
                          num_minibatches=2, policy=PolicySpec(hidden=8)),
            eval_every=1, eval_episodes=8, eval_horizon=5, progress=False,
        )  # fmt: skip
        return lambda **kw: train_ppo(spec, out, **kw).summary
    spec = RunSpec(
        env="test/Memory-v0",
        agent_config=EggrollConfig(population=8),
        train=TrainConfig(
            generations=2, eval_every=1, eval_episodes=8, progress=False,
            rollout=RolloutConfig(horizon=8), policy=PolicySpec(hidden=8),
        ),
    )  # fmt: skip
    return lambda **kw: train(spec, out, **kw).summary


@pytest.mark.parametrize("agent", ["eggroll", "ppo"])
def test_a_run_on_an_env_object_is_not_evaluated_or_resumed_on_the_ids_env(
    agent, tmp_path, capsys
):
    # was: evaluate_run and esrl eval rebuilt make(spec.env), here another delay,
    # and reported that environment's return as the run's
    out = tmp_path / "run"
    run = _env_object_run(agent, out)
    logged = run(env=MemoryEnv(delay=2))["final_eval_return"]
    message = (
        f"the run in {out} trained on a MemoryEnv object passed as env=, which the "
        "id 'test/Memory-v0' need not rebuild; pass the same environment again"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        evaluate_run(out)
    assert evaluate_run(out, env=MemoryEnv(delay=2))["eval_return"] == logged
    assert main(["eval", str(out)]) == 2
    assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match=re.escape(message)):
        run(resume=True)
    assert run(resume=True, env=MemoryEnv(delay=2))["final_eval_return"] == logged
